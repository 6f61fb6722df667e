"""``evaluate --engine spark`` gives the local engine's results (issue: run on Apache Spark).

Spark runs in local mode (``local[2]``), one session for the module. The comparisons are whole: results.json's
``subjects`` and ``cohort``, the clinical extract, the write-back plan and Bundle entries, and the rejects as a
set. In CI these tests run (pyspark is in the dev extras, Java 17 on the machine); elsewhere they skip saying
what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from builders import ROOT
from click.testing import CliRunner

from fhiradapter.cli import main
from fhiradapter.core.results import TimedRunSummary
from fhiradapter.errors import ExitCode
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.local_engine import LocalEngine
from fhiradapter.shell.run.pipeline import run_evaluate
from fhiradapter.shell.run.readers import InputLimits
from fhiradapter.shell.run.spark_engine import SparkEngine

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
GENERATE = ROOT / "benchmarks" / "generate.py"
AS_OF = date(2005, 3, 31)
# Every reject listed: past --max-rejects-per-file, which of a file's rejects are listed depends on the order
# the engine meets them in (the counts do not), and these tests compare the rejects themselves.
EVERY_REJECT = InputLimits(rejects_per_file=0)


def _spark_missing() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ModuleNotFoundError:
        return "pyspark is not installed (pip install -e '.[dev]' brings it)"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (Spark 4 needs Java 17 or newer)"
    return None


MISSING = _spark_missing()
if MISSING and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the Spark tests: {MISSING}")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local Spark session for the module; the engine uses it and leaves it running."""
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("fhiradapter tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def run(inputs: list[Path], out: Path, engine: str, **kw: Any) -> TimedRunSummary:
    """One run by ``engine`` (``local``, with ``workers`` if given, or ``spark``); ``kw``: the request's fields."""
    mappings, identity = load_mappings()
    as_of = kw.pop("as_of", AS_OF)
    workers = kw.pop("workers", None)
    chosen = SparkEngine() if engine == "spark" else LocalEngine(workers)
    request = RunRequest(
        inputs=tuple(inputs), out=out, as_of=as_of, mappings=mappings, mappings_identity=identity, engine=chosen, **kw
    )
    return run_evaluate(request)


def outputs(out: Path) -> dict[str, Any]:
    """What both engines must agree on, read from the files they wrote."""
    results = json.loads((out / "results.json").read_text())
    bundle = json.loads((out / "writeback.json").read_text())
    entries = bundle["entry"][:-1]  # the Provenance (last) records the time of the run
    return {
        "subjects": results["subjects"],
        "cohort": results["cohort"],
        "rejects": sorted((out / "rejects.ndjson").read_text().splitlines()),
        "clinical": (out / "clinical.ndjson").read_text(),
        "plan": (out / "writeback-plan.ndjson").read_text(),
        "entries": entries,
        "targets": sorted(t["reference"] for t in bundle["entry"][-1]["resource"]["target"]),
    }


def assert_same(local: Path, spark: Path) -> None:
    a, b = outputs(local), outputs(spark)
    assert a["subjects"] and a["cohort"]["n_treated"] > 0  # something was compared
    for key in a:
        assert a[key] == b[key], f"{key} differs between the local engine and Spark"


def test_the_paper_cohort_gives_the_local_engines_results(tmp_path: Path, spark: Any) -> None:
    run([PAPER], tmp_path / "local", "local")
    summary = run([PAPER], tmp_path / "spark", "spark")
    assert_same(tmp_path / "local", tmp_path / "spark")
    assert summary.patients == 14 and summary.records_rejected == 3


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("generated") / "p2000"
    subprocess.run(
        [sys.executable, str(GENERATE), "--patients", "2000", "--out", str(folder), "--seed", "11"],
        check=True,
        capture_output=True,
    )
    return folder


def test_a_generated_cohort_of_2000_patients_gives_the_local_engines_results(
    tmp_path: Path, spark: Any, generated: Path
) -> None:
    as_of = date(2005, 12, 31)
    run([generated], tmp_path / "local", "local", as_of=as_of, report=False, workers=2, limits=EVERY_REJECT)
    summary = run([generated], tmp_path / "spark", "spark", as_of=as_of, report=False, limits=EVERY_REJECT)
    assert summary.patients == 2000
    assert_same(tmp_path / "local", tmp_path / "spark")


def test_duplicates_across_partitions_and_files_keep_the_same_copy(
    tmp_path: Path, spark: Any, generated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies of one resource in other files, read by other tasks (small tasks: many partitions): the copy
    kept is the local engine's, by versionId, then lastUpdated, then the copy seen last."""
    data = tmp_path / "data"
    shutil.copytree(generated, data)
    lines = (data / "Observation.ndjson").read_text().splitlines()
    later, again = [], []
    for n, line in enumerate(lines[:3000:7]):
        res = json.loads(line)
        if res.get("valueQuantity"):
            res["valueQuantity"]["value"] = round(res["valueQuantity"]["value"] * 1.5, 2)
        if n % 2:
            res["meta"]["versionId"] = "2"  # a newer version: it wins wherever it lies
            later.append(json.dumps(res))
        else:
            res.pop("meta")  # says nothing of which is newer: the copy read last wins
            again.append(json.dumps(res))
    (data / "zz-later-versions.ndjson").write_text("\n".join(later) + "\n")
    (data / "aa-unversioned-copies.ndjson").write_text("\n".join(again) + "\n")
    # Small tasks: Observation.ndjson (98 MB) alone is cut into a dozen partitions.
    monkeypatch.setattr("fhiradapter.shell.run.spark_engine.CHUNK_BYTES", 8 << 20)
    as_of = date(2005, 12, 31)
    run([data], tmp_path / "local", "local", as_of=as_of, report=False, limits=EVERY_REJECT)
    summary = run([data], tmp_path / "spark", "spark", as_of=as_of, report=False, limits=EVERY_REJECT)
    assert summary.rejects_by_reason["duplicate-superseded"] == len(later) + len(again)
    assert_same(tmp_path / "local", tmp_path / "spark")


def test_inputs_by_url_are_read_by_spark(tmp_path: Path, spark: Any) -> None:
    """An input Spark reads by URL (here file://; hdfs:// and s3a:// as the Spark configuration allows)."""
    urls = tuple(p.resolve().as_uri() for p in sorted(PAPER.iterdir()))  # NDJSON files and a Bundle (.json)
    run([PAPER], tmp_path / "local", "local")
    run([], tmp_path / "spark", "spark", urls=urls)
    local, remote = outputs(tmp_path / "local"), outputs(tmp_path / "spark")
    assert local["subjects"] == remote["subjects"] and local["cohort"] == remote["cohort"]

    def what(line: str) -> tuple[str, str, str]:
        r = json.loads(line)
        return (r["resourceType"], r["id"], r["code"])

    assert sorted(map(what, local["rejects"])) == sorted(map(what, remote["rejects"]))
    assert {json.loads(x)["file"] for x in remote["rejects"]} <= set(urls)


def test_a_resource_moved_to_another_patient_counts_once(tmp_path: Path, spark: Any) -> None:
    """Two copies of one Observation naming different patients: the newer copy is the one that counts, in
    both engines (the copies meet by reference before they are grouped by patient)."""
    data = tmp_path / "data"
    shutil.copytree(PAPER, data)
    lines = (data / "Observation.ndjson").read_text().splitlines()
    moved = next(json.loads(x) for x in lines if '"Patient/thal-01"' in x and "ecog" in x)
    moved["subject"] = {"reference": "Patient/thal-02"}
    moved["meta"] = {"versionId": "9"}
    (data / "zz-moved.ndjson").write_text(json.dumps(moved) + "\n")
    run([data], tmp_path / "local", "local")
    run([data], tmp_path / "spark", "spark")
    assert_same(tmp_path / "local", tmp_path / "spark")
    rejects = [json.loads(x) for x in (tmp_path / "spark" / "rejects.ndjson").read_text().splitlines()]
    assert [r["id"] for r in rejects if r["code"] == "duplicate-superseded"].count(moved["id"]) == 1


def test_a_folder_by_url_is_walked_as_a_local_folder_is(tmp_path: Path, spark: Any) -> None:
    """A folder URL: its data files are read (NDJSON and a Bundle), and a pull's manifest is listed, not read."""
    data = tmp_path / "data"
    shutil.copytree(PAPER, data)
    (data / "pull-manifest.json").write_text('{"server": "https://fhir.example.org/r4", "files": []}')
    run([data], tmp_path / "local", "local")
    run([], tmp_path / "spark", "spark", urls=(data.as_uri(),))
    local, remote = outputs(tmp_path / "local"), outputs(tmp_path / "spark")
    assert local["subjects"] == remote["subjects"] and local["cohort"] == remote["cohort"]
    codes = sorted(json.loads(x)["code"] for x in remote["rejects"])
    assert codes == sorted(json.loads(x)["code"] for x in local["rejects"])
    assert "not-read" in codes


def test_a_results_dir_that_exists_is_refused(tmp_path: Path, spark: Any) -> None:
    (tmp_path / "parts").mkdir()
    args = ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path / "out"), "--engine", "spark"]
    result = CliRunner().invoke(main, [*args, "--results-dir", (tmp_path / "parts").as_uri(), "--no-writeback"])
    assert result.exit_code == ExitCode.CONFIG
    assert "exists already" in result.output


def test_a_url_without_the_spark_engine_says_to_add_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["evaluate", "hdfs://namenode/export", "--as-of", "2005-03-31", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == ExitCode.CONFIG
    assert "read by Spark: add --engine spark" in result.output


def test_without_pyspark_the_engine_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)  # as if the extra were not installed
    args = ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path / "out"), "--engine", "spark"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == ExitCode.CONFIG
    assert "pip install 'fhiradapter[spark]'" in result.output


def _lines(folder: Path) -> list[str]:
    return [line for part in sorted(folder.glob("part-*")) for line in part.read_text().splitlines() if line]


def test_a_results_dir_holds_the_local_engines_results_and_export_reads_it(tmp_path: Path, spark: Any) -> None:
    """--results-dir: each patient's result and extract written by Spark in patient order, which export reads."""
    run([PAPER], tmp_path / "local", "local")
    url = (tmp_path / "parts").as_uri()
    summary = run([PAPER], tmp_path / "spark", "spark", results_dir=url, writeback=False)
    assert summary.results_dir == url
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    parts = tmp_path / "parts"
    assert [json.loads(x) for x in _lines(parts / "subjects")] == local["subjects"]
    assert _lines(parts / "clinical") == (tmp_path / "local" / "clinical.ndjson").read_text().splitlines()
    written = json.loads(_lines(parts / "run")[0])
    assert written["cohort"] == local["cohort"] and written["header"]["as_of"] == "2005-03-31"
    assert not (tmp_path / "spark" / "results.json").exists()  # the results are in the results folder only
    assert sorted((tmp_path / "spark" / "rejects.ndjson").read_text().splitlines()) == sorted(
        (tmp_path / "local" / "rejects.ndjson").read_text().splitlines()
    )
    tables = {}
    for name, folder in (("local", tmp_path / "local"), ("spark", parts)):
        result = CliRunner().invoke(main, ["export", str(folder), "--export-to", f"csv:{tmp_path / ('csv-' + name)}"])
        assert result.exit_code == 0, result.output
        tables[name] = {
            p.name: [line.split(",", 1)[1] for line in p.read_text().splitlines()[1:]]  # without the run key
            for p in (tmp_path / f"csv-{name}").glob("*.csv")
            if p.name != "runs.csv"  # the run's key and results digest differ: other files, other bytes
        }
    assert tables["local"] and tables["local"] == tables["spark"]
    assert sum(len(rows) for rows in tables["local"].values()) > 100


def test_export_refuses_a_results_dir_whose_run_did_not_finish(tmp_path: Path, spark: Any) -> None:
    url = (tmp_path / "parts").as_uri()
    run([PAPER], tmp_path / "out", "spark", results_dir=url, writeback=False, report=False)
    (tmp_path / "parts" / "run" / "_SUCCESS").unlink()
    result = CliRunner().invoke(main, ["export", str(tmp_path / "parts"), "--export-to", f"csv:{tmp_path / 'csv'}"])
    assert result.exit_code == ExitCode.INPUT
    assert "not a whole results folder (run without _SUCCESS)" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--results-dir", "file:///tmp/x", "--no-writeback"], "--results-dir is written by Spark: add --engine spark"),
        (["--results-dir", "file:///tmp/x", "--engine", "spark"], "add --no-writeback"),
    ],
)
def test_results_dir_asks_for_what_it_needs(tmp_path: Path, extra: list[str], message: str) -> None:
    args = ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path / "out"), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == ExitCode.CONFIG
    assert message in result.output


def test_lines_over_the_limit_read_by_url_are_rejects_and_every_line_keeps_its_number(
    tmp_path: Path, spark: Any
) -> None:
    """Issue 32, item 8: a line too large for the JVM killed Spark. Read by URL from a plain file, a line over
    --max-record-bytes is skipped by Hadoop unread and is one too-large reject, as in the local engine; the
    lines after it keep their numbers, across partitions (100 kB splits here, which the large lines cross)
    and at the end of the file."""
    limit = 64 * 1024
    big = b'{"resourceType": "Patient", "id": "big", "name": [{"text": "' + b"x" * (150 * 1024) + b'"}]}'
    filler = b'{"resourceType": "Patient", "id": "f%d", "name": [{"text": "' + b"y" * 600 + b'"}]}'
    lines = [big, b"{oops", big, b"{}", big]  # 1 too large, 2 malformed, 3 too large, 4 not a resource, 5 big
    lines += [filler % n for n in range(300)] + [b"", b"{also broken", big]  # 306 empty, 307 malformed, 308 big
    data = tmp_path / "data"
    data.mkdir()
    (data / "odd.ndjson").write_bytes(b"\n".join(lines))  # the last line has no newline
    limits = InputLimits(record_bytes=limit)
    run([PAPER, data], tmp_path / "local", "local", limits=limits)
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    small = {"fs.local.block.size": str(100 * 1024), "fs.file.impl.disable.cache": "true"}
    for key, value in small.items():
        conf.set(key, value)
    try:
        summary = run([PAPER], tmp_path / "spark", "spark", urls=((data / "odd.ndjson").as_uri(),), limits=limits)
    finally:
        for key in small:
            conf.unset(key)

    def odd(out: Path) -> list[tuple[str, str, str | None]]:
        rejects = [json.loads(x) for x in (out / "rejects.ndjson").read_text().splitlines()]
        return sorted((r["locator"], r["code"], r["id"]) for r in rejects if r["file"].endswith("odd.ndjson"))

    local, remote = odd(tmp_path / "local"), odd(tmp_path / "spark")
    refused = [(x[0], x[1]) for x in remote if x[1] in ("too-large", "malformed-json", "not-a-resource")]
    assert refused == [
        ("line 1", "too-large"),
        ("line 2", "malformed-json"),
        ("line 3", "too-large"),
        ("line 307", "malformed-json"),
        ("line 308", "too-large"),
        ("line 4", "not-a-resource"),
        ("line 5", "too-large"),
    ]
    assert remote == local and len(remote) == 307  # and the 300 Patients not in the study, each at its line
    assert summary.patients == 14


def test_a_jvm_that_dies_is_reported_as_the_input_not_as_the_output(
    tmp_path: Path, spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 32, item 8: when Spark's JVM died (a 200 MB line), the run said "cannot write --out: Connection
    refused" (exit 16). The connection to a dead JVM is refused: the message names the input instead."""

    def jvm_gone(*_args: Any) -> dict[str, Any]:
        raise ConnectionRefusedError(111, "Connection refused")  # what py4j raises once the JVM is gone

    monkeypatch.setattr("fhiradapter.shell.run.spark_engine._run", jvm_gone)
    url = (PAPER / "Observation.ndjson").resolve().as_uri()
    out = tmp_path / "out"
    args = ["evaluate", url, "--engine", "spark", "--as-of", "2005-03-31", "--out", str(out), "--no-report"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == ExitCode.INPUT, result.output
    assert "cannot write" not in result.output
    assert "Spark stopped while reading the input (ConnectionRefusedError" in result.output
    assert f"most likely on a record too large for its memory in {url}" in result.output
    assert "--max-record-bytes (67108864 bytes)" in result.output

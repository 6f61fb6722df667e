"""Results read back as the types they were written from (core/readback.py): a round trip gives back equal values.

On the paper cohort (with its screening candidates) and on a generated cohort: every subject, candidate, clinical
extract, the header and the cohort of results.json, decoded and encoded again, give back the bytes evaluate wrote;
the export's reader hands out the same typed values; a value of the wrong type is refused with its path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import msgspec
import pytest
from builders import AS_OF, ROOT

from fhiradapter.core.readback import decode_extract, decode_header, decode_subject, split_whole
from fhiradapter.core.results import (
    AgeRange,
    AnthracyclineHistory,
    ChildPughClass,
    Measurability,
    Measurement,
    PatientResult,
    ResultsHeader,
    TimedRunSummary,
    to_json,
)
from fhiradapter.errors import InputError
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.registry.export import ResultsReader
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.pipeline import run_evaluate

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
GENERATE = ROOT / "benchmarks" / "generate.py"


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TimedRunSummary]:
    out = tmp_path_factory.mktemp("paper") / "out"
    mappings, identity = load_mappings()
    request = RunRequest(
        inputs=(PAPER,),
        out=out,
        as_of=AS_OF,
        mappings=mappings,
        mappings_identity=identity,
        report=False,
        screen_candidates=True,
    )
    summary = run_evaluate(request)
    return out, summary


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("generated")
    subprocess.run(
        [sys.executable, str(GENERATE), "--patients", "400", "--out", str(base / "in"), "--seed", "11"],
        check=True,
        capture_output=True,
    )
    mappings, identity = load_mappings()
    request = RunRequest(
        inputs=(base / "in",),
        out=base / "out",
        as_of=date(2026, 1, 1),
        mappings=mappings,
        mappings_identity=identity,
        report=False,
        screen_candidates=True,
    )
    run_evaluate(request)
    return base / "out"


def round_trip(out: Path) -> int:
    """Every typed thing in ``out`` decoded and encoded again: the bytes evaluate wrote. Returns how many."""
    raw = (out / "results.json").read_bytes()
    header, subjects, cohort = split_whole(raw)
    first = raw.split(b"\n", 1)[0]
    assert to_json(header)[:-1] + b',"subjects":[' == first
    assert raw.endswith(b'\n],"cohort":' + to_json(cohort) + b"}\n")
    for subject in subjects:
        assert to_json(decode_subject(subject)) == bytes(subject)
    candidates = (out / "candidates.ndjson").read_bytes().splitlines()
    for line in candidates:
        assert to_json(decode_subject(line)) == line
    extracts = (out / "clinical.ndjson").read_bytes().splitlines()
    for line in extracts:
        assert to_json(decode_extract(line)) == line
    return len(subjects) + len(candidates) + len(extracts)


def test_paper_cohort_results_read_back_equal(paper: tuple[Path, TimedRunSummary]) -> None:
    out, summary = paper
    assert round_trip(out) > 14
    header = decode_header((out / "results.json").read_bytes().split(b',"subjects":[', 1)[0] + b"}")
    # What run_evaluate returned is what results.json holds (without the timings, which it leaves out).
    assert header.run_summary == msgspec.convert(
        {k: v for k, v in msgspec.to_builtins(summary).items() if k not in ("seconds", "worker_cpu_seconds")},
        type(header.run_summary),
    )
    assert header.as_of == AS_OF and header.run_summary.population.subjects == 14


def test_generated_cohort_results_read_back_equal(generated: Path) -> None:
    assert round_trip(generated) > 400


def test_every_kind_of_criterion_value_reads_back_as_its_type(generated: Path) -> None:
    kinds: set[type] = set()
    for result, _extract in ResultsReader(generated).subjects():
        assert isinstance(result, PatientResult)
        kinds |= {type(c.value) for c in result.eligibility.criteria}
    assert {Measurement, ChildPughClass, int, str, type(None)} <= kinds
    assert kinds <= {Measurement, ChildPughClass, AgeRange, Measurability, AnthracyclineHistory, int, str, type(None)}


def test_the_reader_hands_out_the_typed_header_and_cohort(paper: tuple[Path, TimedRunSummary]) -> None:
    out, _summary = paper
    reader = ResultsReader(out)
    assert isinstance(reader.header, ResultsHeader)
    results = [result for result, _extract in reader.subjects()]
    header, subjects, cohort = split_whole((out / "results.json").read_bytes())
    assert results == [decode_subject(s) for s in subjects]
    assert reader.cohort == cohort and reader.header == header


def test_a_criterion_value_of_the_wrong_type_is_refused_with_its_path(
    paper: tuple[Path, TimedRunSummary], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(paper[0], out)
    lines = (out / "results.json").read_bytes().split(b"\n")
    age = b'{"id":"age","status":"met","value":'
    n = next(i for i, line in enumerate(lines) if age in line)
    start = lines[n].index(age) + len(age)
    end = lines[n].index(b",", start)
    lines[n] = lines[n][:start] + b'{"unit":"years"}' + lines[n][end:]  # an age is a number (or a range)
    (out / "results.json").write_bytes(b"\n".join(lines))
    refused = rf"line {n + 1} is not an fhiradapter results record .*criteria\[\d+\]\.value"
    with pytest.raises(InputError, match=refused):
        list(ResultsReader(out).subjects())

"""Hostile input sizes (issue 32, item 3): compressed bombs beside the paper cohort, through the CLI.

A few hundred kilobytes of .gz or .zst may hold gigabytes. Each bomb here is written as a stream (small on
disk, 256-512 MiB decompressed), put beside the paper cohort and evaluated by the ``fhiradapter`` command in a
child process, with ``--max-record-bytes 1MiB`` so that refusing costs little: the run ends normally (exit 0),
the paper cohort's results are those of the cohort alone, the oversized record is one ``too-large`` reject
naming file and line (never its content), and the child's peak memory (its own ``ru_maxrss``, from
``os.wait4``) stays far below what the bomb decompresses to.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import pytest
import zstandard
from builders import ROOT

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
AS_OF = "2005-03-31"
MiB = 1 << 20
LIMIT = ["--max-record-bytes", "1MiB"]


class Run(NamedTuple):
    code: int
    stdout: str
    stderr: str
    max_rss: int  # bytes: the child's peak resident memory
    out: Path

    def summary(self) -> dict[str, Any]:
        return dict(json.loads((self.out / "summary.json").read_text()))

    def rejects(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.out / "rejects.ndjson").read_text().splitlines()]

    def results(self) -> dict[str, Any]:
        return dict(json.loads((self.out / "results.json").read_text()))


def evaluate(inputs: list[Path], out: Path, *extra: str) -> Run:
    """``fhiradapter evaluate`` in a child process; its exit code, output and peak memory."""
    exe = Path(sys.executable).with_name("fhiradapter")
    args = [str(exe), "evaluate", *map(str, inputs), "--as-of", AS_OF, "--out", str(out), "--no-report", *extra]
    env = {**os.environ, "FHIRADAPTER_DEBUG": ""}
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(args, stdout=stdout, stderr=stderr, env=env)
        _pid, status, usage = os.wait4(child.pid, 0)  # this child's own peak (with its workers), not the suite's
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        return Run(child.returncode, stdout.read().decode(), stderr.read().decode(), usage.ru_maxrss * 1024, out)


@pytest.fixture(scope="module")
def cohort_alone(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The paper cohort by itself: its results, and the command's peak memory on it."""
    run = evaluate([PAPER], tmp_path_factory.mktemp("alone") / "out")
    assert run.code == 0, run.stderr
    return run


def beside_the_cohort(tmp_path: Path, name: str, write: Callable[[BinaryIO], None]) -> Path:
    """A copy of the paper cohort's folder with one more file, written as a stream."""
    folder = tmp_path / "input"
    shutil.copytree(PAPER, folder)
    with (folder / name).open("wb") as fh:
        write(fh)
    return folder


def gz(chunks: Iterator[bytes]) -> Callable[[BinaryIO], None]:
    def write(fh: BinaryIO) -> None:
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing
        for chunk in chunks:
            fh.write(packer.compress(chunk))
        fh.write(packer.flush())

    return write


def zst(chunks: Iterator[bytes]) -> Callable[[BinaryIO], None]:
    def write(fh: BinaryIO) -> None:
        packer = zstandard.ZstdCompressor(level=3).compressobj()
        for chunk in chunks:
            fh.write(packer.compress(chunk))
        fh.write(packer.flush())

    return write


def huge_patient(size: int, pid: str = "bomb") -> Iterator[bytes]:
    """One Patient whose text runs to ``size`` bytes, in 1 MiB pieces (never whole in the test either)."""
    yield b'{"resourceType": "Patient", "id": "' + pid.encode() + b'", "birthDate": "1960-01-01", "name": [{"text": "'
    block = b"x" * MiB
    for _ in range(size // MiB):
        yield block
    yield b'"}]}'


GOOD = b'{"resourceType": "Patient", "id": "after-the-bomb", "birthDate": "1960-01-01"}\n'


def assert_cohort_unchanged(run: Run, alone: Run) -> None:
    assert run.code == 0, (run.stdout, run.stderr)
    got, want = run.results(), alone.results()
    assert got["subjects"] == want["subjects"] and got["cohort"] == want["cohort"]
    assert got["cohort"]["n_treated"] == 8


def assert_bounded(run: Run, alone: Run, decompressed: int) -> None:
    """Peak memory over the cohort alone's: far below what the bomb decompresses to (held whole, a record
    costs its size at least, and several times that parsed)."""
    extra = run.max_rss - alone.max_rss
    assert extra < decompressed // 4, f"peak {run.max_rss >> 20} MiB, cohort alone {alone.max_rss >> 20} MiB"


def too_large(run: Run, name: str) -> list[dict[str, Any]]:
    found = [r for r in run.rejects() if r["code"] == "too-large"]
    for r in found:
        assert Path(r["file"]).name == name and "1048576 bytes" in r["reason"] and "--max-record-bytes" in r["reason"]
        assert "xxxx" not in json.dumps(r)  # never the record's content
    return found


def test_a_gzipped_ndjson_line_of_256_mib_is_one_reject_and_the_next_line_is_read(
    tmp_path: Path, cohort_alone: Run
) -> None:
    size = 256 * MiB

    def lines() -> Iterator[bytes]:
        yield from huge_patient(size)
        yield b"\n" + GOOD

    folder = beside_the_cohort(tmp_path, "bomb.ndjson.gz", gz(lines()))
    assert (folder / "bomb.ndjson.gz").stat().st_size < 2 * MiB
    run = evaluate([folder], tmp_path / "out", *LIMIT)
    assert_cohort_unchanged(run, cohort_alone)
    assert [r["locator"] for r in too_large(run, "bomb.ndjson.gz")] == ["line 1"]
    summary, alone = run.summary(), cohort_alone.summary()
    assert summary["records_read"] == alone["records_read"] + 2  # the refused line, and the line after it
    assert summary["by_type"]["Patient"]["read"] == alone["by_type"]["Patient"]["read"] + 1
    assert summary["rejects_by_reason"]["too-large"] == 1
    assert_bounded(run, cohort_alone, size)


def test_a_gzipped_json_patient_of_256_mib_is_one_reject(tmp_path: Path, cohort_alone: Run) -> None:
    size = 256 * MiB
    folder = beside_the_cohort(tmp_path, "bomb.json.gz", gz(huge_patient(size)))
    run = evaluate([folder], tmp_path / "out", *LIMIT)
    assert_cohort_unchanged(run, cohort_alone)
    assert [r["locator"] for r in too_large(run, "bomb.json.gz")] == ["file"]
    assert run.summary()["records_read"] == cohort_alone.summary()["records_read"] + 1
    assert_bounded(run, cohort_alone, size)


def test_a_bundle_entry_of_256_mib_is_one_reject_after_the_entries_before_it(tmp_path: Path, cohort_alone: Run) -> None:
    size = 256 * MiB

    def bundle() -> Iterator[bytes]:
        yield b'{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": ' + GOOD.strip() + b"}, "
        yield b'{"resource": '
        yield from huge_patient(size)
        yield b'}, {"resource": {"resourceType": "Patient", "id": "never-reached"}}]}'

    folder = beside_the_cohort(tmp_path, "bomb.json.gz", gz(bundle()))
    run = evaluate([folder], tmp_path / "out", *LIMIT)
    assert_cohort_unchanged(run, cohort_alone)
    (refused,) = too_large(run, "bomb.json.gz")
    assert refused["locator"] == "entry 1" and "nor the rest of the file" in refused["reason"]
    summary = run.summary()
    assert summary["by_type"]["Patient"]["read"] == cohort_alone.summary()["by_type"]["Patient"]["read"] + 1
    assert_bounded(run, cohort_alone, size)


def test_half_a_gib_of_newlines_in_zstd_costs_constant_memory_and_no_rejects(tmp_path: Path, cohort_alone: Run) -> None:
    """2 GiB of newlines ended in MemoryError (the .zst file was decompressed whole): here 512 MiB of them,
    read by two workers, then one line, whose number is right."""
    size = 512 * MiB

    def lines() -> Iterator[bytes]:
        block = b"\n" * MiB
        for _ in range(size // MiB):
            yield block
        yield GOOD

    folder = beside_the_cohort(tmp_path, "blank.ndjson.zst", zst(lines()))
    assert (folder / "blank.ndjson.zst").stat().st_size < MiB
    run = evaluate([folder], tmp_path / "out", *LIMIT, "--workers", "2")
    assert_cohort_unchanged(run, cohort_alone)
    summary, alone = run.summary(), cohort_alone.summary()
    assert summary["records_read"] == alone["records_read"] + 1  # empty lines are not records
    assert summary["records_rejected"] == alone["records_rejected"] + 1  # the Patient after: not in the study
    (after,) = [r for r in run.rejects() if r["id"] == "after-the-bomb"]
    assert after["locator"] == f"line {size + 1}"
    assert_bounded(run, cohort_alone, size)


def test_one_file_of_bad_lines_lists_a_bounded_number_of_rejects_and_counts_every_one(
    tmp_path: Path, cohort_alone: Run
) -> None:
    """A 4.8 MB .gz wrote 276 MB of rejects: now at most --max-rejects-per-file of one file are listed, then
    one line says how many more, and why; summary.json still counts every record."""
    bad = 200_000

    def lines() -> Iterator[bytes]:
        yield b"{}\n" * (bad // 2)  # not-a-resource
        yield b"{not json\n" * (bad // 2)  # malformed-json
        yield GOOD

    folder = beside_the_cohort(tmp_path, "flood.ndjson.gz", gz(lines()))
    run = evaluate([folder], tmp_path / "out", "--max-rejects-per-file", "100")
    assert_cohort_unchanged(run, cohort_alone)
    rejects = run.rejects()
    flood = [r for r in rejects if Path(r["file"]).name == "flood.ndjson.gz"]
    assert len(flood) == 101 and [r["code"] for r in flood[:100]] == ["not-a-resource"] * 100
    (said,) = [r for r in flood if r["code"] == "not-listed"]
    assert said["reason"].startswith(f"{bad + 1 - 100} more rejects of this file are not listed one by one")
    assert "malformed-json 100000, not-a-resource 99900, not-in-study 1" in said["reason"]
    assert "--max-rejects-per-file" in said["reason"]
    summary, alone = run.summary(), cohort_alone.summary()
    assert summary["records_read"] == alone["records_read"] + bad + 1
    assert summary["records_rejected"] == alone["records_rejected"] + bad + 1
    assert summary["rejects_not_listed"] == {str(folder / "flood.ndjson.gz"): bad + 1 - 100}
    listed = len(rejects) - 1  # the not-listed line is no record
    assert listed + sum(summary["rejects_not_listed"].values()) == summary["records_rejected"]
    assert (run.out / "rejects.ndjson").stat().st_size < 64 * 1024


def test_max_record_bytes_takes_sizes_and_refuses_nonsense(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fhiradapter.cli import main
    from fhiradapter.shell.run.readers import MAX_RECORD_BYTES, MAX_REJECTS_PER_FILE

    help_text = CliRunner().invoke(main, ["evaluate", "--help"]).output
    assert "64MiB" in help_text and 64 * MiB == MAX_RECORD_BYTES and MAX_REJECTS_PER_FILE == 1000
    for value in ("12 parsecs", "-5", "100"):
        result = CliRunner().invoke(
            main, ["evaluate", str(PAPER), "--as-of", AS_OF, "--out", str(tmp_path / "o"), "--max-record-bytes", value]
        )
        assert result.exit_code == 2 and "--max-record-bytes" in result.output, result.output
    ok = CliRunner().invoke(
        main,
        ["evaluate", str(PAPER), "--as-of", AS_OF, "--out", str(tmp_path / "o"), "--max-record-bytes", "2kib"],
    )
    assert ok.exit_code == 0, ok.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["records_used"] + summary["records_rejected"] == summary["records_read"]


def test_gzip_of_the_cohort_itself_still_reads_whole(tmp_path: Path) -> None:
    """The limits change nothing for ordinary compressed input: the cohort gzipped file by file."""
    folder = tmp_path / "packed"
    folder.mkdir()
    for f in PAPER.iterdir():
        (folder / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    from click.testing import CliRunner

    from fhiradapter.cli import main

    a = CliRunner().invoke(main, ["evaluate", str(PAPER), "--as-of", AS_OF, "--out", str(tmp_path / "a"), *LIMIT])
    b = CliRunner().invoke(main, ["evaluate", str(folder), "--as-of", AS_OF, "--out", str(tmp_path / "b"), *LIMIT])
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    ra = json.loads((tmp_path / "a" / "results.json").read_text())
    rb = json.loads((tmp_path / "b" / "results.json").read_text())
    assert ra["subjects"] == rb["subjects"] and ra["cohort"] == rb["cohort"]

"""Trust at the file boundary: an output set is whole or absent, a run ends when asked, a failure names its cause.

Real processes: two runs into one folder, ``kill -9`` during a run, Ctrl-C (SIGINT) early in a two-worker
run, and write failures (a read-only folder, ``--out`` under a regular file, a full disk simulated by a tiny
tmpfs where the machine allows mounting one).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import ROOT
from click.testing import CliRunner

from fhiradapter.cli import main
from fhiradapter.errors import ExitCode, InputError, OutputBusy
from fhiradapter.shell.common.out_folder import LOCK, MANIFEST, check_manifest, claim_output

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
GENERATE = ROOT / "benchmarks" / "generate.py"


def fhiradapter(*args: str) -> subprocess.Popen[bytes]:
    """``fhiradapter ARGS`` as its own process (in its own process group, as a terminal would run it)."""
    return subprocess.Popen(
        [sys.executable, "-c", "from fhiradapter.cli import run; run()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated cohort large enough that a two-worker run takes several seconds (about 60 MB)."""
    folder = tmp_path_factory.mktemp("cohort")
    subprocess.run(
        [sys.executable, str(GENERATE), "--patients", "6000", "--out", str(folder), "--seed", "3"],
        check=True,
        capture_output=True,
    )
    return folder


def evaluate_args(src: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", str(src), "--as-of", "2005-03-31", "--out", str(out), "--no-report", *extra]


def test_a_second_run_into_the_same_folder_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with claim_output(out, [PAPER]):
        started = time.monotonic()
        result = CliRunner().invoke(main, evaluate_args(PAPER, out))
        assert time.monotonic() - started < 5
    assert result.exit_code == ExitCode.BUSY.value == 14, result.output
    assert f"{out} is being written by another fhiradapter run (pid {os.getpid()})" in result.output
    assert not (out / "results.json").exists()
    again = CliRunner().invoke(main, evaluate_args(PAPER, out))  # the lock went with its holder
    assert again.exit_code == 0, again.output


def test_two_runs_started_together_never_mix_their_outputs(tmp_path: Path, cohort: Path) -> None:
    out = tmp_path / "out"
    first = fhiradapter(*evaluate_args(cohort, out, "--workers", "2"))
    time.sleep(0.3)
    second = fhiradapter(*evaluate_args(PAPER, out))
    _, err = second.communicate(timeout=60)
    assert second.returncode == 14 and b"is being written by another fhiradapter run (pid " in err
    first.communicate(timeout=600)
    assert first.returncode == 0
    manifest = check_manifest(out, ["results.json", "clinical.ndjson", "writeback.json"])
    assert json.loads((out / "summary.json").read_text())["patients"] == 6000
    assert manifest["as_of"] == "2005-03-31"


def test_a_run_killed_while_writing_leaves_no_set_that_export_would_read(tmp_path: Path, cohort: Path) -> None:
    """kill -9 during the write phase: results.json may be the new one beside an old clinical.ndjson, but the
    manifest went first, so export and sync refuse the folder; no worker lives on; the next run cleans up."""
    out = tmp_path / "out"
    assert CliRunner().invoke(main, evaluate_args(PAPER, out)).exit_code == 0
    run = fhiradapter(*evaluate_args(cohort, out, "--workers", "2"))
    deadline = time.monotonic() + 120
    while (out / MANIFEST).exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the new run has dropped the old manifest
    while not list(out.glob(".spill-*/*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the workers are at work
    workers = _children(run.pid)
    os.kill(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    time.sleep(0.5)
    assert workers and not [pid for pid in workers if _alive(pid)]  # no orphan lives on
    with pytest.raises(InputError, match="holds no complete output set"):
        check_manifest(out, ["results.json", "clinical.ndjson"])
    refused = CliRunner().invoke(main, ["export", str(out), "--to", f"sqlite:///{tmp_path / 'r.db'}"])
    assert refused.exit_code == 11 and "no complete output set" in refused.output
    spills = list(out.glob(".spill-*"))
    assert spills and all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in spills)  # patient data: owner only
    assert CliRunner().invoke(main, evaluate_args(PAPER, out)).exit_code == 0
    assert not list(out.glob(".spill-*"))  # the dead run's spill is gone
    check_manifest(out, ["results.json", "clinical.ndjson"])


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat_file.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return status not in ("Z", "X")


@pytest.mark.parametrize("after", [1.0, 2.0])
def test_ctrl_c_early_in_a_two_worker_run_ends_it_within_two_seconds(
    tmp_path: Path, cohort: Path, after: float
) -> None:
    run = fhiradapter(*evaluate_args(cohort, tmp_path / "out", "--workers", "2"))
    time.sleep(after)
    workers = _children(run.pid)
    os.killpg(run.pid, signal.SIGINT)  # as a terminal sends it: to the whole process group
    started = time.monotonic()
    _, err = run.communicate(timeout=30)
    took = time.monotonic() - started
    assert run.returncode == 130 and took < 2.0, (took, err[-2000:])
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted (Ctrl-C)"), lines
    time.sleep(0.3)
    assert not [pid for pid in workers if _alive(pid)]


def test_a_second_ctrl_c_while_stopping_prints_no_traceback(tmp_path: Path, cohort: Path) -> None:
    run = fhiradapter(*evaluate_args(cohort, tmp_path / "out", "--workers", "2"))
    time.sleep(1.0)
    os.killpg(run.pid, signal.SIGINT)
    time.sleep(0.05)
    if run.poll() is None:  # still stopping: a second Ctrl-C, as an impatient user gives it
        os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 130 and b"Traceback" not in err, err[-2000:]


def test_nothing_to_evaluate_is_an_exit_code_of_its_own(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, evaluate_args(empty, tmp_path / "o1"))
    assert result.exit_code == ExitCode.NOTHING.value == 15
    assert "no patient was evaluated: the input holds no FHIR record" in result.output
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "p.ndjson").write_text('{"resourceType":"Patient","id":"p1"}\n')
    result = CliRunner().invoke(main, evaluate_args(lonely, tmp_path / "o2"))
    assert result.exit_code == 15 and "1 patient(s) in the input, none with a ResearchSubject" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits; the read-only mount case runs")
def test_a_folder_without_write_permission_names_the_path(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = CliRunner().invoke(main, evaluate_args(PAPER, locked / "out"))
    assert result.exit_code == ExitCode.OUTPUT.value == 16
    assert f"cannot write {locked / 'out'}: permission denied" in result.output


def test_out_under_a_regular_file_names_the_path_and_the_cause(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(main, evaluate_args(PAPER, blocker / "out"))
    assert result.exit_code == 16, result.output
    assert "cannot write" in result.output and "a part of the path is a file, not a folder" in result.output
    assert "unexpected internal error" not in result.output


def _mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> bool:
    folder.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_and_a_read_only_file_system_name_their_cause(tmp_path: Path) -> None:
    full, read_only = tmp_path / "full", tmp_path / "ro"
    if not _mount_tmpfs(full, "64k"):
        pytest.skip("this machine does not let the tests mount a small tmpfs (needs root in its own namespace)")
    try:
        assert _mount_tmpfs(read_only, "1m", read_only=True)
        try:
            result = CliRunner().invoke(main, evaluate_args(PAPER, full / "out"))
            assert result.exit_code == 16 and "the disk is full" in result.output, result.output
            assert not (full / "out" / "results.json").exists() and not (full / "out" / MANIFEST).exists()
            result = CliRunner().invoke(main, evaluate_args(PAPER, read_only / "out"))
            assert result.exit_code == 16 and "the file system is read-only" in result.output, result.output
        finally:
            subprocess.run(["umount", str(read_only)], check=False)
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_a_busy_folder_is_refused_by_the_api_too(tmp_path: Path) -> None:
    with claim_output(tmp_path / "out", []), pytest.raises(OutputBusy), claim_output(tmp_path / "out", []):
        pass
    assert (tmp_path / "out" / LOCK).exists()

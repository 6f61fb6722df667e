"""docs/try-a-server.md: its commands, run as written (port and folders in a temporary place), do what it says.

The page starts the local FHIR server with scripts/local-fhir-server, pulls, syncs, syncs again (nothing to
write) and lists the runs. The server is stopped by its PID at the end, whatever happens.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from builders import ROOT
from fhir_server import free_port

PAGE = ROOT / "docs" / "try-a-server.md"


def page_commands() -> list[str]:
    block = PAGE.read_text().split("```\n", 2)[1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_try_a_server_page_runs_as_written(tmp_path: Path) -> None:
    commands = page_commands()
    assert commands[0].startswith("python3 -m venv") and commands[-1] == "kill %1"  # the install: done already
    server_line, fhiradapter_lines = commands[1], commands[2:-1]
    port = str(free_port())
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = shlex.split(server_line.rstrip("&").replace("8090", port))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / argv[0]), *argv[1:]],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert f"FHIR R4 server at http://127.0.0.1:{port}/fhir, holding the paper cohort" in first, first
        outputs = []
        for line in fhiradapter_lines:
            args = shlex.split(line.replace("8090", port))
            run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, (line, run.stdout, run.stderr)
            outputs.append(run.stdout)
        pull, first_sync, approved, pushed, second_sync, runs = outputs
        assert "Pulled ResearchStudy/thal-hcc-pilot: 14 patient(s)" in pull
        assert "plan for the results: create 92, update 13, unchanged 1" in first_sync
        assert "held for a person's approval: 105 change(s)" in first_sync and "pushed: nothing to send" in first_sync
        assert (
            "update ResearchSubject/thal-01-rs: status on-study → off-study; period.end none → 2004-06-30" in approved
        )
        assert "Approved by A. Data Manager" in approved
        assert "created 94, updated 13" in pushed
        assert re.search(r"plan for the results: unchanged 106\n", second_sync)
        assert "pushed: nothing to send" in second_sync
        assert "newest first (2 of 2)" in runs
        assert (tmp_path / "fhir-server-data").is_dir() and (tmp_path / "pulled" / "Patient.ndjson").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # `kill %1` on the page
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # stopped: nothing answers on the port any more
        try:
            httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=1)
        except httpx.TransportError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the server still answers after SIGTERM")

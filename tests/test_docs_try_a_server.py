"""docs/try-a-server.md: its commands, run as written (port and folders in a temporary place), do what it says.

The page starts the local FHIR server with scripts/local-fhir-server, pulls, syncs, syncs again (nothing to
write) and lists the runs. The server is stopped by its PID at the end, whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
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
        plan = [
            json.loads(x)
            for x in (tmp_path / "sync-data/runs/run-1/out/writeback-plan.ndjson").read_text().splitlines()
        ]
        n = Counter(p["action"] for p in plan)
        patients = len({p["patient"] for p in plan})
        assert f"Pulled ResearchStudy/thal-hcc-pilot: {patients} patient(s)" in pull
        planned = f"create {n['create']}, update {n['update']}, unchanged {n['unchanged']}"
        assert f"plan for the results: {planned}" in first_sync
        held = n["create"] + n["update"]
        assert (
            f"held for a person's approval: {held} change(s)" in first_sync and "pushed: nothing to send" in first_sync
        )
        assert (
            "update ResearchSubject/thal-01-rs: status on-study → off-study; period.end none → 2004-06-30" in approved
        )
        assert "Approved by A. Data Manager" in approved
        provenances = re.search(r"with (\d+) Provenance record", pushed)  # one per transaction part, also created
        assert provenances, pushed
        assert f"created {n['create'] + int(provenances[1])}, updated {n['update']}" in pushed
        assert re.search(rf"plan for the results: unchanged {sum(n.values())}\n", second_sync)
        # The page says what a reader will see: the same figures.
        page = PAGE.read_text()
        assert planned in page and f"{held} change(s)" in page and f"unchanged {sum(n.values())}" in page
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

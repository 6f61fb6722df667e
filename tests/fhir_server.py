"""A real FHIR R4 server for the tests: sekmet-fhir (FastAPI + SQLite), started on 127.0.0.1 and stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def sekmet_server(folder: Path) -> Iterator[str]:
    """Start ``sekmet serve`` with a fresh data folder; yield the FHIR base URL; stop it by its PID."""
    exe = shutil.which("sekmet", path=str(Path(sys.executable).parent)) or shutil.which("sekmet")
    if exe is None:
        raise RuntimeError("sekmet-fhir is not installed (pip install -e '.[dev]')")
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    config = folder / "sekmet.yaml"
    config.write_text(
        f"base_url: {base}\nhost: 127.0.0.1\nport: {port}\ndata_dir: {folder / 'data'}\n"
        "simulator:\n  enabled: false\nlog_inbound: false\n"
    )
    log = (folder / "sekmet.log").open("wb")
    proc = subprocess.Popen(
        [exe, "serve", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sekmet did not start: {(folder / 'sekmet.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()

"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temporary folder, on a free loopback port.

Runs as the current user, or as ``postgres`` when the tests run as root (initdb refuses root). Trust
authentication on 127.0.0.1 only; the cluster is stopped by the PID in ``postmaster.pid`` and its folder removed.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fhir_server import free_port


def pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _as_owner(cmd: list[str], root: bool) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if root else cmd


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Yield a SQLAlchemy-ready URL ``postgresql://postgres@127.0.0.1:PORT/registry``; stop and remove afterwards."""
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (initdb not found)")
    root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="fhiradapter-pg-"))
    data = folder / "data"
    port = free_port()
    if root:
        shutil.chown(folder, "postgres", "postgres")
    try:
        subprocess.run(
            _as_owner(
                [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                root,
            ),
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
        subprocess.run(
            _as_owner(
                [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "pg.log"), "-w", "start"],
                root,
            ),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "registry"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/registry"
    finally:
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGINT)  # fast shutdown
            deadline = time.monotonic() + 20
            while pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_file.exists():
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """Create an empty database ``name`` in the cluster behind ``url``; return its URL."""
    import psycopg

    base, _, _db = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"

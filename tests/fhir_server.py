"""A real FHIR R4 server for the tests: sekmet-fhir (FastAPI + SQLite), started on 127.0.0.1 and stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a server started in its own session: SIGTERM to its process group, SIGKILL after 10 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@contextmanager
def sekmet_server(
    folder: Path, extra_config: str = "", tls: tuple[Path, Path, Path] | None = None, port: int | None = None
) -> Iterator[str]:
    """Start ``sekmet serve`` on ``folder/data`` (kept between starts); yield the FHIR base URL; stop it by PID.

    ``extra_config`` is appended to the YAML configuration (e.g. a ``server_auth`` block). ``tls``: the
    server's certificate chain, its key, and the CA that signed it (PEM files): the server speaks HTTPS.
    ``port``: where to listen (default: a free port). ``scripts/local-fhir-server`` uses this to try sync by hand.
    """
    exe = shutil.which("sekmet", path=str(Path(sys.executable).parent)) or shutil.which("sekmet")
    if exe is None:
        raise RuntimeError("sekmet-fhir is not installed (pip install -e '.[dev]')")
    port = port or free_port()
    base = f"{'https' if tls else 'http'}://127.0.0.1:{port}/fhir"
    config = folder / "sekmet.yaml"
    config.write_text(
        f"base_url: {base}\nhost: 127.0.0.1\nport: {port}\ndata_dir: {folder / 'data'}\n"
        "simulator:\n  enabled: false\nlog_inbound: false\n"
        + (f"tls_certfile: {tls[0]}\ntls_keyfile: {tls[1]}\n" if tls else "")
        + extra_config
    )
    verify = ssl.create_default_context(cafile=str(tls[2])) if tls else True
    log = (folder / "sekmet.log").open("wb")
    proc = subprocess.Popen(
        [exe, "serve", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/metadata", timeout=2, verify=verify).status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sekmet did not start: {(folder / 'sekmet.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        stop(proc)
        log.close()


def post(base: str, bundle: dict[str, Any], verify: ssl.SSLContext | bool = True) -> httpx.Response:
    return httpx.post(
        base,
        content=orjson.dumps(bundle),
        timeout=60,
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
        verify=verify,
    )


def load_input(base: str, folder: Path, chunk: int = 1000, verify: ssl.SSLContext | bool = True) -> None:
    """Put the paper cohort on the server with its own ids (PUT), as the hospital record would hold it."""
    entries = []
    for path in sorted(folder.glob("*.ndjson")):
        for line in path.read_text().splitlines():
            res = json.loads(line)
            res.pop("meta", None)
            entries.append({"resource": res, "request": {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}})
    screening_file = folder / "screening-candidates.json"
    if screening_file.exists():
        screening = json.loads(screening_file.read_text())
        aliases = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in screening["entry"]}
        text = json.dumps(screening["entry"])
        for urn, ref in aliases.items():
            text = text.replace(f'"{urn}"', f'"{ref}"')
        for e in json.loads(text):
            entries.append(
                {
                    "resource": e["resource"],
                    "request": {"method": "PUT", "url": f"{e['resource']['resourceType']}/{e['resource']['id']}"},
                }
            )
    for start in range(0, len(entries), chunk):
        batch = {"resourceType": "Bundle", "type": "batch", "entry": entries[start : start + chunk]}
        response = post(base, batch, verify)
        assert response.status_code == 200, response.text[:500]
        failed = [e["response"] for e in response.json()["entry"] if not e["response"]["status"].startswith("20")]
        assert failed == []


JS = Path(__file__).resolve().parent / "js"


@contextmanager
def medplum_server(folder: Path) -> Iterator[str]:
    """Start Medplum's FHIR engine behind tests/js/medplum-server.cjs; yield the base URL; stop it by its PID."""
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "@medplum" / "fhir-router").is_dir():
        raise RuntimeError("node or the Medplum packages are missing (npm ci --prefix tests/js)")
    log = (folder / "medplum.log").open("wb")
    proc = subprocess.Popen(
        [node, str(JS / "medplum-server.cjs"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=JS,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"the Medplum server did not start: {(folder / 'medplum.log').read_text()[-2000:]}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/fhir"
    finally:
        stop(proc)
        log.close()


SERVERS = {"sekmet": sekmet_server, "medplum": medplum_server}


def server_resources(base: str, rtype: str) -> Iterator[dict[str, Any]]:
    """Every resource of a type on a test server, read with plain httpx (independently of the adapter's client)."""
    url: str | None = f"{base}/{rtype}?_count=500"
    while url:
        page = httpx.get(url, timeout=30).json()
        for e in page.get("entry", []):
            yield e["resource"]
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)

"""The HTML report in a real browser: Debian's Chromium, headless, driven over the DevTools protocol.

The report of the paper cohort must render with no console error and no exception, every image must load, and
a screenshot of the whole page is kept as a test artifact (``test-artifacts/report.png``, beside the repo's
files, not committed). CI installs Chromium (.ci/run); elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from base64 import b64decode
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import AS_OF, ROOT
from fhir_server import stop

from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.pipeline import run_evaluate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="Chromium is not installed (Debian package chromium; .ci/run installs it)",
)


class Page:
    """One browser tab over the DevTools protocol: commands answered by id, events kept as they come."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return dict(message.get("result") or {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            left = deadline - time.monotonic()
            assert left > 0, f"no {method} within {timeout} s"
            self.events.append(json.loads(self.ws.recv(timeout=left)))


def test_the_html_report_renders_in_a_real_browser_with_every_image(tmp_path: Path) -> None:
    assert CHROMIUM is not None, "CI installs Chromium (.ci/run)"
    mappings, identity = load_mappings()
    out = tmp_path / "out"
    run_evaluate(
        RunRequest(
            inputs=(ROOT / "fixtures" / "paper-cohort" / "input",),
            out=out,
            as_of=AS_OF,
            mappings=mappings,
            mappings_identity=identity,
        )
    )
    browser = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--remote-debugging-port=0",
            "--window-size=1280,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert browser.stderr is not None
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = browser.stderr.readline()
            if "DevTools listening on ws://" in line:
                port = int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        assert port is not None, "Chromium did not start its DevTools endpoint"
        tabs = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        from websockets.sync.client import connect

        url = next(t["webSocketDebuggerUrl"] for t in tabs if t["type"] == "page")
        with connect(url, max_size=None, open_timeout=20) as ws:
            page = Page(ws)
            for domain in ("Page", "Runtime", "Log"):
                page.call(f"{domain}.enable")
            page.call("Page.navigate", url=(out / "report.html").as_uri())
            page.wait_for("Page.loadEventFired")
            images = page.call(
                "Runtime.evaluate",
                expression="JSON.stringify(Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]))",
                returnByValue=True,
            )["result"]["value"]
            loaded = json.loads(images)
            assert [alt for alt, _, _ in loaded] == ["Overall survival (Kaplan-Meier)", "Treatment durations"]
            assert all(complete and width > 100 for _, complete, width in loaded), loaded
            title = page.call("Runtime.evaluate", expression="document.title", returnByValue=True)["result"]["value"]
            assert "Thalidomide" in title
            # What a reader sees: each criterion with the value found and its limit, no Markdown left over.
            text = page.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
            seen = text["result"]["value"]
            assert "age 75; must be under 75" in seen and "neutrophils 0.9 × 10⁹/L; must be ≥ 1.0 × 10⁹/L" in seen
            assert "Not screened: this run was made without --screen-candidates." in seen and "`" not in seen
            shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "report.png").write_bytes(b64decode(shot["data"]))
            errors = [
                e
                for e in page.events
                if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
            ]
            assert errors == []
    finally:
        stop(browser)
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000  # a page, not a blank

"""Bulk Data $export: kick-off, polling with Retry-After and X-Progress, downloads, error files, resume, cancel.

Fault paths on ``httpx.MockTransport``; the whole path on a real server (sekmet-fhir), whose results must equal
those evaluated from the fixture files.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from builders import AS_OF, ROOT
from click.testing import CliRunner
from fhir_server import load_input, sekmet_server
from stub_server import Reply, Seen, Stub, stub_server

from fhiradapter.cli import main
from fhiradapter.errors import ServerError
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.pipeline import run_evaluate
from fhiradapter.shell.server.bulk import STATE, bulk_pull
from fhiradapter.shell.server.fhir_client import ClientSettings, FhirClient

BASE = "https://fhir.test/r4"
PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
TYPES = ["Patient", "Observation"]


class FakeExport:
    """A Bulk Data server: kick-off, N polls answered 202, then the manifest; files; DELETE."""

    def __init__(
        self, polls: int = 2, errors: bool = False, requires_token: bool = True, patient_url: str | None = None
    ) -> None:
        self.polls, self.errors, self.requires_token = polls, errors, requires_token
        self.patient_url = patient_url or f"{BASE}/files/p.ndjson"  # another host: cloud storage
        self.log: list[str] = []
        self.broken: set[str] = set()  # files answered 404

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.log.append(f"{request.method} {path}")
        if path.endswith("$export"):
            assert request.headers["Prefer"] == "respond-async"
            return httpx.Response(202, headers={"Content-Location": f"{BASE}/status/1"})
        if path.endswith("/status/1"):
            if request.method == "DELETE":
                return httpx.Response(202)
            if self.polls:
                self.polls -= 1
                return httpx.Response(202, headers={"X-Progress": f"{50 - 10 * self.polls}% done", "Retry-After": "7"})
            manifest = {
                "transactionTime": "2005-04-01T00:00:00Z",
                "requiresAccessToken": self.requires_token,
                "output": [
                    {"type": "Patient", "url": self.patient_url},
                    {"type": "Observation", "url": f"{BASE}/files/o.ndjson"},
                ],
                "error": [{"type": "OperationOutcome", "url": f"{BASE}/files/e.ndjson"}] if self.errors else [],
            }
            return httpx.Response(200, json=manifest)
        if path.rsplit("/", 1)[-1] in self.broken:
            return httpx.Response(404)
        if path.endswith("/files/p.ndjson"):
            return httpx.Response(200, content=b'{"resourceType":"Patient","id":"p1"}\n')
        if path.endswith("/files/o.ndjson"):
            return httpx.Response(
                200, content=b'{"resourceType":"Observation","id":"o1"}\n{"resourceType":"Observation","id":"o2"}\n'
            )
        if path.endswith("/files/e.ndjson"):
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "diagnostics": "Consent/9 unreadable"}],
            }
            return httpx.Response(200, content=json.dumps(outcome).encode() + b"\n")
        return httpx.Response(404)


def run(server: FakeExport, out: Path, **kw: Any) -> tuple[Any, list[float], list[str]]:
    waits: list[float] = []
    progress: list[str] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def go() -> Any:
        client = FhirClient(BASE, settings=ClientSettings(), transport=httpx.MockTransport(server), sleep=sleep)
        async with client:
            return await bulk_pull(client, out, types=TYPES, on_progress=progress.append, sleep=sleep, **kw)

    return asyncio.run(go()), waits, progress


def test_polling_honours_retry_after_and_reports_progress(tmp_path: Path) -> None:
    server = FakeExport(polls=2)
    summary, waits, progress = run(server, tmp_path)
    assert waits == [7.0, 7.0] and progress == ["40% done", "50% done"] and summary.polls == 3
    assert summary.resources == {"Patient": 1, "Observation": 2}
    files = ["Observation-002.ndjson", "Patient-001.ndjson"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [*files, "pull-manifest.json"]
    manifest = json.loads((tmp_path / "pull-manifest.json").read_text())
    assert manifest["files"] == files and manifest["resources"] == {"Observation": 2, "Patient": 1}
    assert server.log[-1] == "DELETE /r4/status/1"  # told the server it may delete the files


def test_error_files_are_reported_and_kept_apart_from_the_data(tmp_path: Path) -> None:
    summary, _, _ = run(FakeExport(polls=0, errors=True), tmp_path)
    assert summary.errors == ["Consent/9 unreadable"]
    assert not any(p.name.endswith(".ndjson") and p.name.startswith("errors") for p in tmp_path.iterdir())


def test_an_interrupted_pull_resumes_the_same_export(tmp_path: Path) -> None:
    """A pull that fails after the kick-off keeps its folder beside --out, and the export: run again, it resumes."""
    out = tmp_path / "out"
    server = FakeExport(polls=0)
    server.broken.add("o.ndjson")
    with pytest.raises(ServerError):
        run(server, out)
    assert not out.exists() and "DELETE /r4/status/1" not in server.log  # nothing in place; the export kept
    server.broken.clear()
    server.log.clear()
    summary, _, _ = run(server, out)
    assert summary.resumed and not any("$export" in line for line in server.log)  # no second kick-off
    assert "GET /r4/files/p.ndjson" not in server.log and "GET /r4/files/o.ndjson" in server.log
    assert summary.resources == {"Patient": 1, "Observation": 2} and not (out / STATE).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the folder it was written in is the pull's now


def test_an_export_replaces_an_earlier_pull_when_complete_even_across_a_resume(tmp_path: Path) -> None:
    """The earlier pull stays as it was while the export runs (it may never finish), and is replaced whole once
    it is complete."""
    earlier = ["Condition.ndjson", "Observation.ndjson", "Patient.ndjson"]
    for name in earlier:
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "pull-manifest.json").write_text(json.dumps({"files": earlier}))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    async def stop(seconds: float) -> None:
        raise KeyboardInterrupt  # the first run is stopped while the export is being prepared

    async def first() -> None:
        client = FhirClient(BASE, transport=httpx.MockTransport(FakeExport(polls=5)))
        async with client:
            await bulk_pull(client, tmp_path, types=TYPES, sleep=stop)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(first())
    server = FakeExport(polls=0)
    server.broken.add("o.ndjson")
    with pytest.raises(ServerError):  # the second fails part-way, after the Patient file
        run(server, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing removed, nothing added
    server.broken.clear()
    summary, _, _ = run(server, tmp_path)
    assert summary.resumed and summary.replaced == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "Observation-002.ndjson",
        "Patient-001.ndjson",
        "pull-manifest.json",
    ]


def test_a_search_pull_refuses_the_folder_of_an_unfinished_export(tmp_path: Path) -> None:
    (tmp_path / STATE).write_text(json.dumps({"status_url": f"{BASE}/status/1", "done": []}))
    args = ["pull", "--server", BASE, "--study", "s", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 10 and "holds an unfinished Bulk export" in result.output


def test_ctrl_c_while_waiting_cancels_the_export_on_the_server(tmp_path: Path) -> None:
    server = FakeExport(polls=5)

    async def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    async def go() -> None:
        client = FhirClient(BASE, transport=httpx.MockTransport(server))
        async with client:
            await bulk_pull(client, tmp_path, types=TYPES, sleep=interrupt)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(go())
    assert server.log[-1] == "DELETE /r4/status/1" and not (tmp_path / STATE).exists()


def test_a_token_file_on_another_host_is_refused(tmp_path: Path) -> None:
    from fhiradapter.shell.server.auth import BearerAuth

    async def go() -> None:
        server = FakeExport(polls=0, patient_url="https://storage.example/files/p.ndjson")
        async with FhirClient(BASE, BearerAuth("tok"), transport=httpx.MockTransport(server)) as client:
            await bulk_pull(client, tmp_path, types=TYPES, sleep=asyncio.sleep)

    with pytest.raises(ServerError, match=r"https://storage.example:443, not on the server's own origin https://fhir"):
        asyncio.run(go())


def test_a_file_on_another_host_is_fetched_without_the_token_with_the_same_retries(tmp_path: Path) -> None:
    from fhiradapter.shell.server.auth import BearerAuth

    class Storage(FakeExport):
        """The manifest points the Patient file at cloud storage, which drops the first connection."""

        def __init__(self) -> None:
            super().__init__(polls=0, requires_token=False, patient_url="https://storage.example/files/p.ndjson")
            self.storage: list[str | None] = []

        def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.url.host == "storage.example":
                self.storage.append(request.headers.get("Authorization"))
                if len(self.storage) == 1:
                    raise httpx.RemoteProtocolError("peer closed connection")
            return super().__call__(request)

    server = Storage()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def go() -> Any:
        auth = BearerAuth("tok-secret")
        async with FhirClient(BASE, auth, ClientSettings(), httpx.MockTransport(server), sleep) as client:
            summary = await bulk_pull(client, tmp_path, types=TYPES, sleep=sleep)
            return summary, client.retries

    summary, retries = asyncio.run(go())
    assert server.storage == [None, None]  # retried once, and the token never sent there
    assert retries == 1 and summary.resources == {"Patient": 1, "Observation": 2}
    assert (tmp_path / "Patient-001.ndjson").read_text().count('"id":"p1"') == 1


def evaluate(src: Path, out: Path) -> dict[str, Any]:
    mappings, identity = load_mappings()
    run_evaluate(
        RunRequest(inputs=(src,), out=out, as_of=AS_OF, mappings=mappings, mappings_identity=identity, report=False)
    )
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def test_bulk_pull_from_a_real_server_gives_the_results_of_the_files(tmp_path: Path) -> None:
    files = evaluate(PAPER, tmp_path / "files")
    with sekmet_server(tmp_path) as base:
        load_input(base, PAPER)
        result = CliRunner().invoke(main, ["pull", "--server", base, "--bulk", "--out", str(tmp_path / "b")])
        assert result.exit_code == 0, result.output
        assert "read by search instead" in result.output  # sekmet exports only the Patient compartment it knows
        pulled = evaluate(tmp_path / "b", tmp_path / "e")
        assert pulled["subjects"] == files["subjects"] and pulled["cohort"] == files["cohort"]
        # A Group export: only the treated patients.
        members = [{"entity": {"reference": f"Patient/thal-0{n}"}} for n in range(1, 9)]
        group = {"resourceType": "Group", "id": "treated", "type": "person", "actual": True, "member": members}
        assert httpx.put(f"{base}/Group/treated", json=group, timeout=10).status_code in (200, 201)
        result = CliRunner().invoke(
            main, ["pull", "--server", base, "--bulk", "--group", "treated", "--out", str(tmp_path / "g")]
        )
        assert result.exit_code == 0, result.output
        grouped = evaluate(tmp_path / "g", tmp_path / "ge")
        assert [s["patient"] for s in grouped["subjects"]] == [f"Patient/thal-0{n}" for n in range(1, 9)]
        assert grouped["cohort"]["orr"] == files["cohort"]["orr"]


# ------------------------------------------------------------------------------ through the CLI, on real sockets


class BulkStub:
    """A Bulk Data server on a real socket: ``files`` (name -> body, or None for a 404) in its manifest, in order;
    every search answered with an empty searchset unless ``searches_fail`` (then a 400)."""

    def __init__(self, files: dict[str, bytes | None]) -> None:
        self.files = files
        self.searches_fail = False
        self.exports = 0

    def __call__(self, request: Seen) -> Reply:
        path = request.path.split("?", 1)[0]
        if path.endswith("$export"):
            self.exports += 1
            return Reply(202, headers={"Content-Location": f"/fhir/status/{self.exports}"})
        if path.startswith("/fhir/status/"):
            if request.method == "DELETE":
                return Reply(202)
            output = [{"type": name.split("-")[0], "url": f"/fhir/files/{name}"} for name in self.files]
            return Reply(200, {"transactionTime": "t1", "requiresAccessToken": False, "output": output, "error": []})
        if path.startswith("/fhir/files/"):
            body = self.files[path.rsplit("/", 1)[-1]]
            return Reply(404, {"resourceType": "OperationOutcome", "issue": []}) if body is None else Reply(200, body)
        if self.searches_fail:
            return Reply(400, {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "no search today"}]})
        return Reply(200, {"resourceType": "Bundle", "type": "searchset", "entry": []})


def bulk_cli(base: str, out: Path) -> Any:
    return CliRunner().invoke(main, ["pull", "--server", f"{base}/fhir", "--bulk", "--out", str(out)])


def deleted(stub: Stub) -> list[str]:
    return [r.path for r in stub.seen if r.method == "DELETE"]


def test_bad_lines_in_a_bulk_file_are_rejects_listed_in_the_pull_folder_not_a_crash(tmp_path: Path) -> None:
    """Issue 32.4: one bad line crashed the pull (KeyError, JSONDecodeError, TypeError; exit 1) after the export
    was deleted on the server, and left a file that blocked the next run."""
    patients = b"\n".join(
        [
            b'{"resourceType":"Patient","id":"p1"}',
            b'{"resourceType":"Patient","id":"p2","na',  # cut off
            b"[1, 2]",  # no resource
            b'{"resourceType":"Patient","name":[{"family":"X"}]}',  # no id
            b'{"resourceType":"Patient","id":"p3"}',
        ]
    )
    subjects = b'{"resourceType":"ResearchSubject","id":"rs1","individual":{"reference":"Patient/p1"}}\n'
    server = BulkStub({"Patient-a.ndjson": patients + b"\n", "ResearchSubject-b.ndjson": subjects})
    out = tmp_path / "pulled"
    with stub_server(server) as stub:
        result = bulk_cli(stub.base, out)
        assert result.exit_code == 0, result.output
        assert deleted(stub) == ["/fhir/status/1"]  # the pull is whole: the server may delete the export
    assert "Patient 2, ResearchStudy 0, ResearchSubject 1." in result.output
    assert "rejected: 3 line(s) of the export are no resource evaluate can read" in result.output
    assert "Patient-001.ndjson line 2 (malformed-json), Patient-001.ndjson line 3 (not-a-resource)" in result.output
    rejects = [json.loads(line) for line in (out / "pull-rejects.ndjson").read_text().splitlines()]
    assert [(r["file"], r["locator"], r["code"], r["resourceType"]) for r in rejects] == [
        ("Patient-001.ndjson", "line 2", "malformed-json", None),
        ("Patient-001.ndjson", "line 3", "not-a-resource", None),
        ("Patient-001.ndjson", "line 4", "missing-id", "Patient"),
    ]
    assert set(rejects[0]) == {"file", "locator", "resourceType", "id", "code", "reason"}  # evaluate's fields
    assert "X" not in (out / "pull-rejects.ndjson").read_text()  # no record content
    manifest = json.loads((out / "pull-manifest.json").read_text())
    assert manifest["rejected"] == 3 and manifest["resources"]["Patient"] == 2
    # evaluate reads the folder: the lines are rejected there too, pull-rejects.ndjson is not read as data.
    # (It exits 15, as this export has no ResearchStudy: the rejects are written all the same.)
    CliRunner().invoke(main, ["evaluate", str(out), "--as-of", "2005-03-31", "--out", str(tmp_path / "e")])
    found = [json.loads(line) for line in (tmp_path / "e" / "rejects.ndjson").read_text().splitlines()]
    assert {(Path(r["file"]).name, r["locator"], r["code"]) for r in found} >= {
        ("Patient-001.ndjson", "line 2", "malformed-json"),
        ("pull-rejects.ndjson", "file", "not-read"),
    }
    # A second pull into the same folder is not blocked by anything the first left.
    with stub_server(server) as stub:
        assert bulk_cli(stub.base, out).exit_code == 0


def test_a_bulk_pull_that_fails_part_way_leaves_the_earlier_pull_whole_and_the_export_on_the_server(
    tmp_path: Path,
) -> None:
    """Issue 32.5: a Bulk pull that failed part-way into an earlier pull's folder left Patient v2 beside
    ResearchSubject v1 and the old pull-manifest.json, which evaluate read silently. And 32.4: the export was
    deleted on the server before the pull was whole."""
    v1: dict[str, bytes | None] = {
        "Patient-a.ndjson": b'{"resourceType":"Patient","id":"p1","meta":{"versionId":"1"}}\n',
        "ResearchSubject-b.ndjson": b'{"resourceType":"ResearchSubject","id":"rs1","meta":{"versionId":"1"}}\n',
    }
    out = tmp_path / "pulled"
    with stub_server(BulkStub(v1)) as stub:
        assert bulk_cli(stub.base, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"Patient-001.ndjson", "ResearchSubject-002.ndjson", "pull-manifest.json"} < set(before)

    v2 = {
        "Patient-a.ndjson": b'{"resourceType":"Patient","id":"p1","meta":{"versionId":"2"}}\n',
        "ResearchSubject-b.ndjson": None,  # 404: the pull fails after the Patient file
    }
    server = BulkStub(v2)
    with stub_server(server) as stub:  # one server throughout: the status URL names its port
        failed = bulk_cli(stub.base, out)
        assert failed.exit_code == 13, failed.output
        assert deleted(stub) == []  # the export stays on the server, to resume
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier pull, whole

        # Missing types are searched after the files: a failed search is a failure before the pull is whole too.
        server.files["ResearchSubject-b.ndjson"] = (
            b'{"resourceType":"ResearchSubject","id":"rs1","meta":{"versionId":"2"}}\n'
        )

        server.searches_fail = True
        failed = bulk_cli(stub.base, out)
        assert failed.exit_code == 13, failed.output
        assert deleted(stub) == [] and server.exports == 1  # resumed, not exported again
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before

        server.searches_fail = False
        result = bulk_cli(stub.base, out)
        assert result.exit_code == 0, result.output
        assert deleted(stub) == ["/fhir/status/1"] and "(resumed)" in result.output and server.exports == 1
    assert all(
        b'"versionId":"2"' in (out / name).read_bytes() for name in ("Patient-001.ndjson", "ResearchSubject-002.ndjson")
    )
    assert [p.name for p in tmp_path.iterdir()] == ["pulled"]  # nothing left beside it


class SearchStub:
    """A study of one patient for a search pull, on a real socket; its Observation search answers 400 while
    ``failing`` (after the study, its subject and the Patient have been read)."""

    CAP: ClassVar[dict[str, Any]] = {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": "ResearchSubject", "searchParam": [{"name": "study"}]},
                    *({"type": t, "searchParam": [{"name": "subject"}]} for t in ("Observation", "Condition")),
                    *(
                        {"type": t, "searchParam": [{"name": "subject"}]}
                        for t in ("MedicationStatement", "AdverseEvent")
                    ),
                    *({"type": t, "searchParam": [{"name": "patient"}]} for t in ("Consent", "BodyStructure")),
                ],
            }
        ],
    }

    def __init__(self, version: str) -> None:
        self.version, self.failing = version, False

    def __call__(self, request: Seen) -> Reply:
        path = request.path.split("?", 1)[0].removeprefix("/fhir/")
        meta = {"versionId": self.version}
        found: list[dict[str, Any]] = []
        if path == "metadata":
            return Reply(200, self.CAP)
        if path == "ResearchStudy/s1":
            return Reply(200, {"resourceType": "ResearchStudy", "id": "s1", "meta": meta})
        if path == "Patient/p1":
            return Reply(200, {"resourceType": "Patient", "id": "p1", "meta": meta})
        if path == "ResearchSubject":
            study, individual = {"reference": "ResearchStudy/s1"}, {"reference": "Patient/p1"}
            found = [{"resourceType": "ResearchSubject", "id": "rs1", "study": study, "individual": individual}]
        if path == "Observation":
            if self.failing:
                return Reply(400, {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "not today"}]})
            found = [{"resourceType": "Observation", "id": "o1", "meta": meta, "subject": {"reference": "Patient/p1"}}]
        entries = [{"resource": r, "search": {"mode": "match"}} for r in found]
        return Reply(200, {"resourceType": "Bundle", "type": "searchset", "entry": entries})


def test_a_search_pull_is_written_apart_and_replaces_the_earlier_pull_whole_or_not_at_all(tmp_path: Path) -> None:
    """Issue 32.5 for search pulls: a new pull never writes into --out; it replaces it whole once complete, keeps
    the files no pull wrote and the folder's mode, and a pull that fails leaves --out exactly as it was."""
    out = tmp_path / "pulled"

    def pull(stub: Stub) -> Any:
        return CliRunner().invoke(main, ["pull", "--server", f"{stub.base}/fhir", "--study", "s1", "--out", str(out)])

    with stub_server(SearchStub("1")) as stub:
        assert pull(stub).exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o700  # a new folder of patient data: the owner's only
    out.chmod(0o750)
    (out / "notes.txt").write_text("site contact: ...\n")  # not a pull's: kept
    (out / "Consent.ndjson.partial").write_text("{}\n")  # a stopped pull's leftover: goes
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    server = SearchStub("2")
    server.failing = True
    with stub_server(server) as stub:
        failed = pull(stub)
        assert failed.exit_code == 13 and "not today" in failed.output, failed.output
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # as it was, nothing of version 2
        server.failing = False
        result = pull(stub)
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "Observation.ndjson",
        "Patient.ndjson",
        "ResearchStudy.ndjson",
        "ResearchSubject.ndjson",
        "notes.txt",
        "pull-manifest.json",
    ]
    assert b'"versionId":"2"' in (out / "Patient.ndjson").read_bytes()
    assert (out / "notes.txt").read_bytes() == before["notes.txt"] and out.stat().st_mode & 0o777 == 0o750
    assert [p.name for p in tmp_path.iterdir()] == ["pulled"]  # nothing left beside it


def test_the_export_state_reads_back_as_written(tmp_path: Path) -> None:
    """bulk-state.json: written, then read back, is the same typed value; an unreadable one is nothing to resume."""
    from fhiradapter.shell.server.bulk import ExportState, _load_state, _save_state

    state = ExportState(status_url=f"{BASE}/status/7", group="cohort", since="2024-01-31T00:00:00Z")
    state.done.append(f"{BASE}/files/Patient-1.ndjson")
    _save_state(tmp_path, state)
    assert _load_state(tmp_path) == state
    assert json.loads((tmp_path / STATE).read_text())["done"] == [f"{BASE}/files/Patient-1.ndjson"]
    (tmp_path / STATE).write_text('{"done": []}')  # no status URL: nothing to poll
    assert _load_state(tmp_path) is None

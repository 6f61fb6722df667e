"""Trust at the server boundary: where the credential may go, what a Bulk manifest may name, every write accounted
for, and a server's limits met without flags.

Hostile or quirky servers on ``httpx.MockTransport``, or on real sockets on loopback (``stub_server``; 127.0.0.2
plays "another host"); the stock Medplum router's transaction limits on the Medplum test server.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from builders import approve_bundle, standing_rule_all, trusting_mappings
from click.testing import CliRunner
from stub_server import Reply, Seen, drip_server, stub_server

from fhiradapter.cli import main
from fhiradapter.errors import AnswerLost, ConfigError, OutcomeIssue, ServerError, ServerRequest
from fhiradapter.shell.server.auth import BearerAuth
from fhiradapter.shell.server.bulk import bulk_pull
from fhiradapter.shell.server.connection import ServerOptions, open_client
from fhiradapter.shell.server.fhir_client import AdaptiveLimit, ClientSettings, FhirClient
from fhiradapter.shell.server.push import push, refused_for_size

BASE = "https://fhir.test/r4"
TOKEN = "tok-s3cret"  # noqa: S105 - a test token
FAST = ClientSettings(retry_budget_s=30, max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05)


def fhir(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, content=json.dumps(body).encode(), headers={"Content-Type": "application/fhir+json", **headers}
    )


async def no_sleep(seconds: float) -> None:
    pass


def client_for(handler: Callable[..., Any], auth: httpx.Auth | None = None, **kw: Any) -> FhirClient:
    settings = kw.pop("settings", FAST)
    return FhirClient(BASE, auth, settings, httpx.MockTransport(handler), no_sleep, **kw)


# ------------------------------------------------------------------------------------- 1. the credential stays home


class Export:
    """A Bulk Data server whose status URL and files may be on other origins; records who got the token."""

    def __init__(self, status_url: str, files: dict[str, str], requires_token: bool = True) -> None:
        self.status_url, self.files, self.requires_token = status_url, files, requires_token
        self.token_to: list[str] = []  # "METHOD origin path" of every request that carried the token
        self.log: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        where = f"{request.method} {request.url.scheme}://{request.url.host} {request.url.path}"
        self.log.append(where)
        if request.headers.get("Authorization") == f"Bearer {TOKEN}":
            self.token_to.append(where)
        if request.url.path.endswith("$export"):
            return httpx.Response(202, headers={"Content-Location": self.status_url})
        if str(request.url) == self.status_url:
            if request.method == "DELETE":
                return httpx.Response(202)
            output = [{"type": t, "url": u} for t, u in self.files.items()]
            return fhir(
                {
                    "transactionTime": "2005-04-01T00:00:00Z",
                    "requiresAccessToken": self.requires_token,
                    "output": output,
                    "error": [],
                }
            )
        return httpx.Response(200, content=b'{"resourceType":"Patient","id":"p1"}\n')


def bulk(server: Export, out: Path, **kw: Any) -> Any:
    async def go() -> Any:
        async with client_for(server, BearerAuth(TOKEN), **kw) as client:
            return await bulk_pull(client, out, types=["Patient"], sleep=no_sleep)

    return asyncio.run(go())


def test_s1_a_bulk_status_url_on_another_origin_never_gets_the_token(tmp_path: Path) -> None:
    server = Export("https://attacker.test/status/1", {"Patient": f"{BASE}/files/p.ndjson"})
    with pytest.raises(ServerError) as refused:
        bulk(server, tmp_path)
    assert "https://attacker.test:443" in str(refused.value) and "https://fhir.test:443" in str(refused.value)
    assert not [line for line in server.log if "attacker.test" in line]  # neither polled nor cancelled
    assert server.token_to == ["GET https://fhir.test /r4/Patient/$export"]


def test_s1_a_trusted_origin_gets_the_token_for_status_and_files(tmp_path: Path) -> None:
    server = Export("https://storage.test/status/1", {"Patient": "https://storage.test/files/p.ndjson"})
    summary = bulk(server, tmp_path, trusted=("https://storage.test",))
    assert summary.resources == {"Patient": 1}
    assert "GET https://storage.test /status/1" in server.token_to
    assert "GET https://storage.test /files/p.ndjson" in server.token_to


def test_s1_files_that_need_no_token_are_fetched_without_it_even_from_the_server(tmp_path: Path) -> None:
    files = {"Patient": f"{BASE}/files/p.ndjson", "Observation": "https://cdn.test/o.ndjson"}
    server = Export(f"{BASE}/status/1", files, requires_token=False)
    bulk(server, tmp_path)
    assert not [w for w in server.token_to if "/files/" in w or "cdn.test" in w]
    assert "GET https://fhir.test /r4/files/p.ndjson" in server.log


def test_s1_a_file_needing_the_token_on_an_untrusted_origin_is_refused_naming_both(tmp_path: Path) -> None:
    server = Export(f"{BASE}/status/1", {"Patient": "https://cdn.test/p.ndjson"})
    with pytest.raises(
        ServerError, match=r"on https://cdn.test:443, not on the server's own origin https://fhir.test:443"
    ):
        bulk(server, tmp_path)
    assert not [line for line in server.log if "cdn.test" in line]


def test_s1_no_code_path_sends_the_credential_elsewhere() -> None:
    """The auth itself refuses another origin, even for a request that skips the client's own check."""
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return fhir({})

    async def go() -> None:
        async with client_for(handler, BearerAuth(TOKEN)) as client:
            with pytest.raises(ServerError, match="not sent, the credential is not for it"):
                await client.client.get("https://other.test/r4/Patient")
            with pytest.raises(ServerError, match=r"refused, it points to https://other\.test:443"):
                await client.request("GET", "https://other.test/r4/Patient")
            await client.request("GET", "https://FHIR.test:443/r4/Patient")  # the same origin, spelt otherwise

    asyncio.run(go())
    assert len(sent) == 1 and sent[0].startswith("https://fhir.test")


def test_s1_bulk_over_real_sockets_the_other_host_sees_no_token(tmp_path: Path) -> None:
    """127.0.0.2 plays another host: the kick-off names a status URL there; the CLI refuses it, exit 13."""
    with stub_server(lambda request: Reply(200, {}), host="127.0.0.2") as other:

        def home_server(request: Seen) -> Reply:
            if "$export" in request.path:
                return Reply(202, headers={"Content-Location": f"{other.base}/status/1"})
            return Reply(404, {"resourceType": "OperationOutcome", "issue": []})

        with stub_server(home_server) as home:
            token = secret(tmp_path, "token", 0o600)
            args = ["pull", "--server", f"{home.base}/fhir", "--bulk", "--token-file", str(token)]
            result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 13, result.output
        assert f"status URL is on {other.base}" in result.output and home.base in result.output
        assert other.seen == [] and TOKEN not in result.output
        assert [r.headers.get("Authorization") for r in home.seen] == [f"Bearer {TOKEN}"]


# ------------------------------------------------------------------------------------- 2. files stay in --out


def test_s2_a_manifest_cannot_write_outside_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    files = {
        "../../../escaped": f"{BASE}/files/a.ndjson",
        str(tmp_path / "absolute"): f"{BASE}/files/b.ndjson",
        "Patient": f"{BASE}/files/p.ndjson",
        "Patient/../x": f"{BASE}/files/c.ndjson",
    }
    server = Export(f"{BASE}/status/1", files)
    summary = bulk(server, out)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["deep/out/Patient-003.ndjson", "deep/out/pull-manifest.json"]
    assert len(summary.refused) == 3 and all(
        "is not a FHIR resource type; not downloaded" in r for r in summary.refused
    )
    assert "../../../escaped" in summary.refused[0]
    assert not [line for line in server.log if line.endswith(("a.ndjson", "b.ndjson", "c.ndjson"))]
    assert json.loads((out / "pull-manifest.json").read_text())["refused"] == summary.refused


def test_s2_the_pull_command_lists_what_it_refused(tmp_path: Path) -> None:
    def server(request: Seen) -> Reply:
        if "$export" in request.path:
            return Reply(202, headers={"Content-Location": "/fhir/status/1"})
        if request.path.startswith("/fhir/status/1"):
            output = [{"type": "/etc/cron.d/x", "url": "/fhir/f/1"}, {"type": "Patient", "url": "/fhir/f/2"}]
            return Reply(200, {"transactionTime": "t", "requiresAccessToken": False, "output": output, "error": []})
        if request.path.startswith("/fhir/f/"):
            return Reply(200, b'{"resourceType":"Patient","id":"p1"}\n')
        return Reply(200, {"resourceType": "Bundle", "type": "searchset", "entry": []})

    with stub_server(server) as stub:
        args = ["pull", "--server", f"{stub.base}/fhir", "--bulk", "--out", str(tmp_path / "out")]
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "refused: output 1: its type ('/etc/cron.d/x') is not a FHIR resource type; not downloaded" in result.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "Patient-002.ndjson" in names and not [n for n in names if "cron" in n or n.endswith("-001.ndjson")]
    assert not [r for r in stub.seen if r.path == "/fhir/f/1"] and not list(tmp_path.glob("**/x"))


# ------------------------------------------------------------------------------------- 3. TLS and secret files


def secret(tmp_path: Path, name: str, mode: int, text: str = TOKEN) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("server", "insecure", "refused"),
    [
        ("http://fhir.hospital.example/r4", False, True),
        ("http://10.1.2.3/r4", False, True),
        ("http://fhir.hospital.example/r4", True, False),
        ("http://127.0.0.2:8080/fhir", False, False),  # this machine
        ("http://localhost:8080/fhir", False, False),
        ("http://[::1]:8080/fhir", False, False),
        ("https://fhir.hospital.example/r4", False, False),
    ],
)
def test_s3_a_token_goes_over_plain_http_only_to_this_machine(
    tmp_path: Path, server: str, insecure: bool, refused: bool
) -> None:
    options = ServerOptions(server, token_file=secret(tmp_path, "t", 0o600), allow_insecure_http=insecure)
    if refused:
        with pytest.raises(ConfigError, match=r"plain http://: the credential would cross the network unencrypted"):
            asyncio.run(open_client(options))
    else:
        assert asyncio.run(open_client(options)).authenticated


def test_s3_without_a_credential_plain_http_is_allowed(tmp_path: Path) -> None:
    assert not asyncio.run(open_client(ServerOptions("http://fhir.hospital.example/r4"))).authenticated


def test_s3_a_smart_token_endpoint_over_plain_http_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = secret(tmp_path, "k.pem", 0o600, pem.decode())
    options = ServerOptions(
        "https://fhir.hospital.example/r4",
        client_id="c",
        smart_key_file=key,
        token_url="http://auth.example/token",  # noqa: S106 - a URL, not a password
    )
    with pytest.raises(ConfigError, match=r"the SMART token endpoint http://auth\.example/token is plain http://"):
        asyncio.run(open_client(options))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
@pytest.mark.parametrize("option", ["--token-file", "--smart-key-file"])
def test_s3_a_secret_file_others_may_read_is_refused(tmp_path: Path, mode: int, option: str) -> None:
    path = secret(tmp_path, "secret", mode)
    extra = ["--client-id", "c1"] if option == "--smart-key-file" else []
    args = ["pull", "--server", "https://fhir.test/r4", "--study", "s", "--out", str(tmp_path / "o"), option, str(path)]
    result = CliRunner().invoke(main, [*args, *extra])
    assert result.exit_code == 10, result.output
    assert f"may be read by other users (mode {stat.filemode(0o100000 | mode)})" in result.output
    assert f"chmod 600 {path}" in result.output and TOKEN not in result.output


def test_s3_a_secret_file_only_its_owner_reads_is_taken(tmp_path: Path) -> None:
    client = asyncio.run(open_client(ServerOptions("https://fhir.test/r4", token_file=secret(tmp_path, "t", 0o600))))
    assert client.authenticated


# ------------------------------------------------------------------------------------- 4. every write accounted for


def writeback(patients: int = 2, per_patient: int = 2) -> dict[str, Any]:
    """A write-back Bundle: per patient, conditional creates of results; one Provenance naming them all."""
    entries = []
    for p in range(patients):
        for n in range(per_patient):
            ident = f"r-{p}-{n}"
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{p:04d}{n:04d}-0000-0000-0000-000000000000",
                    "resource": {
                        "resourceType": "Observation",
                        "identifier": [{"system": "urn:fhiradapter:result-id", "value": ident}],
                        "subject": {"reference": f"Patient/p{p}"},
                        "status": "final",
                        "code": {"text": "a result"},
                    },
                    "request": {
                        "method": "POST",
                        "url": "Observation",
                        "ifNoneExist": f"identifier=urn:fhiradapter:result-id|{ident}",
                    },
                }
            )
    provenance = {
        "fullUrl": "urn:uuid:ffffffff-0000-0000-0000-000000000000",
        "resource": {
            "resourceType": "Provenance",
            "meta": {"tag": [{"system": "urn:fhiradapter:run", "code": "run1"}]},
            "target": [{"reference": e["fullUrl"]} for e in entries],
        },
        "request": {"method": "POST", "url": "Provenance", "ifNoneExist": "_tag=urn:fhiradapter:run|run1"},
    }
    return {"resourceType": "Bundle", "type": "transaction", "entry": [*entries, provenance]}


def capability(*interactions: str) -> httpx.Response:
    return fhir(
        {
            "resourceType": "CapabilityStatement",
            "fhirVersion": "4.0.1",
            "rest": [{"mode": "server", "interaction": [{"code": i} for i in interactions]}],
        }
    )


class Store:
    """A server's memory of written resources, answering transactions, batches, searches and reads."""

    def __init__(self) -> None:
        self.by_identifier: dict[str, str] = {}  # "system|value" or "_tag system|code" -> Type/id
        self.posts = 0

    def apply(self, entry: dict[str, Any]) -> dict[str, Any]:
        request, resource = entry["request"], entry["resource"]
        key = request["ifNoneExist"].split("=", 1)[1]
        if key in self.by_identifier:
            return {"response": {"status": "200 OK", "location": self.by_identifier[key]}}
        self.posts += 1
        where = f"{resource['resourceType']}/n{self.posts}"
        self.by_identifier[key] = where
        return {"response": {"status": "201 Created", "location": f"{where}/_history/1"}}

    def single(self, request: httpx.Request) -> httpx.Response:
        """One conditional create (If-None-Exist), as its own request."""
        key = request.headers["If-None-Exist"].split("=", 1)[1]
        answer = self.apply({"request": {"ifNoneExist": f"x={key}"}, "resource": json.loads(request.content)})
        status, location = int(answer["response"]["status"][:3]), answer["response"]["location"]
        return fhir({}, status, Location=f"{BASE}/{location}")

    def search(self, request: httpx.Request) -> httpx.Response:
        rtype = request.url.path.rsplit("/", 1)[1]
        query = parse_qs(urlsplit(str(request.url)).query)
        key = (query.get("identifier") or query.get("_tag") or [""])[0]
        found = [self.by_identifier[key]] if key in self.by_identifier else []
        entries = [
            {"resource": {"resourceType": rtype, "id": f.split("/")[1]}, "search": {"mode": "match"}} for f in found
        ]
        return fhir({"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries})


def run_push(handler: Callable[..., Any], bundle: dict[str, Any], **kw: Any) -> Any:
    async def go() -> Any:
        async with client_for(handler, settings=kw.pop("settings", FAST)) as client:
            return await push(client, bundle, **kw)

    return asyncio.run(go())


def test_s4_a_transaction_answered_200_with_an_operation_outcome_is_not_applied() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability("transaction")
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": "queued for processing"}],
        }
        return fhir(outcome, 200)

    summary = run_push(handler, writeback())
    assert summary.outcomes == {"not applied": 5} and not summary.complete
    assert summary.errors == [
        "a transaction of 5 entries counts as not applied: the server answered with an OperationOutcome instead "
        "of a Bundle (information informational: queued for processing)"
    ]


def test_s4_a_transaction_answered_with_fewer_entries_than_sent_is_not_applied() -> None:
    store = Store()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability("transaction")
        sent = json.loads(request.content)["entry"]
        return fhir({"resourceType": "Bundle", "type": "transaction-response", "entry": [store.apply(sent[0])]})

    summary = run_push(handler, writeback())
    assert summary.outcomes == {"not applied": 5} and "1 response entry for 5 sent" in summary.errors[0]


def test_s4_a_batch_answered_with_fewer_entries_counts_the_rest_as_unknown() -> None:
    store = Store()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability("batch")
        sent = json.loads(request.content)
        if request.method == "POST" and sent.get("resourceType") == "Bundle":
            return fhir({"resourceType": "Bundle", "type": "batch-response", "entry": [store.apply(sent["entry"][0])]})
        return fhir({}, 201, Location=f"{BASE}/Provenance/pv/_history/1")

    summary = run_push(handler, writeback())
    assert summary.outcomes == {"created": 2, "unknown": 3}  # one result and the Provenance of it; 3 unanswered
    assert "3 write(s) left unanswered count as unknown" in summary.errors[0] and not summary.complete


def test_s4_the_cli_exits_13_for_a_write_the_server_did_not_account_for(tmp_path: Path) -> None:
    def server(request: Seen) -> Reply:
        if request.path.endswith("/metadata"):
            return Reply(200, json.loads(capability("transaction").content))
        return Reply(200, {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "x"}]})

    bundle = tmp_path / "writeback.json"
    bundle.write_text(json.dumps(writeback()))
    approve_bundle(bundle)
    with stub_server(server) as stub:
        result = CliRunner().invoke(main, ["push", "--server", f"{stub.base}/fhir", str(bundle)])
    assert result.exit_code == 13, result.output
    assert "not applied 5" in result.output and "counts as not applied" in result.output


def test_s4_a_sync_with_writes_not_accounted_for_keeps_its_watermark(tmp_path: Path) -> None:
    from datetime import date

    from test_fhir_client import StudyServer

    from fhiradapter.shell.common.mappings_io import load_mappings
    from fhiradapter.shell.server.store import SyncStore
    from fhiradapter.shell.server.sync import SyncOptions, run_sync

    class Quiet(StudyServer):
        CAP: ClassVar[dict[str, Any]] = {
            **StudyServer.CAP,
            "rest": [{**StudyServer.CAP["rest"][0], "interaction": [{"code": "transaction"}]}],
        }

        def answer(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST":
                return fhir({"resourceType": "OperationOutcome", "issue": []}, 200)
            return super().answer(request)

    mappings, identity = load_mappings()
    opts = SyncOptions(
        study="s1",
        as_of=date(2005, 3, 31),
        since="auto",
        dry_run=False,
        work_dir=tmp_path / "runs",
        mappings=mappings,
        mappings_identity=identity,
        standing_rule=standing_rule_all(),
    )
    store = SyncStore(data_dir=tmp_path / "data")
    try:
        summary = run_sync(FhirClient(BASE, transport=httpx.MockTransport(Quiet())), store, opts)
        assert summary.pushed["not applied"] > 0 and summary.errors
        assert summary.watermark is None and store.watermark(BASE, "s1") is None
        (run,), _ = store.runs()
        assert run.status == "errors"
    finally:
        store.close()


# ------------------------------------------------------------------------------------- 5. a lost answer is checked


def test_s5_a_batch_whose_answer_is_lost_is_found_applied_on_the_server() -> None:
    """Every batch POST is applied, then its connection times out: the writes are looked up, not guessed."""
    store = Store()
    searched: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability("batch")
        if request.method == "GET":
            searched.append(request.url.path)
            return store.search(request)
        sent = json.loads(request.content)
        if sent.get("resourceType") == "Bundle":
            for entry in sent["entry"]:
                store.apply(entry)
            raise httpx.ReadTimeout("the answer never came", request=request)
        return fhir({}, 201, Location=f"{BASE}/Provenance/pv/_history/1")

    summary = run_push(handler, writeback(), mode="batch")
    assert summary.complete and summary.outcomes == {"created": 5}, summary.errors
    assert summary.found_after_lost_answer == 4 and store.posts == 4  # nothing written twice
    assert searched.count("/r4/Observation") == 4
    assert "4 write(s) whose answer was lost were found applied" in summary.notes()


def test_s5_a_write_whose_answer_was_lost_and_that_was_not_applied_is_sent_again() -> None:
    store = Store()
    lost = Counter[str]()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability()  # entry by entry
        if request.method == "GET":
            return store.search(request)
        entry = json.loads(request.content)
        ident = entry.get("identifier", [{}])[0].get("value", "prov")
        if ident == "r-0-0" and lost[ident] < 1:  # dropped before the server applied it
            lost[ident] += 1
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        return store.single(request)

    summary = run_push(handler, writeback(), mode="single")
    assert summary.complete and summary.outcomes == {"created": 5}, summary.errors
    assert store.posts == 5 and summary.found_after_lost_answer == 0 and lost["r-0-0"] == 1


def test_s5_a_transaction_whose_answer_was_lost_is_counted_from_the_server() -> None:
    store = Store()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability("transaction")
        if request.method == "GET":
            return store.search(request)
        for entry in json.loads(request.content)["entry"]:
            store.apply(entry)
        raise httpx.ReadTimeout("slow", request=request)

    summary = run_push(handler, writeback())
    assert summary.complete and summary.outcomes == {"created": 5} and store.posts == 5


def test_s5_a_lost_answer_is_an_answer_lost_error_a_refused_connection_is_not() -> None:
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def go(handler: Callable[..., Any]) -> None:
        async with client_for(handler) as client:
            await client.request("POST", "Observation", json={})

    with pytest.raises(AnswerLost):
        asyncio.run(go(lost))
    with pytest.raises(ServerError) as error:
        asyncio.run(go(refused))
    assert not isinstance(error.value, AnswerLost)


# ------------------------------------------------------------------------------------- 6. a server's size limits


class Limited:
    """A server that takes transactions of at most ``limit`` entries (400 "too many entries" above), as
    Medplum does once a transaction holds a conditional create; batches of any size."""

    def __init__(self, limit: int) -> None:
        self.limit, self.store = limit, Store()
        self.refused: list[int] = []
        self.transactions: list[int] = []
        self.batches: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability("transaction", "batch")
        if request.method == "GET":
            return self.store.search(request)
        bundle = json.loads(request.content)
        if bundle["resourceType"] != "Bundle":
            return self.store.single(request)
        entries = bundle["entry"]
        if bundle["type"] == "transaction" and len(entries) > self.limit:
            self.refused.append(len(entries))
            text = "Transaction requires strict isolation but has too many entries"
            return fhir(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}],
                },
                400,
            )
        (self.transactions if bundle["type"] == "transaction" else self.batches).append(len(entries))
        kind = "transaction-response" if bundle["type"] == "transaction" else "batch-response"
        return fhir({"resourceType": "Bundle", "type": kind, "entry": [self.store.apply(e) for e in entries]})


def test_s6_auto_mode_splits_a_transaction_refused_for_its_size_and_batches_a_patient_too_large() -> None:
    bundle = writeback(patients=6, per_patient=3)  # 18 results + a Provenance; 4 per transaction at most
    extra = json.loads(json.dumps(writeback(patients=1, per_patient=6)["entry"][:6]).replace("r-0-", "r-0-x"))
    bundle["entry"][:0] = extra  # 9 results for p0: more than any transaction of this server holds
    server = Limited(limit=4)
    summary = run_push(server, bundle, chunk=100, settings=ClientSettings(concurrency=1))
    assert summary.complete, summary.errors
    assert summary.non_atomic == ["Patient/p0"] and "Patient/p0" in summary.notes()[0]
    assert all(n <= 4 for n in server.transactions) and server.batches  # the rest as transactions
    results = [k for k in server.store.by_identifier if k.startswith("urn:fhiradapter:result-id")]
    provenances = [w for w in summary.written if w[1] == "Provenance"]
    assert len(results) == 24 and server.store.posts == 24 + len(provenances)  # each written once
    assert summary.limit is not None and summary.limit.refused_at > 4  # what it saw refused
    # Remembered: a second push to this server with what was learnt sends nothing the server refuses.
    again = Limited(limit=4)
    second = run_push(again, bundle, chunk=100, limit=summary.limit)
    assert again.refused == [] and second.complete and second.non_atomic == ["Patient/p0"]


def test_s6_an_explicit_transaction_mode_does_not_adapt() -> None:
    server = Limited(limit=2)
    summary = run_push(server, writeback(patients=2, per_patient=2), mode="transaction")
    assert server.refused == [5] and summary.limit is None and not summary.non_atomic
    assert summary.outcomes == {"error": 5} and "too many entries" in summary.errors[0]


def test_s4_a_part_refused_whole_is_counted_and_the_other_parts_still_go() -> None:
    """A server that refuses one part (422 for p1's results) and applies the others: each entry ends with an
    outcome, nothing is cancelled half way."""
    store = Store()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability("transaction")
        if request.method == "GET":
            return store.search(request)
        entries = json.loads(request.content)["entry"]
        if any(e["resource"].get("subject", {}).get("reference") == "Patient/p1" for e in entries):
            return fhir(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Observation.code: unknown"}],
                },
                422,
            )
        answers = [store.apply(e) for e in entries]
        return fhir({"resourceType": "Bundle", "type": "transaction-response", "entry": answers})

    summary = run_push(handler, writeback(patients=4, per_patient=2), chunk=3)
    assert summary.outcomes == {"created": 9, "error": 3}  # p0, p2, p3 with their Provenance; p1's part refused
    assert not summary.complete and any("Observation.code: unknown" in e for e in summary.errors)
    assert len(summary.written) == 12


def test_s5_an_update_whose_answer_was_lost_is_not_sent_blindly_again() -> None:
    """A PUT with If-Match applied, its answer lost: a blind retry would get 412 and report a conflict."""
    state = {"version": "1", "status": "on-study"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability()
        if request.method == "GET":
            return fhir(
                {
                    "resourceType": "ResearchSubject",
                    "id": "rs",
                    "status": state["status"],
                    "meta": {"versionId": state["version"]},
                }
            )
        if request.headers.get("If-Match") != f'W/"{state["version"]}"':
            return fhir({"resourceType": "OperationOutcome", "issue": []}, 412)
        state.update(version="2", status=json.loads(request.content)["status"])
        raise httpx.ReadTimeout("slow", request=request)

    update = {
        "fullUrl": "ResearchSubject/rs",
        "resource": {"resourceType": "ResearchSubject", "id": "rs", "status": "off-study"},
        "request": {"method": "PUT", "url": "ResearchSubject/rs", "ifMatch": 'W/"1"'},
    }
    summary = run_push(handler, {"resourceType": "Bundle", "type": "transaction", "entry": [update]}, mode="single")
    assert summary.outcomes == {"updated": 1} and summary.complete and summary.found_after_lost_answer == 1


@pytest.mark.parametrize(
    ("status", "text", "size"),
    [
        (413, "Payload Too Large", True),
        (400, "Transaction requires strict isolation but has too many entries", True),
        (400, "Transaction contains more update operations than allowed", True),
        (400, "Bundle exceeds the maximum of 500 entries", True),
        (400, "Observation.status: value is required", False),
        (400, "Observation.valueString: value too large", False),  # one field, not the Bundle's size
        (422, "too many entries", False),
    ],
)
def test_s6_what_counts_as_a_refusal_for_size(status: int, text: str, size: bool) -> None:
    """Decided on the error's OperationOutcome issues, never on its message (which names the request)."""
    issues = (OutcomeIssue("error", "invalid", text),)
    request = ServerRequest("POST", "/")
    error = ServerError(f"POST /: HTTP {status}: error invalid: {text}", status, request=request, issues=issues)
    assert refused_for_size(error) is size
    # The same words in the request's own description, or in a message without issues, are no refusal for size.
    named = ServerRequest("POST", "/too-many-entries")
    assert refused_for_size(ServerError(f"{named}: HTTP {status}: error", status, request=named)) is (status == 413)
    bare = ServerError(f"POST /: HTTP {status}: {text}", status, request=request)
    assert refused_for_size(bare) is (status == 413)


def test_a_refusal_carries_its_status_request_and_outcome() -> None:
    """errors.ServerError: what it is about, not only text (issue 29)."""

    async def run() -> ServerError:
        def server(request: Seen) -> Reply:
            issue = {
                "severity": "error",
                "code": "too-costly",
                "diagnostics": "Bundle exceeds the maximum of 500 entries",
            }
            outcome = {"resourceType": "OperationOutcome", "issue": [issue]}
            return Reply(400, outcome)

        with stub_server(server) as stub:
            async with FhirClient(f"{stub.base}/fhir") as client:
                with pytest.raises(ServerError) as caught:
                    await client.json("POST", "", json={"resourceType": "Bundle", "type": "transaction"})
        return caught.value

    error = asyncio.run(run())
    assert error.status == 400 and error.request.method == "POST"
    assert error.issues == (OutcomeIssue("error", "too-costly", "Bundle exceeds the maximum of 500 entries"),)
    assert str(error).endswith(": HTTP 400: error too-costly: Bundle exceeds the maximum of 500 entries")
    assert refused_for_size(error)


def test_s6_the_store_remembers_the_transaction_size_per_server(tmp_path: Path) -> None:
    from fhiradapter.shell.server.limits import TransactionLimit
    from fhiradapter.shell.server.store import SyncStore

    store = SyncStore(data_dir=tmp_path)
    try:
        assert store.transaction_limit("https://a/fhir") is None
        store.set_transaction_limit("https://a/fhir", TransactionLimit(14, 28), 1)
        store.set_transaction_limit("https://a/fhir", TransactionLimit(7, 14), 2)
        assert store.transaction_limit("https://a/fhir") == TransactionLimit(7, 14)
        assert store.transaction_limit("https://b/fhir") is None
    finally:
        store.close()


def test_s6_sync_with_default_flags_on_the_stock_medplum_router(tmp_path: Path) -> None:
    """The Medplum test server keeps the router's own transaction limits (8 entries once any is conditional,
    50 updates) and advertises transaction: default sync adapts, writes everything once, and remembers."""
    from builders import AS_OF, ROOT
    from fhir_server import load_input, medplum_server, post

    from fhiradapter.shell.common.mappings_io import load_mappings
    from fhiradapter.shell.run.engine import RunRequest
    from fhiradapter.shell.run.pipeline import run_evaluate
    from fhiradapter.shell.server.store import SyncStore
    from fhiradapter.shell.server.sync import SyncOptions, run_sync

    paper = ROOT / "fixtures" / "paper-cohort" / "input"
    mappings, identity = load_mappings()
    run_evaluate(
        RunRequest(
            inputs=(paper,),
            out=tmp_path / "files",
            as_of=AS_OF,
            mappings=mappings,
            mappings_identity=identity,
            report=False,
        )
    )
    files = json.loads((tmp_path / "files" / "results.json").read_text())
    store = SyncStore(data_dir=tmp_path / "data")
    try:
        with medplum_server(tmp_path) as base:
            # The router's limit is real on this server: nine conditional creates in one transaction are refused.
            nine = {**writeback(), "entry": writeback(patients=1, per_patient=9)["entry"][:9]}
            refused = post(base, nine)
            assert refused.status_code == 400 and "too many entries" in refused.text
            load_input(base, paper, chunk=50)
            opts = SyncOptions(
                study="thal-hcc-pilot",
                as_of=AS_OF,
                since="auto",
                dry_run=False,
                work_dir=tmp_path / "runs",
                mappings=mappings,
                mappings_identity=identity,
                standing_rule=standing_rule_all(),
            )
            first = run_sync(FhirClient(base), store, opts)
            assert first.errors == [] and first.conflicts == [] and first.watermark is not None
            assert first.pushed["created"] == first.plan["create"] + first.provenances
            assert first.non_atomic and all(p.startswith("Patient/thal-") for p in first.non_atomic)
            learnt = store.transaction_limit(base)
            assert learnt is not None and learnt.refused_at > 8  # the router takes 8 conditional entries
            assert first.out is not None
            result = json.loads((first.out / "results.json").read_text())
            assert result["subjects"] == files["subjects"] and result["cohort"] == files["cohort"]
            second = run_sync(FhirClient(base), store, opts)
            assert set(second.plan) == {"unchanged"} and not second.pushed and second.errors == []
    finally:
        store.close()


class RefusingProxy:
    """A proxy on a real socket in front of the real server: while ``refusing``, every transaction is answered 413
    (an overloaded gateway); otherwise every request goes through, the server's own URLs made the proxy's."""

    HEADERS = ("content-type", "accept", "prefer", "if-none-exist", "if-match", "authorization")

    def __init__(self, target: str) -> None:
        self.target, self.base, self.refusing = target, "", True
        self.transactions: list[int] = []  # sizes of the transactions let through

    def __call__(self, request: Seen) -> Reply:
        body = json.loads(request.body) if request.body else None
        if isinstance(body, dict) and body.get("resourceType") == "Bundle" and body.get("type") == "transaction":
            if self.refusing:
                issue = {"severity": "error", "code": "too-costly", "diagnostics": "Payload Too Large"}
                return Reply(413, {"resourceType": "OperationOutcome", "issue": [issue]})
            self.transactions.append(len(body["entry"]))
        headers = {k: v for k, v in request.headers.items() if k.lower() in self.HEADERS}
        origin = self.target.removesuffix("/fhir")
        got = httpx.request(request.method, origin + request.path, content=request.body, headers=headers, timeout=60)
        passed = {k: v.replace(self.target, self.base) for k, v in got.headers.items() if k.lower() == "location"}
        return Reply(got.status_code, got.content.replace(self.target.encode(), self.base.encode()), passed)


def test_s6_a_learnt_transaction_limit_is_probed_upward_shown_and_reset(tmp_path: Path) -> None:
    """Issue 32.6: a server that answered 413 to every transaction for a while left the store's limit at 1 entry,
    and every later sync sent each patient as a non-atomic batch. Each sync that writes now tries twice the
    learnt size (up to --chunk); `runs` shows the limit; `runs --reset-limits URL` forgets it."""
    from builders import AS_OF, ROOT
    from fhir_server import load_input, sekmet_server

    paper = ROOT / "fixtures" / "paper-cohort" / "input"
    data = ["--data-dir", str(tmp_path / "data")]
    with sekmet_server(tmp_path) as target:
        load_input(target, paper)
        proxy = RefusingProxy(target)
        with stub_server(proxy) as stub:
            proxy.base = f"{stub.base}/fhir"
            sync = ["sync", "--server", proxy.base, "--study", "thal-hcc-pilot", "--as-of", AS_OF.isoformat()]
            sync += [*data, "--chunk", "4", "--no-progress", "--mappings", str(trusting_mappings(tmp_path / "site"))]
            afp = f"{target}/Observation/thal-03-afp-a1"
            values = [httpx.get(afp, timeout=10).json()["valueQuantity"]["value"], 2100]

            def change() -> None:  # a lab value toggled: thal-03's responses are updated (3 entries)
                obs = httpx.get(afp, timeout=10).json()
                obs["valueQuantity"]["value"] = values[values.index(obs["valueQuantity"]["value"]) - 1]
                assert httpx.put(afp, json=obs, timeout=10).status_code == 200

            first = CliRunner().invoke(main, sync)
            assert first.exit_code == 0, first.output
            assert "were written as a batch (each write conditional, but not atomic)" in first.output
            listed = CliRunner().invoke(main, ["runs", *data])
            assert f"  {proxy.base}: parts of 1 entries, refused at 3 (run 1)" in listed.output, listed.output

            proxy.refusing = False  # the server is healthy again
            sizes = []
            for _run in range(3):
                change()
                again = CliRunner().invoke(main, sync)
                assert again.exit_code == 0, again.output
                sizes.append(re.findall(r"this run tried (parts of \d+ entries|--chunk 4)", again.output))
            # Parts of 1 (a patient of 3 refused) -> 2 (a patient of fewer than 6 entries is tried whole again) ->
            # 4 = --chunk: no limit left, the next run is told nothing. thal-03's 3 entries go as one transaction.
            assert sizes == [["parts of 2 entries"], ["--chunk 4"], []], sizes
            assert proxy.transactions == [3, 3, 3], proxy.transactions
            listed = CliRunner().invoke(main, ["runs", *data, "--json"])
            assert json.loads(listed.output)["transaction_limits"] == []  # recovered: nothing left to cut by
            assert (
                "      transaction limit: found 2 entries, tried none, left none"
                in CliRunner().invoke(main, ["runs", *data]).output
            )

            proxy.refusing = True  # refused again: learnt again, and forgotten on request
            change()
            assert CliRunner().invoke(main, sync).exit_code == 0
            reset = CliRunner().invoke(main, ["runs", *data, "--reset-limits", proxy.base])
            assert reset.exit_code == 0 and "Forgot the transaction limit learnt for" in reset.output, reset.output
            assert "Transaction limits learnt" not in CliRunner().invoke(main, ["runs", *data]).output
            again = CliRunner().invoke(main, ["runs", *data, "--reset-limits", proxy.base])
            assert "No transaction limit was learnt for" in again.output


# ------------------------------------------------------------------------------------- 7. concurrency adapts


def test_s7_the_adaptive_limit_halves_once_per_round_and_recovers_slowly() -> None:
    limit = AdaptiveLimit(8)

    async def go() -> list[int]:
        numbers = []
        for _ in range(8):
            async with limit.slot() as n:
                numbers.append(n)
        return numbers

    numbers = asyncio.run(go())
    for n in numbers:  # eight requests of one round time out together: one cut
        limit.overloaded(n)
    assert int(limit.limit) == 4 and limit.cuts == 1
    asyncio.run(go())
    limit.overloaded(16)  # a request of the next round: a second cut
    assert int(limit.limit) == 2 and limit.lowest == 2
    for _ in range(2):
        limit.answered()
    assert int(limit.limit) == 2  # +1/limit per answer: a slot more per round of answers
    for _ in range(3):
        limit.answered()
    assert int(limit.limit) == 3
    for _ in range(100):
        limit.answered()
    assert limit.limit == 8  # never past --concurrency


def test_s7_a_server_that_answers_503_when_busy_gets_fewer_requests_and_the_push_completes() -> None:
    store = Store()
    in_flight = [0]

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability()
        in_flight[0] += 1
        try:
            await asyncio.sleep(0.005)
            if in_flight[0] > 2:
                return fhir({}, 503)
            return store.single(request)
        finally:
            in_flight[0] -= 1

    summary = run_push(
        handler,
        writeback(patients=20, per_patient=2),
        mode="single",
        settings=ClientSettings(concurrency=8, max_attempts=12, backoff_base_s=0.01, backoff_max_s=0.02),
    )
    assert summary.complete and store.posts == 41
    assert summary.lowest_concurrency <= 2 < summary.concurrency
    assert "requests in flight went down to" in " ".join(summary.notes())


def test_s7_a_single_threaded_server_slower_than_the_timeout_still_gets_every_batch(tmp_path: Path) -> None:
    """Batches of 4 results at 0.25 s each on a server that answers one request at a time, with --timeout 1:
    eight at once time out; the limit halves until the server keeps up, and every write lands once."""
    store = Store()
    lock = __import__("threading").Lock()

    def server(request: Seen) -> Reply:
        if request.path.endswith("/metadata"):
            return Reply(200, json.loads(capability("batch").content))
        if request.method == "GET":
            return Reply(200, json.loads(store.search(httpx.Request("GET", f"{BASE}{request.path[5:]}")).content))
        sent = json.loads(request.body)
        if sent.get("resourceType") == "Bundle":
            time.sleep(0.25)
            with lock:
                entries = [store.apply(e) for e in sent["entry"]]
            return Reply(200, {"resourceType": "Bundle", "type": "batch-response", "entry": entries})
        with lock:
            key = request.headers["If-None-Exist"].split("=", 1)[1]
            answer = store.apply({"request": {"ifNoneExist": f"x={key}"}, "resource": sent})
        return Reply(int(answer["response"]["status"][:3]), {}, {"Location": answer["response"]["location"]})

    bundle = writeback(patients=32, per_patient=2)
    with stub_server(server, serial=True) as stub:

        async def go() -> Any:
            settings = ClientSettings(
                timeout_s=1.0, concurrency=8, retry_budget_s=60, max_attempts=10, backoff_base_s=0.05, backoff_max_s=0.5
            )
            async with FhirClient(f"{stub.base}/fhir", settings=settings) as client:
                return await push(client, bundle, mode="batch", chunk=5)

        summary = asyncio.run(go())
    assert summary.complete, summary.errors
    results = [k for k in store.by_identifier if k.startswith("urn:fhiradapter:result-id")]
    provenances = [w for w in summary.written if w[1] == "Provenance"]
    assert len(results) == 64 and store.posts == 64 + len(provenances) and summary.parts == len(provenances)
    assert summary.lowest_concurrency < 8


# ------------------------------------------------------------------------------------- 8. a deadline per request


def test_s8_timeout_bounds_the_whole_request_not_each_read(tmp_path: Path) -> None:
    body = json.dumps({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}).encode()
    with drip_server(body) as base:
        args = ["pull", "--server", f"{base}/fhir", "--study", "s", "--out", str(tmp_path / "o")]
        started = time.monotonic()
        result = CliRunner().invoke(main, [*args, "--timeout", "2", "--retry-budget", "1"])
        took = time.monotonic() - started
    assert result.exit_code == 13, result.output
    assert "no complete answer within 2 s" in result.output and took < 8, (took, result.output)


def test_s8_a_download_must_keep_up_a_minimum_rate(tmp_path: Path) -> None:
    async def go(base: str) -> None:
        settings = ClientSettings(timeout_s=1.5, retry_budget_s=0.5, max_attempts=1)
        async with FhirClient(base, settings=settings) as client:
            await client.download(f"{base}/file.ndjson", tmp_path / "f")

    with drip_server(b"x" * 200, seconds_per_byte=0.1) as base:
        started = time.monotonic()
        with pytest.raises(ServerError, match=r"did not arrive at 64 KiB/s or more after 1.5 s"):
            asyncio.run(go(base))
        assert time.monotonic() - started < 6


# ------------------------------------------------------------------------------------- 9. paging ends


def paging(
    next_url: Callable[[int], str | None],
    ids: Callable[[int], list[str]],
    total: int | None = None,
    stop_after: int = 300,
) -> tuple[Callable[[httpx.Request], httpx.Response], list[int]]:
    calls = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        if calls[0] > stop_after:  # what a server that never ends would do to a client that never stops
            raise RuntimeError("the client kept paging")
        n = calls[0]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"resource": {"resourceType": "Observation", "id": i}, "search": {"mode": "match"}} for i in ids(n)
            ],
        }
        if total is not None:
            bundle["total"] = total
        link = next_url(n)
        if link:
            bundle["link"] = [{"relation": "next", "url": link}]
        return fhir(bundle)

    return handler, calls


def search_all(handler: Callable[..., Any], **settings: Any) -> list[str]:
    async def go() -> list[str]:
        async with client_for(handler, settings=ClientSettings(**settings)) as client:
            return [r["id"] async for r in client.search("Observation", [])]

    return asyncio.run(go())


def test_s9_a_cursor_that_changes_every_page_but_brings_nothing_new_is_stopped() -> None:
    handler, calls = paging(lambda n: f"{BASE}/Observation?cursor={n}", lambda n: ["a", "b"])
    with pytest.raises(ServerError, match="page 2: brings no resource not seen on an earlier page"):
        search_all(handler)
    assert calls[0] == 2


def test_s9_more_pages_than_the_total_allows_are_stopped() -> None:
    handler, calls = paging(lambda n: f"{BASE}/Observation?cursor={n}", lambda n: [f"o{n}a", f"o{n}b"], total=10)
    with pytest.raises(ServerError, match=r"has 10 match\(es\), which 5 page\(s\) hold, yet its next links run on"):
        search_all(handler)
    assert calls[0] == 8  # 5 pages, and a margin of 2 + a quarter


def test_s9_later_pages_smaller_than_the_first_do_not_stop_an_honest_search() -> None:
    """Some servers give fewer than _count on later pages: the pages expected follow the smallest page seen."""
    sizes = [10, 3, 3, 3, 3, 3, 3, 3, 3]  # 34 matches

    def ids(n: int) -> list[str]:
        start = sum(sizes[: n - 1])
        return [f"o{i}" for i in range(start, start + sizes[n - 1])]

    handler, _ = paging(lambda n: f"{BASE}/Observation?p={n}" if n < len(sizes) else None, ids, total=34)
    assert len(search_all(handler)) == 34


def test_s9_a_search_without_total_stops_at_the_hard_cap() -> None:
    handler, calls = paging(lambda n: f"{BASE}/Observation?cursor={n}", lambda n: [f"o{n}"])
    with pytest.raises(ServerError, match="more than 50 pages; paging stopped"):
        search_all(handler, max_pages=50)
    assert calls[0] == 50


def test_s9_an_honest_search_reads_every_page() -> None:
    handler, _ = paging(
        lambda n: f"{BASE}/Observation?cursor={n}" if n < 5 else None, lambda n: [f"o{n}a", f"o{n}b"], total=10
    )
    assert search_all(handler) == [f"o{n}{x}" for n in range(1, 6) for x in "ab"]


def test_s9_max_pages_is_an_option_of_every_server_command() -> None:
    for command in ("pull", "push", "sync"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert "--max-pages" in result.output and "--trust-origin" in result.output
        assert "--allow-insecure-http" in result.output


def test_a_server_that_makes_the_cli_wait_is_said_once(tmp_path: Path) -> None:
    """A newcomer pushed to a server that did not answer: 49 s of silence. The first wait is now said, with
    why (status or error type, never a body) and for how long it may go on; later waits are not repeated."""
    seen = Counter[str]()

    def server(request: Seen) -> Reply:
        seen[request.path] += 1
        if request.path.endswith("/metadata") and seen[request.path] <= 2:
            return Reply(503, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]})
        if request.path.endswith("/metadata"):
            return Reply(200, json.loads(capability("transaction").content))
        return Reply(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": []})

    bundle = tmp_path / "writeback.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": []}))
    approve_bundle(bundle)
    with stub_server(server) as stub:
        result = CliRunner().invoke(main, ["push", "--server", f"{stub.base}/fhir", str(bundle)])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "is not answering as it should" in line]
    assert notes == [
        f"note: {stub.base}/fhir is not answering as it should (HTTP 503): retrying, "
        "for up to 120 s a request (Ctrl-C stops)"
    ]

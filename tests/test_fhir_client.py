"""The FHIR client's fault paths, on ``httpx.MockTransport``: what to do next for each kind of failure.

429 with Retry-After, 503 storms, a connection dropped mid-page, a 401 that needs re-authentication, a 412
conflict on push, a malformed page, a 400 that must not be retried, a `next` link to another host, a server
that is not R4. Waits are recorded, not slept. Each test checks that nothing is duplicated or lost.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
import jwt
import pytest
from builders import approve_bundle, standing_rule_all
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from json_at import objs

from fhiradapter.core.json_types import JsonObject
from fhiradapter.errors import OutcomeIssue, ServerError, ServerRequest
from fhiradapter.shell.server.auth import BearerAuth, SmartBackendAuth
from fhiradapter.shell.server.fhir_client import Capability, ClientSettings, FhirClient, retry_after_s
from fhiradapter.shell.server.pull import PullSummary
from fhiradapter.shell.server.push import push

BASE = "https://fhir.test/r4"
FAST = ClientSettings(retry_budget_s=60, max_attempts=6, backoff_base_s=0.5, backoff_max_s=8)
T = TypeVar("T")


def fhir(body: dict[str, Any], status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, content=json.dumps(body).encode(), headers={"Content-Type": "application/fhir+json", **headers}
    )


def outcome(text: str, status: int, **headers: str) -> httpx.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }
    return fhir(body, status, **headers)


def page(ids: list[str], next_url: str | None) -> httpx.Response:
    links = [{"relation": "self", "url": "x"}] + ([{"relation": "next", "url": next_url}] if next_url else [])
    return fhir(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": links,
            "entry": [{"resource": {"resourceType": "Observation", "id": i}, "search": {"mode": "match"}} for i in ids],
        }
    )


def run(
    handler: Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]],
    coro: Callable[[FhirClient], Awaitable[T]],
    *,
    settings: ClientSettings = FAST,
    auth: httpx.Auth | None = None,
) -> tuple[T, list[float], FhirClient]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def main() -> tuple[T, FhirClient]:
        client = FhirClient(BASE, auth=auth, settings=settings, transport=httpx.MockTransport(handler), sleep=sleep)
        async with client:
            return await coro(client), client

    result, client = asyncio.run(main())
    return result, waits, client


async def collect(client: FhirClient) -> list[str]:
    return [r["id"] async for r in client.search("Observation", [("subject", "Patient/p1")])]


def test_429_waits_as_long_as_retry_after_says() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url)
        if len(calls) == 1:
            return outcome("slow down", 429, **{"Retry-After": "3"})
        return page(["a", "b"], None)

    ids, waits, client = run(handler, collect)
    assert ids == ["a", "b"] and waits == [3.0] and client.retries == 1


def test_retry_after_as_an_http_date() -> None:
    when = datetime(2030, 1, 1, 12, 0, 10, tzinfo=UTC)
    response = httpx.Response(503, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)})
    assert retry_after_s(response, now=(when - timedelta(seconds=10)).timestamp()) == pytest.approx(10)
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "soon"})) is None


def test_a_503_storm_backs_off_exponentially_then_fails_with_the_servers_text() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return outcome("database maintenance", 503)

    with pytest.raises(ServerError) as err:
        run(handler, collect)
    assert len(calls) == FAST.max_attempts
    assert "HTTP 503" in str(err.value) and "database maintenance" in str(err.value)
    assert "Patient/p1" not in str(err.value)  # the query (which names a patient) is not echoed


def test_backoff_has_jitter_and_grows() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return outcome("busy", 503) if len(calls) < 6 else page(["a"], None)

    _ids, waits, _ = run(handler, collect)
    ceilings = [min(FAST.backoff_max_s, FAST.backoff_base_s * 2**n) for n in range(len(waits))]
    assert len(waits) == 5 and all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True))


def test_a_connection_dropped_mid_page_is_retried_and_nothing_is_lost_or_doubled() -> None:
    seen: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        key = str(request.url)
        seen[key] = seen.get(key, 0) + 1
        if "page=2" in key:
            if seen[key] == 1:
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
            return page(["c", "d"], f"{BASE}/Observation?page=3")
        if "page=3" in key:
            return page(["e"], None)
        return page(["a", "b"], f"{BASE}/Observation?page=2")

    ids, waits, client = run(handler, collect)
    assert ids == ["a", "b", "c", "d", "e"] and len(waits) == 1 and client.retries == 1


def test_a_400_is_not_retried_and_shows_the_outcome() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("Prefer"))
        return outcome("Unknown search parameter 'subjct'", 400)

    with pytest.raises(ServerError, match="Unknown search parameter") as err:
        run(handler, collect)
    assert calls == ["handling=strict"] and err.value.status == 400


def test_a_next_link_that_loops_is_stopped() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return page(["a"], f"{BASE}/Observation?page=2")

    with pytest.raises(ServerError, match="repeats an earlier page"):
        run(handler, collect)


def test_search_entries_without_a_type_or_id_are_reported_not_kept() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        good = {"resourceType": "Observation", "id": "o1"}
        entries: list[Any] = [
            {"resource": good},
            {"resource": {"resourceType": "Observation"}},  # no id
            {"resource": {"resourceType": "Observation", "id": ""}},
            {"resource": {"id": "x"}},  # no type
            {"fullUrl": "urn:uuid:1"},  # no resource
            "not an entry",
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},  # not a match
        ]
        return fhir({"resourceType": "Bundle", "type": "searchset", "entry": entries})

    ids, _, client = run(handler, collect)
    assert ids == ["o1"]
    assert client.skipped == [
        "Observation search page 1 entry 2: Observation without id",
        "Observation search page 1 entry 3: Observation without id",
        "Observation search page 1 entry 4: resource without resourceType",
        "Observation search page 1 entry 5: no resource",
        "Observation search page 1 entry 6: no resource",
    ]


def test_a_malformed_page_is_an_error_naming_the_page() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "page=2" in str(request.url):
            return httpx.Response(200, content=b"<html>proxy error</html>")
        return page(["a"], f"{BASE}/Observation?page=2")

    with pytest.raises(ServerError, match="search page 2: the server's answer is not JSON"):
        run(handler, collect)


@pytest.mark.parametrize(
    ("link", "where"),
    [
        ("https://elsewhere.example/r4/Observation?page=2", "https://elsewhere.example"),
        ("http://fhir.test/r4/Observation?page=2", "http://fhir.test"),  # a proxy that ends TLS: not sent in clear
        ("https://fhir.test:8443/r4/Observation?page=2", "https://fhir.test:8443"),
    ],
)
def test_a_next_link_to_another_host_is_not_followed(link: str, where: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert str(request.url).startswith(f"{BASE}/")
        return page(["a"], link)

    expected = f"Observation search page 1: the next link points to {where}, not to --server (https://fhir.test); "
    with pytest.raises(ServerError) as caught:
        run(handler, collect)
    assert str(caught.value).startswith(expected + "not followed. If that is the same server behind a proxy")


@pytest.mark.parametrize(("version", "ok"), [("4.0.1", True), ("4.0.0", True), ("5.0.0", False), ("3.0.2", False)])
def test_only_fhir_r4_servers_are_accepted(version: str, ok: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return fhir({"resourceType": "CapabilityStatement", "fhirVersion": version, "rest": [{"mode": "server"}]})

    async def cap(client: FhirClient) -> Capability:
        return await client.capabilities()

    if ok:
        assert run(handler, cap)[0].fhir_version == version
    else:
        with pytest.raises(ServerError, match="needs FHIR R4"):
            run(handler, cap)


def test_a_404_from_metadata_names_the_server_and_asks_about_the_base_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="Not Found")

    async def cap(client: FhirClient) -> Capability:
        return await client.capabilities()

    with pytest.raises(ServerError, match=rf"^{BASE}: GET metadata: HTTP 404.*is {BASE} the server's FHIR base URL"):
        run(handler, cap)


def test_an_unreachable_server_is_named_with_the_retry_budget() -> None:
    calls = Counter[str]()

    def handler(request: httpx.Request) -> httpx.Response:
        calls["sent"] += 1
        raise httpx.ConnectError("All connection attempts failed")

    async def cap(client: FhirClient) -> Capability:
        return await client.capabilities()

    message = rf"^{BASE}: GET metadata: ConnectError \(All connection attempts failed\), after retrying for up to 60 s$"
    with pytest.raises(ServerError, match=message):
        run(handler, cap)
    assert calls["sent"] == FAST.max_attempts  # retried, then given up


def test_a_refused_server_certificate_is_not_retried_and_says_what_to_do() -> None:
    import ssl

    calls = Counter[str]()

    def handler(request: httpx.Request) -> httpx.Response:
        calls["sent"] += 1
        refused = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
        refused.verify_message = "certificate has expired"
        raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]") from refused

    async def cap(client: FhirClient) -> Capability:
        return await client.capabilities()

    message = r"TLS certificate was not accepted \(certificate has expired\); .* --ca-bundle FILE"
    with pytest.raises(ServerError, match=message):
        run(handler, cap)
    assert calls["sent"] == 1  # the same certificate fails the same way: no retry


# ---------------------------------------------------------------------------------------------- auth


def rsa_pem() -> tuple[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode(), key.public_key()


def test_smart_assertion_is_signed_rs384_with_the_required_claims() -> None:
    pem, public = rsa_pem()
    auth = SmartBackendAuth("client-1", f"{BASE}/auth/token", pem, kid="k1", clock=lambda: 1_000_000.0)
    token = auth.assertion()
    assert jwt.get_unverified_header(token) == {"alg": "RS384", "kid": "k1", "typ": "JWT"}
    claims = jwt.decode(
        token, public, algorithms=["RS384"], audience=f"{BASE}/auth/token", options={"verify_exp": False}
    )
    assert claims["iss"] == claims["sub"] == "client-1" and claims["exp"] - claims["iat"] == 300
    assert auth.assertion() != token  # a fresh jti each time
    assert pem not in repr(auth)


def test_an_ec_key_signs_es384() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    auth = SmartBackendAuth("c", f"{BASE}/auth/token", pem.decode())
    assert auth.alg == "ES384" and jwt.get_unverified_header(auth.assertion())["alg"] == "ES384"


def smart_server(revoke_after: int | None = None) -> tuple[Callable[[httpx.Request], httpx.Response], dict[str, Any]]:
    state: dict[str, Any] = {"issued": [], "api": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/auth/token"):
            form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
            assert form["grant_type"] == "client_credentials"
            token = f"tok{len(state['issued']) + 1}"
            state["issued"].append(token)
            return httpx.Response(200, json={"access_token": token, "expires_in": 300, "token_type": "bearer"})
        state["api"] += 1
        current = state["issued"][-1] if state["issued"] else None
        if request.headers.get("Authorization") != f"Bearer {current}" or (
            revoke_after is not None and state["api"] == revoke_after
        ):
            return outcome("token expired", 401)
        return page(["a"], None)

    return handler, state


def test_a_401_gets_a_new_token_and_one_retry() -> None:
    pem, _ = rsa_pem()
    handler, state = smart_server(revoke_after=2)
    auth = SmartBackendAuth("c", f"{BASE}/auth/token", pem)

    async def twice(client: FhirClient) -> list[list[str]]:
        return [await collect(client), await collect(client)]

    result, _, _ = run(handler, twice, auth=auth)
    assert result == [["a"], ["a"]] and state["issued"] == ["tok1", "tok2"]


def test_a_token_is_reused_until_it_nears_expiry() -> None:
    pem, _ = rsa_pem()
    handler, state = smart_server()
    now = [1000.0]
    auth = SmartBackendAuth("c", f"{BASE}/auth/token", pem, clock=lambda: now[0])

    async def spaced(client: FhirClient) -> None:
        await collect(client)
        now[0] += 200  # 300 s token: still 100 s left, more than the 60 s margin
        await collect(client)
        now[0] += 50  # 50 s left: refresh before use
        await collect(client)

    run(handler, spaced, auth=auth)
    assert state["issued"] == ["tok1", "tok2"]


def test_a_refused_token_request_is_an_error_without_secrets() -> None:
    pem, _ = rsa_pem()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "invalid_client", "error_description": "unknown kid"})

    with pytest.raises(ServerError, match=r"SMART token request .* refused: HTTP 401: unknown kid") as err:
        run(handler, collect, auth=SmartBackendAuth("c", f"{BASE}/auth/token", pem))
    assert "BEGIN" not in str(err.value)
    assert err.value.request == ServerRequest("POST", f"{BASE}/auth/token") and err.value.status == 401


def test_a_static_token_rejected_with_401_fails_once() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["Authorization"])
        return outcome("invalid token", 401)

    with pytest.raises(ServerError, match="HTTP 401") as err:
        run(handler, collect, auth=BearerAuth("s3cret-token"))
    assert calls == ["Bearer s3cret-token"] and "s3cret" not in str(err.value)


# ---------------------------------------------------------------------------------------------- push


def capability(transaction: bool = True) -> httpx.Response:
    interactions = [{"code": "transaction"}, {"code": "batch"}] if transaction else [{"code": "batch"}]
    return fhir(
        {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [{"interaction": interactions}]}
    )


BUNDLE: JsonObject = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:1",
            "resource": {"resourceType": "Observation", "status": "final"},
            "request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=urn:x|1"},
        },
        {
            "fullUrl": f"{BASE}/ResearchSubject/rs1",
            "resource": {"resourceType": "ResearchSubject", "id": "rs1", "status": "on-study"},
            "request": {"method": "PUT", "url": "ResearchSubject/rs1", "ifMatch": 'W/"1"'},
        },
    ],
}


def test_push_a_412_conflict_is_reported_and_not_retried() -> None:
    posts = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability()
        posts.append(json.loads(request.content))
        return outcome("version conflict on ResearchSubject/rs1", 412)

    summary, _, _ = run(handler, lambda c: push(c, BUNDLE))
    assert len(posts) == 1 and summary.outcomes == {"conflict": 2}
    assert "none of them written" in summary.conflicts[0] and "version conflict" in summary.conflicts[0]


def test_push_counts_each_entry_from_its_status() -> None:
    prefer = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return capability()
        prefer.append(request.headers.get("Prefer"))
        # return=minimal: the entries carry a status and no resource, and that is all push reads
        return fhir(
            {
                "resourceType": "Bundle",
                "type": "transaction-response",
                "entry": [{"response": {"status": "200 OK"}}, {"response": {"status": "200"}}],
            }
        )

    summary, _, _ = run(handler, lambda c: push(c, BUNDLE))
    assert summary.mode == "transaction" and summary.outcomes == {"unchanged": 1, "updated": 1}
    assert prefer == ["return=minimal"]


def test_a_batch_goes_without_its_provenance_which_follows_naming_what_was_written() -> None:
    """A batch's entries may not refer to each other: the Provenance is sent after it, with server ids."""
    provenance: JsonObject = {
        "fullUrl": "urn:uuid:p",
        "resource": {
            "resourceType": "Provenance",
            "target": [{"reference": "urn:uuid:1"}, {"reference": f"{BASE}/ResearchSubject/rs1"}],
        },
        "request": {"method": "POST", "url": "Provenance", "ifNoneExist": "_tag=urn:fhiradapter:run|r1"},
    }
    batches: list[dict[str, Any]] = []
    posted: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return fhir(
                {
                    "resourceType": "CapabilityStatement",
                    "fhirVersion": "4.0.1",
                    "rest": [{"interaction": [{"code": "batch"}]}],
                }
            )
        body = json.loads(request.content)
        if body["resourceType"] == "Bundle":
            batches.append(body)
            refused = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid", "diagnostics": "status: unknown code"}],
            }
            return fhir(
                {
                    "resourceType": "Bundle",
                    "type": "batch-response",
                    "entry": [
                        {"response": {"status": "201 Created", "location": "Observation/o1/_history/1"}},
                        {"response": {"status": "400 Bad Request", "outcome": refused}},
                    ],
                }
            )
        posted.append(body)
        return fhir({}, 201, Location=f"{BASE}/Provenance/pv1/_history/1")

    bundle: JsonObject = {**BUNDLE, "entry": [*objs(BUNDLE, "entry"), provenance]}
    summary, _, _ = run(handler, lambda c: push(c, bundle))
    assert summary.mode == "batch" and summary.outcomes == {"created": 2, "error": 1}
    (batch,) = batches
    assert [e["request"]["url"] for e in batch["entry"]] == ["Observation", "ResearchSubject/rs1"]
    (sent,) = posted  # the refused ResearchSubject update is not named
    assert sent["resourceType"] == "Provenance" and sent["target"] == [{"reference": "Observation/o1"}]
    assert summary.errors == ["PUT ResearchSubject/rs1: HTTP 400: error invalid: status: unknown code"]


def test_push_entry_by_entry_when_the_server_has_no_transaction_or_batch() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return fhir({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [{}]})
        seen.append(
            (request.method, request.url.path, request.headers.get("If-None-Exist"), request.headers.get("If-Match"))
        )
        assert request.headers.get("Prefer") == "return=minimal"
        return (
            fhir({"resourceType": "Observation", "id": "x"}, 201) if request.method == "POST" else outcome("stale", 412)
        )

    summary, _, _ = run(handler, lambda c: push(c, BUNDLE))
    assert summary.mode == "single" and summary.outcomes == {"created": 1, "conflict": 1}
    assert sorted(seen) == [  # sent side by side: in any order
        ("POST", "/r4/Observation", "identifier=urn:x|1", None),
        ("PUT", "/r4/ResearchSubject/rs1", None, 'W/"1"'),
    ]


@pytest.mark.parametrize("command", ["pull", "push", "sync"])
def test_secrets_never_show_in_help(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from fhiradapter.cli import main

    monkeypatch.setenv("FHIRADAPTER_TOKEN", "tok-very-secret")
    monkeypatch.setenv("FHIRADAPTER_SMART_KEY", "-----BEGIN PRIVATE KEY----- secret")
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "FHIRADAPTER_TOKEN" in result.output
    assert "tok-very-secret" not in result.output and "BEGIN PRIVATE" not in result.output


def test_a_server_url_that_is_not_http_is_refused() -> None:
    from click.testing import CliRunner

    from fhiradapter.cli import main

    result = CliRunner().invoke(main, ["pull", "--server", "ftp://x", "--study", "s", "--out", "o"])
    assert result.exit_code == 10 and "http(s) URL" in result.output


def test_patients_per_search_is_one_for_a_whole_pull_twenty_for_an_incremental_one() -> None:
    from fhiradapter.shell.server.pull import patients_per_search

    assert patients_per_search(None) == 1
    assert patients_per_search("2026-11-30T00:00:00Z") == 20


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "0 is not from 1 to 100"), ("101", "101 is not from 1 to 100"), ("some", "'some' is neither auto nor")],
)
def test_patients_per_search_takes_auto_or_a_number_from_1_to_100(value: str, message: str) -> None:
    from click.testing import CliRunner

    from fhiradapter.cli import main

    args = ["pull", "--server", "http://127.0.0.1:9/fhir", "--study", "s", "--out", "o"]
    result = CliRunner().invoke(main, [*args, "--patients-per-search", value])
    assert result.exit_code == 2 and "--patients-per-search" in result.output and message in result.output


def test_a_store_url_with_a_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fhiradapter.cli import main

    args = ["sync", "--server", "http://127.0.0.1:9/fhir", "--study", "s", "--as-of", "2005-03-31"]
    store = "postgresql://registrar:s3cret-pw@127.0.0.1:5432/sync"
    result = CliRunner().invoke(main, [*args, "--data-dir", str(tmp_path), "--store", store])
    assert result.exit_code == 10 and "PGPASSWORD" in result.output
    assert "s3cret-pw" not in result.output


def test_an_unreachable_store_says_why() -> None:
    from fhiradapter.errors import TargetError
    from fhiradapter.shell.server.store import SyncStore

    with pytest.raises(TargetError, match=r"cannot open the sync store: OperationalError: .*refused"):
        SyncStore("postgresql://registrar@127.0.0.1:1/sync")  # nothing listens on port 1


def test_deletions_count_only_a_resources_latest_history_event() -> None:
    from fhiradapter.shell.server.sync import _deletions

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/_history") and request.url.params["_since"] == "2024-01-01T00:00:00Z"
        entries = [  # newest first, as FHIR history is ordered
            {
                "request": {"method": "POST", "url": "Observation"},
                "resource": {"resourceType": "Observation", "id": "a"},
            },
            {"request": {"method": "DELETE", "url": "Observation/a"}},
            {"request": {"method": "DELETE", "url": "Observation/b"}},
            {
                "request": {"method": "PUT", "url": "Observation/b"},
                "resource": {"resourceType": "Observation", "id": "b"},
            },
        ]
        return fhir({"resourceType": "Bundle", "type": "history", "entry": entries})

    gone, _, _ = run(handler, lambda c: _deletions(c, "2024-01-01T00:00:00Z"))
    assert gone == [("Observation", "b")]  # a was deleted and then created again


# ---------------------------------------------------------------------------------------------- pull


class ListSink:
    def __init__(self) -> None:
        self.resources: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    def add(self, resource: dict[str, Any]) -> None:
        self.resources.append(resource)
        self.counts[resource["resourceType"]] += 1


class StudyServer:
    """A study of three patients on a mock server that answers after a pause, counting requests in flight.

    AdverseEvent has no patient search (read whole and filtered); every MedicationStatement references
    Medication/m1, and p2's also Medication/m2.
    """

    CAP: ClassVar[dict[str, Any]] = {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": "ResearchSubject", "searchParam": [{"name": "study"}]},
                    {"type": "Observation", "searchParam": [{"name": "subject"}]},
                    {"type": "MedicationStatement", "searchParam": [{"name": "subject"}]},
                    {"type": "Condition", "searchParam": [{"name": "subject"}]},
                    {"type": "Consent", "searchParam": [{"name": "patient"}]},
                    {"type": "BodyStructure", "searchParam": [{"name": "patient"}]},
                    {"type": "AdverseEvent", "searchParam": [{"name": "date"}]},
                ],
            }
        ],
    }
    PATIENTS = ("p1", "p2", "p3")

    def __init__(
        self, fail: str | None = None, extra_subjects: tuple[dict[str, Any], ...] = (), no_since: bool = False
    ) -> None:
        self.fail = fail  # a request path + query that answers 400
        self.no_since = no_since  # searches with _lastUpdated answer 400, as a server without it would
        self.extra_subjects = extra_subjects  # more ResearchSubjects of the study, as given
        self.in_flight = 0
        self.most_in_flight = 0
        self.requests: Counter[str] = Counter()
        self.active: list[str] = []  # paths being answered
        self.alongside: dict[str, set[str]] = {}  # path -> the other paths in flight when it was answered

    @staticmethod
    def bundle(resources: list[dict[str, Any]]) -> httpx.Response:
        entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
        return fhir({"resourceType": "Bundle", "type": "searchset", "entry": entries})

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        before = set(self.active)
        self.active.append(request.url.path)
        try:
            await asyncio.sleep(0.01)
            self.alongside[request.url.path] = (before | set(self.active)) - {request.url.path}
            return self.answer(request)
        finally:
            self.in_flight -= 1
            self.active.remove(request.url.path)

    def answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/r4/")
        query = dict(request.url.params)
        self.requests[path] += 1
        if self.fail and self.fail == f"{path}?{request.url.query.decode()}".split("&_count")[0]:
            return outcome("unknown code", 400)
        if self.no_since and "_lastUpdated" in query:
            return outcome(f"Unknown search parameter '_lastUpdated' for {path}", 400)
        subject = str(query.get("subject") or query.get("patient") or "").removeprefix("Patient/")
        if path == "metadata":
            return fhir(self.CAP)
        if path == "ResearchStudy/s1":
            return fhir({"resourceType": "ResearchStudy", "id": "s1"})
        if path.startswith("ResearchStudy/"):
            return outcome("not found", 404)
        if path == "ResearchSubject":
            assert query["study"] == "ResearchStudy/s1"
            return self.bundle(
                [
                    {
                        "resourceType": "ResearchSubject",
                        "id": f"rs-{p}",
                        "study": {"reference": "ResearchStudy/s1"},
                        "individual": {"reference": f"Patient/{p}"},
                    }
                    for p in self.PATIENTS
                ]
                + list(self.extra_subjects)
            )
        if path.startswith("Patient/"):
            return fhir({"resourceType": "Patient", "id": path.split("/")[1]})
        if path == "Observation":
            return self.bundle(
                [
                    {
                        "resourceType": "Observation",
                        "id": f"{subject}-o{n}",
                        "subject": {"reference": f"Patient/{subject}"},
                    }
                    for n in (1, 2)
                ]
            )
        if path == "MedicationStatement":
            meds = ["m1", "m2"] if subject == "p2" else ["m1"]
            return self.bundle(
                [
                    {
                        "resourceType": "MedicationStatement",
                        "id": f"{subject}-{m}",
                        "subject": {"reference": f"Patient/{subject}"},
                        "medicationReference": {"reference": f"Medication/{m}"},
                    }
                    for m in meds
                ]
            )
        if path == "AdverseEvent":
            return self.bundle(
                [
                    {"resourceType": "AdverseEvent", "id": f"ae-{p}", "subject": {"reference": f"Patient/{p}"}}
                    for p in ("p1", "outsider")
                ]
            )
        if path.startswith("Medication/"):
            return fhir({"resourceType": "Medication", "id": path.split("/")[1]})
        return self.bundle([])  # Condition, Consent, BodyStructure: none


def pull_study(
    server: StudyServer, study: str, concurrency: int = 8, since: str | None = None
) -> tuple[PullSummary, ListSink, list[int]]:
    from fhiradapter.shell.server.pull import pull_into

    sink, progress = ListSink(), list[int]()

    async def go(client: FhirClient) -> PullSummary:
        cap = await client.capabilities()
        return await pull_into(client, cap, study, sink, since=since, progress=progress.append)

    settings = ClientSettings(concurrency=concurrency, retry_budget_s=5, max_attempts=2)
    summary = run(lambda r: server(r), go, settings=settings)[0]
    return summary, sink, progress


def test_pull_reads_each_patients_types_each_medication_once_and_keeps_every_slot_busy() -> None:
    server = StudyServer()
    summary, sink, progress = pull_study(server, "s1", concurrency=8)
    assert summary.patients == 3 and sum(progress) == 3
    assert sink.counts == {
        "ResearchStudy": 1,
        "ResearchSubject": 3,
        "Patient": 3,
        "Observation": 6,
        "MedicationStatement": 4,
        "AdverseEvent": 1,  # the outsider's is left out
        "Medication": 2,
    }
    assert server.requests["Medication/m1"] == 1 and server.requests["Medication/m2"] == 1
    assert server.requests["AdverseEvent"] == 1  # read whole once, not per patient
    assert summary.warnings and "AdverseEvent" in summary.warnings[0]
    # Requests are queued one by one, not patient by patient: 3 patients keep all 8 slots busy.
    assert server.most_in_flight == 8
    # The study, named by id, is read together with its subjects' search (one round trip fewer).
    assert "/r4/ResearchStudy/s1" in server.alongside["/r4/ResearchSubject"]


def test_a_search_for_several_patients_whose_pages_run_on_is_split_into_their_own_searches() -> None:
    """An incremental pull asks for 20 patients per search; a long chain of pages is read patient by patient."""
    from fhiradapter.shell.server.pull import pull_into

    seen: list[str] = []

    def resources(rtype: str, patient: str) -> list[dict[str, Any]]:
        ref = {"reference": f"Patient/{patient}"}
        return [{"resourceType": rtype, "id": f"{patient}-{rtype}-{n}", "subject": ref} for n in range(3)]

    def no_id(rtype: str) -> dict[str, Any]:  # unusable: reported where it is kept, once
        return {"resourceType": rtype, "subject": {"reference": "Patient/p1"}}

    def page(entries: list[dict[str, Any]], next_page: int | None, rtype: str) -> httpx.Response:
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        bundle["entry"] = [{"resource": r} for r in entries]
        if next_page:
            bundle["link"] = [{"relation": "next", "url": f"{BASE}/{rtype}?page={next_page}"}]
        return fhir(bundle)

    def handler(request: httpx.Request) -> httpx.Response:
        path, query = request.url.path.removeprefix("/r4/"), dict(request.url.params)
        seen.append(f"{path}?{request.url.query.decode()}")
        if path == "metadata":
            return fhir(StudyServer.CAP)
        if path == "ResearchStudy/s1":
            return fhir({"resourceType": "ResearchStudy", "id": "s1"})
        if path == "ResearchSubject":
            return StudyServer.bundle(
                [
                    {"resourceType": "ResearchSubject", "id": f"rs-{p}", "individual": {"reference": f"Patient/{p}"}}
                    for p in StudyServer.PATIENTS
                ]
            )
        if path == "Patient":
            return StudyServer.bundle([{"resourceType": "Patient", "id": p} for p in query["_id"].split(",")])
        if path in ("Observation", "Condition") and "page" in query:  # a grouped search's later pages
            n = int(query["page"])
            assert not (path == "Observation" and n > 2), "the grouped Observation search paged on past 2 pages"
            if path == "Condition":  # a chain of two pages ends: kept, not split
                rest = [r for p in StudyServer.PATIENTS for r in resources(path, p)][4:]
                return page([*rest, no_id(path)], None, path)
            more = {"resourceType": path, "id": f"page-{n}", "subject": {"reference": "Patient/p1"}}
            return page([more], n + 1, path)  # pages without end (each with a resource of its own)
        if path in ("Observation", "Condition"):
            patients = [p.removeprefix("Patient/") for p in query["subject"].split(",")]
            if len(patients) == 1:
                own = resources(path, patients[0])
                return StudyServer.bundle([*own, no_id(path)] if patients[0] == "p1" and path == "Observation" else own)
            first = [r for p in patients for r in resources(path, p)][:4]  # 9 in all: 4 a page
            return page([*first, no_id(path)] if path == "Observation" else first, 2, path)
        return StudyServer.bundle([])

    sink, progress = ListSink(), list[int]()

    async def go(client: FhirClient) -> PullSummary:
        cap = await client.capabilities()
        return await pull_into(client, cap, "s1", sink, since="2026-11-30T00:00:00Z", progress=progress.append)

    summary = run(handler, go, settings=ClientSettings(concurrency=4))[0]
    assert summary.per_search == 20 and summary.split == 1
    everyone = {f"{p}-{t}-{n}" for p in StudyServer.PATIENTS for n in range(3) for t in ("Observation", "Condition")}
    clinical = [r["id"] for r in sink.resources if r["resourceType"] in ("Observation", "Condition")]
    assert sorted(clinical) == sorted(everyone)  # each once
    assert progress == [3]  # the three patients count once all their searches are done
    observations = [q for q in seen if q.startswith("Observation?")]
    grouped = [q for q in observations if "subject=Patient%2Fp1%2CPatient%2Fp2%2CPatient%2Fp3" in q]
    single = sorted(q.split("&")[0] for q in observations if q.startswith("Observation?subject=") and q not in grouped)
    assert len(grouped) == 1 and "Observation?page=2" in observations  # two pages read (3 patients: at least 2)
    assert single == [f"Observation?subject=Patient%2F{p}" for p in StudyServer.PATIENTS]
    assert all("_lastUpdated=gt2026-11-30T00%3A00%3A00Z" in q for q in observations if "subject=" in q)
    assert not [q for q in seen if q.startswith("Condition?subject=Patient%2Fp1&")]  # its chain ended: not split
    # The id-less Observation on the set-aside page is reported by p1's own search only; the kept chain's once.
    (unusable,) = [w for w in summary.warnings if "unusable" in w]
    assert unusable.startswith("2 search entry(ies) unusable, skipped: ")
    assert "Observation search page 1 entry 4: Observation without id" in unusable
    assert "Condition search page 2 entry 6: Condition without id" in unusable


def test_pull_reports_subjects_that_name_no_patient_here() -> None:
    extra = (
        {"resourceType": "ResearchSubject", "id": "rs-none"},
        {"resourceType": "ResearchSubject", "id": "rs-group", "individual": {"reference": "Group/g1"}},
        {"resourceType": "ResearchSubject", "id": "rs-away", "individual": {"reference": "https://x.org/Patient/9"}},
        {"resourceType": "ResearchSubject", "individual": {"reference": "Patient/p9"}},  # no id: not kept
    )
    summary, sink, _ = pull_study(StudyServer(extra_subjects=extra), "s1")
    assert summary.patients == 3 and sink.counts["ResearchSubject"] == 6  # kept, and said
    skipped = "1 search entry(ies) unusable, skipped: ResearchSubject search page 1 entry 7: ResearchSubject without id"
    assert skipped in summary.warnings
    assert "3 subject(s) name no Patient on this server (individual): ResearchSubject/rs-none, " in summary.warnings[0]
    assert "ResearchSubject/rs-group, ResearchSubject/rs-away" in summary.warnings[0]


def test_pull_of_a_study_without_patients_says_there_is_nothing_to_evaluate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StudyServer, "PATIENTS", ())
    summary, sink, _ = pull_study(StudyServer(), "s1")
    assert summary.patients == 0 and sink.counts == {"ResearchStudy": 1}
    assert "ResearchStudy/s1 has no subject naming a Patient: there is nothing to evaluate" in summary.warnings


def test_pull_stays_within_the_concurrency() -> None:
    server = StudyServer()
    pull_study(server, "s1", concurrency=2)
    assert server.most_in_flight == 2


def test_pull_of_a_missing_study_names_it() -> None:
    server = StudyServer()
    with pytest.raises(ServerError, match="--study s9: ResearchStudy/s9 not found on the server"):
        pull_study(server, "s9")


def test_a_failing_search_stops_the_pull_with_the_servers_text() -> None:
    server = StudyServer(fail="Condition?subject=Patient%2Fp2")
    with pytest.raises(ServerError, match=r"GET Condition: HTTP 400: error processing: unknown code$"):
        pull_study(server, "s1")
    assert server.requests["Condition"] >= 1


def test_a_server_that_refuses_last_updated_is_named_as_the_likely_cause_with_what_to_run() -> None:
    server = StudyServer(no_since=True)
    assert pull_study(server, "s1")[0].patients == 3  # a whole pull does not ask for it
    with pytest.raises(ServerError) as caught:
        pull_study(server, "s1", since="2026-11-30T00:00:00Z")
    assert caught.value.status == 400
    hint = (
        "The search asked only for changes (_lastUpdated); if this server cannot search by _lastUpdated, read "
        "everything instead: sync --since none, or pull without --since"
    )
    pattern = r"GET (\w+): HTTP 400: error processing: Unknown search parameter '_lastUpdated' for \1\. "
    assert re.fullmatch(pattern + re.escape(hint), str(caught.value)), str(caught.value)
    # A read (a referenced Medication) asks for no changes: its 400 gets no such hint.
    with pytest.raises(ServerError, match=r"^GET Medication/m1: HTTP 400: error processing: unknown code$"):
        pull_study(StudyServer(fail="Medication/m1?"), "s1", since="2026-11-30T00:00:00Z")


def test_tls_context_is_built_once_verifies_and_cannot_be_turned_off() -> None:
    import ssl

    import certifi

    from fhiradapter.shell.server.fhir_client import tls_context

    assert tls_context(True) is tls_context(True)  # shared by every client of the process
    bundle = tls_context(certifi.where())  # as --ca-bundle FILE
    for ctx in (tls_context(True), bundle):
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert bundle.cert_store_stats()["x509_ca"] > 0
    with pytest.raises(ValueError, match="cannot be turned off"):
        tls_context(False)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("just a hostname\n", "no certificate or crl found"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "PEM lib"),
    ],
)
def test_a_ca_bundle_without_certificates_is_a_configuration_error(tmp_path: Path, content: str, reason: str) -> None:
    from click.testing import CliRunner

    from fhiradapter.cli import main

    bundle = tmp_path / "ca.pem"
    bundle.write_text(content)
    args = ["pull", "--server", "https://127.0.0.1:9/fhir", "--study", "s", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, [*args, "--ca-bundle", str(bundle)])
    assert result.exit_code == 10, result.output
    assert f"--ca-bundle {bundle}: cannot load CA certificates from it ({reason})" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize(
    ("stop", "status", "failure"),
    [
        (KeyboardInterrupt(), "interrupted", "interrupted (Ctrl-C)"),  # the user presses Ctrl-C
        # A bug: the store keeps only its type, as its text may quote patient data.
        (ValueError("Observation for Jane Doe, born 1950-01-01"), "failed", "unexpected internal error (ValueError)"),
    ],
)
def test_a_sync_that_stops_is_recorded_with_why_and_keeps_its_watermark(
    tmp_path: Path, stop: BaseException, status: str, failure: str
) -> None:
    from sqlalchemy import select

    from fhiradapter.shell.common.mappings_io import load_mappings
    from fhiradapter.shell.server.store import SyncStore, sync_runs, watermarks
    from fhiradapter.shell.server.sync import SyncOptions, run_sync

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("metadata"):
            return fhir({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [{}]})
        raise stop  # while the study is being read

    mappings, identity = load_mappings()
    opts = SyncOptions(
        study="s",
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
        with pytest.raises(type(stop)):
            run_sync(FhirClient(BASE, transport=httpx.MockTransport(handler)), store, opts)
        with store.engine.connect() as conn:
            assert conn.execute(select(sync_runs.c.status)).scalars().all() == [status]
            assert conn.execute(select(watermarks)).all() == []
        (run,), total = store.runs()
        assert total == 1 and run.status == status and run.summary is not None and run.summary.failure == failure
    finally:
        store.close()


@pytest.mark.parametrize(
    ("command", "patched", "says"),
    [
        ("sync", "fhiradapter.shell.server.sync.run_sync", "the watermark was not advanced"),
        ("pull", "fhiradapter.shell.server.pull.pull", "an unfinished pull are not put in place"),
        ("push", "fhiradapter.shell.server.push.push", "each whole or not at all"),
    ],
)
def test_ctrl_c_says_what_was_left_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, patched: str, says: str
) -> None:
    from click.testing import CliRunner

    from fhiradapter.cli import main

    def stop(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(patched, stop)
    bundle = tmp_path / "writeback.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": []}))
    approve_bundle(bundle)
    server = ["--server", "http://127.0.0.1:9/fhir"]
    args = {
        "sync": [*server, "--study", "s", "--as-of", "2005-03-31", "--data-dir", str(tmp_path / "d")],
        "pull": [*server, "--study", "s", "--out", str(tmp_path / "o")],
        "push": [*server, str(bundle)],
    }[command]
    result = CliRunner().invoke(main, [command, *args])
    assert result.exit_code == 130, result.output
    assert ("\n" + result.output).count("\ninterrupted (Ctrl-C): ") == 1 and says in result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------- pull folder


def test_a_pull_folder_holds_one_pull_the_earlier_ones_files_go_when_the_new_one_is_complete(tmp_path: Path) -> None:
    from fhiradapter.errors import ConfigError
    from fhiradapter.shell.server.pull_folder import claim_folder, finish_folder, start_folder

    out = tmp_path / "pulled"
    assert claim_folder(out) == [] and not out.exists()  # new: made only when a pull is complete
    out.mkdir(mode=0o750)
    for name in ("Observation.ndjson", "Condition.ndjson", "notes.txt"):
        (out / name).write_text("{}\n")
    (out / "pull-manifest.json").write_text('{"files": ["Condition.ndjson", "Observation.ndjson"]}')
    (out / "Consent.ndjson.partial").write_text("{}\n")  # a stopped pull's leftover
    earlier = claim_folder(out)
    assert [p.name for p in earlier] == ["Condition.ndjson", "Consent.ndjson.partial", "Observation.ndjson"]
    work = start_folder(out)
    assert work.parent == tmp_path and work.name.startswith(".pulled.pull-") and work.stat().st_mode & 0o777 == 0o700
    new = work / "Observation.ndjson"
    new.write_text('{"resourceType":"Observation","id":"new"}\n')
    removed = finish_folder(out, work, {"since": "2024-01-01T00:00:00Z"}, earlier, [new])
    assert removed == ["Condition.ndjson", "Consent.ndjson.partial"]
    assert sorted(p.name for p in out.iterdir()) == ["Observation.ndjson", "notes.txt", "pull-manifest.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["pulled"]  # nothing left beside it
    assert out.stat().st_mode & 0o777 == 0o750  # the folder keeps its mode
    manifest = {"since": "2024-01-01T00:00:00Z", "files": ["Observation.ndjson"]}
    assert json.loads((out / "pull-manifest.json").read_text()) == manifest
    assert "new" in (out / "Observation.ndjson").read_text()  # the new pull's file of the same name
    # A file added to the folder since is not the earlier pull's: refused, not deleted.
    (out / "added.ndjson").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"did not write \(added.ndjson\)"):
        claim_folder(out)


def test_a_pull_is_not_put_in_place_of_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull replaces its folder whole: --out . would leave the shell in a removed folder."""
    from fhiradapter.errors import ConfigError
    from fhiradapter.shell.server.pull_folder import pull_target

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for given in (".", "..", str(tmp_path)):
        with pytest.raises(ConfigError, match="is the current folder or holds it"):
            pull_target(Path(given))
    assert pull_target(Path("pulled")) == tmp_path / "here" / "pulled"
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    assert pull_target(tmp_path / "link") == tmp_path / "elsewhere"  # the folder the link names


def test_a_manifest_from_before_the_files_list_names_one_file_per_type(tmp_path: Path) -> None:
    from fhiradapter.shell.server.pull_folder import claim_folder

    (tmp_path / "pull-manifest.json").write_text('{"resources": {"Patient": 2}}')
    (tmp_path / "Patient.ndjson").write_text("{}\n")
    assert [p.name for p in claim_folder(tmp_path)] == ["Patient.ndjson"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["Patient.ndjson"], r"already holds files fhiradapter pull did not write \(Patient.ndjson\)"),
        (["pull-manifest.json", "old/Patient.ndjson"], r"did not write \(old/Patient.ndjson\)"),
        (["pull-manifest.json", "Patient.ndjson"], r"did not write \(Patient.ndjson\)"),  # "{}": lists no file
        (["export.json", "a.ndjson", "b.ndjson.gz", "c.jsonl"], r"\(a.ndjson, b.ndjson.gz, c.jsonl \.\.\.\)"),
        (["bulk-state.json"], "holds an unfinished Bulk export"),
    ],
)
def test_a_pull_refuses_a_folder_whose_files_evaluate_would_mix_in(
    tmp_path: Path, files: list[str], message: str
) -> None:
    from fhiradapter.errors import ConfigError
    from fhiradapter.shell.server.pull_folder import claim_folder

    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match=message):
        claim_folder(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing touched


def test_a_bulk_pull_may_resume_in_its_own_folder(tmp_path: Path) -> None:
    from fhiradapter.shell.server.pull_folder import claim_folder

    (tmp_path / "bulk-state.json").write_text('{"status_url": "x"}')
    (tmp_path / "Observation-001.ndjson").write_text("{}\n")
    assert [p.name for p in claim_folder(tmp_path, bulk=True)] == ["Observation-001.ndjson"]


def test_a_bulk_syncs_unusable_lines_are_reported_and_the_rest_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fhiradapter.shell.common.mappings_io import load_mappings
    from fhiradapter.shell.server import sync as sync_mod
    from fhiradapter.shell.server.bulk import BulkSummary

    lines = [
        b'{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}',
        b'{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}',  # no id
        b'{"resourceType":"Observation","id":"o2","subj',  # cut off
        b"",
        b'{"resourceType":"Observation","id":"o3","subject":{"reference":"Patient/p2"}}',
    ]
    export = tmp_path / "Observation-001.ndjson"
    export.write_bytes(b"\n".join(lines) + b"\n")

    async def exported(*args: Any, **kwargs: Any) -> BulkSummary:
        return BulkSummary("status", files=[export])

    monkeypatch.setattr(sync_mod, "bulk_pull", exported)
    mappings, identity = load_mappings()
    opts = sync_mod.SyncOptions(
        study="s1",
        as_of=date(2005, 3, 31),
        since="none",
        dry_run=False,
        work_dir=tmp_path / "runs",
        mappings=mappings,
        mappings_identity=identity,
        standing_rule=standing_rule_all(),
    )
    sink = ListSink()

    async def go(client: FhirClient) -> PullSummary:
        return await sync_mod._bulk_into(client, await client.capabilities(), opts, sink, None, 1)

    summary = run(lambda r: StudyServer().answer(r), go)[0]
    assert [r["id"] for r in sink.resources if r["resourceType"] == "Observation"] == ["o1", "o3"]
    assert (
        "2 exported line(s) unusable, skipped: Observation-001.ndjson line 2: Observation without id; "
        "Observation-001.ndjson line 3: not JSON"
    ) in summary.warnings


def test_a_sync_whose_server_refuses_some_writes_ends_as_errors_and_keeps_its_watermark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes one by one (no transaction or batch offered); every write for p2 is refused (422)."""
    from fhiradapter.shell.common.mappings_io import load_mappings
    from fhiradapter.shell.server.store import SyncStore
    from fhiradapter.shell.server.sync import SyncOptions, run_sync

    sent: Counter[str] = Counter()
    written: list[str] = []  # Type/id of every write accepted, in order
    provenances: list[dict[str, Any]] = []
    writing: list[int] = []

    class Refusing(StudyServer):
        def answer(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET":
                return super().answer(request)
            body = json.loads(request.content)
            patient = (body.get("subject") or body.get("individual") or {}).get("reference")
            sent[f"{request.method} {body['resourceType']} {patient}"] += 1
            if patient == "Patient/p2":
                return outcome("Observation.valueCodeableConcept: code not in the required value set", 422)
            if body["resourceType"] == "Provenance":
                provenances.append(body)
            else:
                writing.append(self.in_flight)  # writes in flight as this one is answered
            rid = body.get("id") or f"new-{sum(sent.values())}"
            written.append(f"{body['resourceType']}/{rid}")
            if request.method == "PUT":
                return fhir({}, 200)  # no Location: an update is where it was sent
            return fhir({}, 201, Location=f"{BASE}/{written[-1]}/_history/2")

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
        server = Refusing()
        loops = []
        real_run = asyncio.run

        def counted(main: Any, **kwargs: Any) -> Any:
            loops.append(main)
            return real_run(main, **kwargs)

        monkeypatch.setattr(asyncio, "run", counted)
        summary = run_sync(FhirClient(BASE, transport=httpx.MockTransport(server)), store, opts)
        assert len(loops) == 1  # pull, evaluate and push in one event loop
        refused = sum(n for what, n in sent.items() if what.endswith("Patient/p2"))
        assert refused > 0 and len(summary.errors) == refused and summary.conflicts == []
        reason = "HTTP 422: error processing: Observation.valueCodeableConcept: code not in the required value set"
        assert all(e.endswith(reason) for e in summary.errors), summary.errors
        # The rest was written, and the run's Provenance last, naming what was written by its server ids.
        assert summary.pushed["created"] + summary.pushed["updated"] == len(written) > 1
        (provenance,) = provenances
        assert sorted(t["reference"] for t in provenance["target"]) == sorted(written[:-1])
        assert "ResearchSubject/rs-p1" in written  # an update, named though its answer had no Location
        assert written[-1].startswith("Provenance/") and max(writing) > 1  # the rest went side by side
        assert summary.watermark is None and store.watermark(BASE, "s1") is None  # the next run pulls it all again
        (run,), _ = store.runs()
        assert run.status == "errors" and run.summary is not None and run.summary.errors == summary.errors
    finally:
        store.close()


def test_ctrl_c_stops_a_syncs_evaluation_at_once_inside_the_event_loop() -> None:
    """Within asyncio.run, Ctrl-C would only cancel the main task at its next await: the evaluation (blocking
    work between the pull and the push) must stop where it is, as it does outside the loop."""
    import os
    import signal
    import time

    from fhiradapter.shell.server.sync import interruptible

    async def evaluate_for_five_seconds() -> float:
        started = time.monotonic()
        with interruptible():
            os.kill(os.getpid(), signal.SIGINT)
            while time.monotonic() - started < 5:
                time.sleep(0.01)  # blocking work, never awaiting
        return time.monotonic() - started

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(evaluate_for_five_seconds())
    assert time.monotonic() - started < 2


# ---------------------------------------------------------------------------------------------- what errors carry


def test_an_error_after_retries_carries_its_status_request_and_outcome() -> None:
    """Code that decides on an error reads its fields, not its text: a 503 storm that outlasts the budget."""

    def handler(request: httpx.Request) -> httpx.Response:
        return outcome("database maintenance", 503)

    with pytest.raises(ServerError) as err:
        run(handler, collect, settings=ClientSettings(retry_budget_s=1, max_attempts=2, backoff_base_s=0.1))
    assert err.value.status == 503
    assert err.value.request == ServerRequest("GET", "Observation")  # no query: search values can name patients
    assert err.value.issues == (OutcomeIssue("error", "processing", "database maintenance"),)
    assert str(err.value).endswith(": error processing: database maintenance")


def test_a_search_page_that_is_no_bundle_names_its_request_and_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return fhir({"resourceType": "Patient", "id": "p1"})

    with pytest.raises(ServerError, match="Observation search page 1 is not a Bundle") as err:
        run(handler, collect)
    assert (err.value.status, err.value.request) == (200, ServerRequest("GET", "Observation"))


def test_a_next_link_to_another_origin_names_the_request_it_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return page(["a"], "https://elsewhere.test/r4/Observation?page=2&subject=Patient/p1")

    with pytest.raises(ServerError, match="not followed") as err:
        run(handler, collect)
    assert (
        err.value.request == ServerRequest("GET", "https://elsewhere.test/r4/Observation") and err.value.status is None
    )


def test_a_lost_answer_names_its_request() -> None:
    from fhiradapter.errors import AnswerLost

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset by peer", request=request)

    async def write(client: FhirClient) -> httpx.Response:
        return await client.request("PUT", "Observation/o1?x=1", json={"resourceType": "Observation", "id": "o1"})

    with pytest.raises(AnswerLost) as err:
        run(handler, write)
    assert err.value.request == ServerRequest("PUT", "Observation/o1") and err.value.status is None


def test_a_study_not_on_the_server_names_the_read() -> None:
    from fhiradapter.shell.server.pull import resolve_study

    def handler(request: httpx.Request) -> httpx.Response:
        return outcome("not found", 404)

    with pytest.raises(ServerError, match="ResearchStudy/s9 not found") as err:
        run(handler, lambda client: resolve_study(client, "s9"))
    assert err.value.request == ServerRequest("GET", "ResearchStudy/s9")


def test_an_outcomes_issues_are_parsed_in_order_with_details_text_for_missing_diagnostics() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        issues = [
            {"severity": "error", "code": "invalid", "diagnostics": "Observation.status: value is required"},
            {"severity": "warning", "code": "informational", "details": {"text": "see the profile"}},
        ]
        return fhir({"resourceType": "OperationOutcome", "issue": issues}, 422)

    async def write(client: FhirClient) -> httpx.Response:
        return await client.request("PUT", "Observation/o1?_pretty=true", json={"resourceType": "Observation"})

    with pytest.raises(ServerError) as err:
        run(handler, write)
    assert err.value.request == ServerRequest("PUT", "Observation/o1") and err.value.status == 422
    assert err.value.issues == (
        OutcomeIssue("error", "invalid", "Observation.status: value is required"),
        OutcomeIssue("warning", "informational", "see the profile"),
    )
    assert str(err.value) == (
        "PUT Observation/o1: HTTP 422: error invalid: Observation.status: value is required; "
        "warning informational: see the profile"
    )


def test_an_answer_without_an_outcome_has_no_issues_and_its_status_line_as_message() -> None:
    with pytest.raises(ServerError) as err:
        run(lambda request: httpx.Response(400, text="no"), collect)
    assert err.value.issues == () and str(err.value) == "GET Observation: HTTP 400: Bad Request"


@pytest.mark.parametrize("offered", [False, True])
def test_logical_subjects_without_a_study_search_read_every_research_subject(
    offered: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `study` search offered (never asked, and no made-up server error), or the `study:identifier` search
    refused with a 4xx: every ResearchSubject is read and those naming the study by identifier are kept."""
    from fhiradapter.shell.server.pull import logical_subjects

    study: JsonObject = {
        "resourceType": "ResearchStudy",
        "id": "s1",
        "identifier": [{"system": "urn:s", "value": "S-1"}],
    }
    subjects = [
        {"resourceType": "ResearchSubject", "id": "rs1", "study": {"identifier": {"system": "urn:s", "value": "S-1"}}},
        {"resourceType": "ResearchSubject", "id": "rs2", "study": {"identifier": {"system": "urn:s", "value": "S-2"}}},
    ]
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url.params))
        if "study:identifier" in request.url.params:
            return outcome("unknown search parameter", 400)
        entries = [{"resource": s, "search": {"mode": "match"}} for s in subjects]
        return fhir({"resourceType": "Bundle", "type": "searchset", "entry": entries})

    raised: list[ServerError] = []
    made = ServerError.__init__

    def recorded(self: ServerError, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        raised.append(self)

    monkeypatch.setattr(ServerError, "__init__", recorded)
    cap = Capability("4.0.1", "x", True, True, {"ResearchSubject": {"study"}} if offered else {})
    warnings: list[str] = []
    found, _, _ = run(handler, lambda client: logical_subjects(client, study, cap, warnings, set()))
    # Only the server's refusal is an error, and it names the search it refused.
    assert [(e.status, e.request) for e in raised] == (
        [(400, ServerRequest("GET", "ResearchSubject"))] if offered else []
    )
    assert [r["id"] for r in found] == ["rs1"]
    assert len(asked) == (2 if offered else 1) and ("study%3Aidentifier" in asked[0]) is offered
    assert warnings == [
        "the server has no `study:identifier` search for ResearchSubject: every ResearchSubject was read "
        "and those naming the study by identifier kept here"
    ]


def test_a_type_that_is_not_r4s_reaching_the_pull_folder_is_a_bug_not_a_server_error(tmp_path: Path) -> None:
    from fhiradapter.shell.server.pull_folder import NdjsonSink, NotAResourceType

    sink = NdjsonSink(tmp_path)
    with pytest.raises(NotAResourceType) as err:
        sink.add({"resourceType": "../Patient", "id": "p1"})
    assert not isinstance(err.value, ServerError) and list(tmp_path.iterdir()) == []

"""The async FHIR R4 client: capability check, paged search, reads, transactions; retries, timeouts and auth.

One ``httpx.AsyncClient`` per run (no sync twin). Every request:
- has a total deadline (``timeout_s``: the whole request, however slowly the server drips its answer) and a
  connect timeout;
- waits for a slot of an adaptive limit (``AdaptiveLimit``, at most ``concurrency``): halved when the server
  times out or answers 429 or 503, raised again by one per round of answered requests (AIMD);
- is retried on 408, 429, 5xx and transport errors (refused or dropped connections, timeouts) with exponential
  backoff and full jitter, honouring ``Retry-After``, within a total time budget (tenacity); other 4xx are
  never retried. Writes are conditional (If-None-Exist, If-Match), so retrying one cannot duplicate;
- on failure raises :class:`ServerError` with the server's OperationOutcome text (never the request body);
  :class:`AnswerLost` when the request may have reached the server but no answer came back;
- carries the credential (the ``auth``) only to the server's own origin (scheme, host, port) and to origins the
  user trusted (``trusted``); a request for any other origin is refused before it is sent, naming both.
Searches send ``Prefer: handling=strict`` (an unknown parameter fails instead of matching everything) and page
by following the Bundle's ``next`` links, never by building offsets. Paging stops with an error on a ``next``
link to another origin, a page seen before, a page that brings no new resource, more pages than the Bundle's
``total`` allows, or ``max_pages`` (``PageGuard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import ipaddress
import math
import random
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay

from fhiradapter import __version__
from fhiradapter.core.json_types import JsonObject, JsonValue, items, member, text
from fhiradapter.core.resource_types import type_problem
from fhiradapter.errors import AnswerLost, ConfigError, OutcomeIssue, ServerError, ServerRequest
from fhiradapter.shell.common.files import open_new

RETURN_MINIMAL = "return=minimal"
FHIR_JSON = "application/fhir+json"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MIN_DOWNLOAD_RATE = 64 * 1024  # bytes per second a download must keep up once its first --timeout has passed
OVERLOAD_STATUS = frozenset({429, 503})  # the server asks for less: the adaptive limit halves


@dataclass(frozen=True)
class ClientSettings:
    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    concurrency: int = 8
    retry_budget_s: float = 120.0  # total time spent retrying one request
    max_attempts: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    page_size: int = 100
    max_pages: int = 10_000  # pages one search may take (1,000,000 resources at 100 a page)
    verify: bool | str = True  # True, or a CA bundle path; never False from the command line


class Retryable(Exception):
    """A response worth retrying (408/429/5xx); carries the response for Retry-After and the final error."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class _LostWrite(Exception):
    """A write whose answer was lost: not retried blindly (the caller looks it up on the server)."""

    def __init__(self, cause: Exception) -> None:
        reason = f"HTTP {cause.response.status_code}" if isinstance(cause, Retryable) else type(cause).__name__
        super().__init__(reason)


class RequestDeadline(httpx.TimeoutException):
    """The whole request took longer than ``timeout_s`` (a server that answers, but too slowly)."""


# Transport failures after which the request may have reached the server (its answer is what was lost).
ANSWER_LOST = (
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
    RequestDeadline,
)


def origin(url: str) -> str:
    """``scheme://host:port`` of a URL, with the scheme's default port made explicit (the unit of trust)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or {"https": 443, "http": 80}.get(scheme)
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def is_loopback(url: str) -> bool:
    """Whether a URL's host is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OriginBoundAuth(httpx.Auth):
    """Wraps the client's auth: a request for an origin outside ``origins`` is refused, never authenticated.

    The client checks every URL before it sends (with a message that names both origins); this is the last
    line, so that no code path can hand the credential to another host. The inner flow's own requests (a SMART
    token request to its token endpoint) pass through unchanged.
    """

    def __init__(self, inner: httpx.Auth, origins: frozenset[str]) -> None:
        self.inner, self.origins = inner, origins
        self.requires_request_body = inner.requires_request_body
        self.requires_response_body = inner.requires_response_body

    def __repr__(self) -> str:
        return f"OriginBoundAuth({self.inner!r}, {sorted(self.origins)})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(str(request.url)) not in self.origins:
            what = request_of(request.method, str(request.url))
            raise ServerError(f"{what}: not sent, the credential is not for it", request=what)
        yield from self.inner.auth_flow(request)


class AdaptiveLimit:
    """How many requests may be in flight: additive increase, multiplicative decrease (AIMD), up to ``ceiling``.

    A timeout, 429 or 503 halves the limit, once per round: only a request that started after the last cut can
    cut again, so eight requests timing out together halve it once, not three times. Every answered request
    adds ``1/limit``: one more slot per round of answers, a slow recovery. ``lowest`` is reported to the user.
    """

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = float(self.ceiling)
        self.lowest = self.ceiling
        self.cuts = 0
        self._in_flight = 0
        self._started = 0
        self._last_cut = -1
        self._changed = asyncio.Condition()

    def watch_from_now(self) -> None:
        """Count ``lowest`` from the present level: a new phase on the same client (sync's push after its
        pull) reports what happened during it, not before."""
        self.lowest = max(1, int(self.limit))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        """Wait for a free slot; yields the request's sequence number (for ``overloaded``)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_flight < int(self.limit))
            self._in_flight += 1
            self._started += 1
            number = self._started
        try:
            yield number
        finally:
            async with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def answered(self) -> None:
        self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)

    def overloaded(self, number: int) -> None:
        if number <= self._last_cut:
            return
        self._last_cut = self._started
        self.limit = max(1.0, self.limit / 2)
        self.lowest = min(self.lowest, int(self.limit))
        self.cuts += 1


class PageGuard:
    """Ends a search that would never end: a page seen before, a page that brings no new resource while it
    links to another, more pages than the Bundle's ``total`` allows (plus a margin), or ``max_pages``."""

    def __init__(self, what: str, max_pages: int) -> None:
        self.what, self.max_pages = what, max_pages
        self.visited: set[str] = set()
        self.ids: set[tuple[str, str]] = set()
        self.total: int | None = None  # matches, as the first page's Bundle.total says
        self.needed = 0  # pages that hold ``total`` at the smallest page size seen
        self.smallest = 0
        self.pages = 0

    def before(self, url: str) -> None:
        """Called before a page is requested."""
        self.pages += 1
        page = self.pages
        self.visited.add(url)
        if page > self.max_pages:
            raise ServerError(
                f"{self.what}: more than {self.max_pages} pages; paging stopped (--max-pages raises the cap if the "
                "search really is that large)",
                request=request_of("GET", url),
            )
        if self.total is not None and page > self.needed + 2 + self.needed // 4:
            raise ServerError(
                f"{self.what} page {page}: the server said the search has {self.total} match(es), which "
                f"{self.needed} page(s) hold, yet its next links run on; paging stopped",
                request=request_of("GET", url),
            )

    def after(self, found: list[JsonObject], total: JsonValue, next_url: str | None) -> None:
        """Called with a page's matching resources, its ``Bundle.total``, and its next link (None: the last)."""
        if next_url in self.visited:
            raise ServerError(
                f"{self.what} page {self.pages}: the next link repeats an earlier page; paging stopped",
                request=request_of("GET", next_url or ""),
            )
        new = {(str(r["resourceType"]), str(r["id"])) for r in found} - self.ids
        self.ids |= new
        if self.pages == 1 and isinstance(total, int) and not isinstance(total, bool) and total >= 0:
            self.total = total
        if self.total is not None and found and next_url is not None:
            # At the smallest page size seen: servers may give fewer than _count on later pages.
            self.smallest = min(self.smallest or len(found), len(found))
            self.needed = math.ceil(self.total / self.smallest)
        if self.pages > 1 and next_url is not None and not new:
            raise ServerError(
                f"{self.what} page {self.pages}: brings no resource not seen on an earlier page, yet links to "
                "another; paging stopped",
                request=request_of("GET", next_url),
            )


@dataclass
class Capability:
    fhir_version: str
    software: str
    transaction: bool
    batch: bool
    search_params: dict[str, set[str]] = field(default_factory=dict)
    history_system: bool = False
    type_interactions: dict[str, set[str]] = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def tls_context(verify: bool | str) -> ssl.SSLContext:
    """The TLS context for ``verify``: True, the CAs httpx would use (certifi, or ``SSL_CERT_FILE``/``_DIR``);
    a path, that CA bundle file (``--ca-bundle``). Built once per process and shared: loading a CA store
    costs about 45 ms of CPU, and one sync opens several clients. Verification is never turned off here.
    """
    if verify is True:
        return httpx.create_ssl_context()
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (ssl.SSLError, OSError) as exc:  # not PEM, no certificate in it, unreadable
            reason = re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", exc.strerror or "") or type(exc).__name__
            raise ConfigError(
                f"--ca-bundle {verify}: cannot load CA certificates from it ({reason}); "
                "it must hold PEM certificates (-----BEGIN CERTIFICATE-----)"
            ) from None
    raise ValueError("TLS verification cannot be turned off")


def outcome_issues(response: httpx.Response) -> tuple[OutcomeIssue, ...]:
    """The issues of the OperationOutcome an answer holds (() for any other answer)."""
    try:
        body = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = None
    return parse_issues(body)


def outcome_text(response: httpx.Response, issues: tuple[OutcomeIssue, ...] | None = None) -> str:
    """The OperationOutcome's diagnostics/details (``issues``, when already parsed), else the status line; never
    more than 300 characters."""
    found = outcome_issues(response) if issues is None else issues
    return ("; ".join(str(issue) for issue in found) or response.reason_phrase or "no detail")[:300]


def parse_issues(body: JsonValue) -> tuple[OutcomeIssue, ...]:
    """An OperationOutcome's issues: severity, code and diagnostics (else details.text); () for anything else."""
    if not (isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"):
        return ()
    found = []
    for issue in items(body, "issue"):
        detail = issue.get("diagnostics") or (member(issue, "details") or {}).get("text")
        found.append(OutcomeIssue(str(issue.get("severity", "")), str(issue.get("code", "")), str(detail or "")))
    return tuple(found)


def issues_text(body: JsonValue) -> str:
    """An OperationOutcome's issues as ``severity code: diagnostics``, joined by "; " ("" for anything else)."""
    return "; ".join(str(issue) for issue in parse_issues(body))


def retry_after_s(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


class FhirClient:
    """Use as ``async with FhirClient(base, auth=...) as client:``."""

    def __init__(
        self,
        base_url: str,
        auth: httpx.Auth | None = None,
        settings: ClientSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        trusted: Iterable[str] = (),
    ) -> None:
        self.base = base_url.rstrip("/")
        self._sleep = sleep
        self.settings = settings or ClientSettings()
        self._auth, self._transport = auth, transport
        self.trusted = tuple(trusted)  # origins besides the base's that may receive the credential
        self.origins = frozenset({origin(self.base), *(origin(t) for t in self.trusted)})
        self.limit = AdaptiveLimit(self.settings.concurrency)
        self._client: httpx.AsyncClient | None = None
        self.requests = 0
        self.retries = 0
        self.server_time: datetime | None = None  # from the Date header of /metadata
        self.skipped: list[str] = []  # search entries that are no resource with a type and an id: where, and why
        # Told once, when a request first has to wait for the server (not answering, overloaded): a person at the
        # console learns why nothing happens, and for how long it may go on. The CLI prints it.
        self.on_wait: Callable[[str], None] | None = None
        self._waited = False

    def fresh(self) -> FhirClient:
        """A new client with the same server, auth and settings (one per event loop; the auth's token is shared)."""
        client = FhirClient(self.base, self._auth, self.settings, self._transport, self._sleep, self.trusted)
        client.on_wait = self.on_wait
        return client

    def elsewhere(self, url: str) -> FhirClient:
        """A client for another origin: the same settings and retries, never our credential."""
        return FhirClient(origin(url), None, self.settings, self._transport, self._sleep)

    @property
    def authenticated(self) -> bool:
        """Whether requests carry a credential."""
        return self._auth is not None

    def may_authenticate(self, url: str) -> bool:
        """Whether the credential may go to ``url``: the base's origin, or one the user trusted."""
        return origin(urljoin(self.base + "/", url)) in self.origins

    def _check_origin(self, what: ServerRequest, url: str) -> None:
        """Refuse, before sending, a request that would carry the credential to an origin not trusted with it."""
        if self._auth is not None and not self.may_authenticate(url):
            raise ServerError(
                f"{what}: refused, it points to {origin(urljoin(self.base + '/', url))}, not to the server's own "
                f"origin {origin(self.base)}, and the access token goes nowhere else (--trust-origin names "
                "another origin that may have it)",
                request=what,
            )

    async def __aenter__(self) -> FhirClient:
        s = self.settings
        self._client = httpx.AsyncClient(
            base_url=self.base + "/",
            auth=OriginBoundAuth(self._auth, self.origins) if self._auth is not None else None,
            timeout=httpx.Timeout(s.timeout_s, connect=s.connect_timeout_s),
            verify=tls_context(s.verify),
            transport=self._transport,
            headers={"Accept": FHIR_JSON, "User-Agent": f"fhiradapter/{__version__}"},
            limits=httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency),
            follow_redirects=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("FhirClient used outside `async with`")
        return self._client

    # ------------------------------------------------------------------------------------------------ requests

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Retryable):
            hinted = retry_after_s(exc.response)
            if hinted is not None:
                return min(hinted, self.settings.backoff_max_s)
        ceiling = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (state.attempt_number - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - full jitter, not cryptography

    def _retrying(self) -> AsyncRetrying:
        """The retry policy: retryable statuses and transport errors, backoff with jitter, within the budget."""
        s = self.settings
        return AsyncRetrying(
            retry=retry_if_exception(
                lambda e: isinstance(e, Retryable | httpx.TransportError) and _refused_certificate(e) is None
            ),
            stop=stop_after_attempt(s.max_attempts) | stop_after_delay(s.retry_budget_s),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._told_to_wait,
            reraise=True,
        )

    def _told_to_wait(self, state: RetryCallState) -> None:
        """The first wait of this client: say why (the error's type or status, never a body) and for how long."""
        if self._waited or self.on_wait is None:
            return
        self._waited = True
        exc = state.outcome.exception() if state.outcome else None
        why = f"HTTP {exc.response.status_code}" if isinstance(exc, Retryable) else type(exc).__name__
        self.on_wait(
            f"{self.base} is not answering as it should ({why}): retrying, for up to "
            f"{self.settings.retry_budget_s:.0f} s a request (Ctrl-C stops)"
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: list[tuple[str, str]] | None = None,
        json: JsonValue = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (),
    ) -> httpx.Response:
        """Send with retries; return a 2xx response (or one whose status is in ``ok``); else raise ServerError."""
        s = self.settings
        body = orjson.dumps(json) if json is not None else None
        send_headers = dict(headers or {})
        if body is not None:
            send_headers.setdefault("Content-Type", FHIR_JSON)
        what = request_of(method, url)
        self._check_origin(what, url)
        write = method not in ("GET", "HEAD")
        reached = False  # whether any attempt may have reached the server (an answer lost, not a write refused)
        try:
            async for attempt in self._retrying():
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.retries += 1
                    try:
                        response = await self._send(method, url, params, body, send_headers)
                    except ANSWER_LOST as exc:
                        reached = True
                        if write:  # sent again blindly, an applied update would come back as a 412 conflict
                            raise _LostWrite(exc) from exc
                        raise
                    except Retryable as exc:
                        if write and exc.response.status_code in (502, 504):  # a gateway gave up; the server?
                            raise _LostWrite(exc) from exc
                        raise
        except _LostWrite as lost:
            raise AnswerLost(
                f"{what}: its answer was lost ({lost}); the server may have applied it, to be looked up", request=what
            ) from None
        except Retryable as exc:
            issues = outcome_issues(exc.response)
            outcome = outcome_text(exc.response, issues)
            raise ServerError(
                f"{what}: HTTP {exc.response.status_code} after retrying for up to {s.retry_budget_s:.0f} s: {outcome}",
                exc.response.status_code,
                request=what,
                issues=issues,
            ) from None
        except httpx.TransportError as exc:
            raise self._transport_failure(what, exc, reached) from None
        if response.is_success or response.status_code in ok:
            return response
        issues = outcome_issues(response)
        raise ServerError(
            f"{what}: HTTP {response.status_code}: {outcome_text(response, issues)}",
            response.status_code,
            request=what,
            issues=issues,
        )

    async def _send(
        self,
        method: str,
        url: str,
        params: list[tuple[str, str]] | None,
        body: bytes | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        """One attempt, in a slot of the adaptive limit, within the total deadline; a 408/429/5xx is raised."""
        async with self.limit.slot() as number:
            self.requests += 1
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    response = await self.client.request(
                        method,
                        url,
                        params=httpx.QueryParams(tuple(params)) if params else None,
                        content=body,
                        headers=headers,
                    )
            except TimeoutError:
                self.limit.overloaded(number)
                raise RequestDeadline(f"no complete answer within {self.settings.timeout_s:g} s") from None
            except httpx.TimeoutException:
                self.limit.overloaded(number)
                raise
            if response.status_code in OVERLOAD_STATUS:
                self.limit.overloaded(number)
            elif response.status_code not in RETRY_STATUS:
                self.limit.answered()
        if response.status_code in RETRY_STATUS:
            raise Retryable(response)
        return response

    def _transport_failure(self, what: ServerRequest, exc: httpx.TransportError, reached: bool = False) -> ServerError:
        """The error for a request the network kept failing, or whose server certificate was refused.

        ``reached``: an attempt may have reached the server (it timed out or dropped after sending): the error
        is :class:`AnswerLost`, and a write's caller must find out from the server whether it was applied.
        """
        refused = certificate_refused(exc)
        if refused is not None:  # never retried: it fails the same way every time
            return ServerError(f"{what}: {refused}", request=what)
        message = (
            f"{what}: {type(exc).__name__} ({_transport_reason(exc)}), "
            f"after retrying for up to {self.settings.retry_budget_s:.0f} s"
        )
        return AnswerLost(message, request=what) if reached else ServerError(message, request=what)

    async def json(
        self,
        method: str,
        url: str,
        *,
        params: list[tuple[str, str]] | None = None,
        json: JsonValue = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:  # a FHIR resource or Bundle as the server sent it: JSON, read by the caller
        """A request's answer, a JSON object (a FHIR resource or Bundle)."""
        response = await self.request(method, url, params=params, json=json, headers=headers)
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            what = request_of(method, url)
            raise ServerError(
                f"{what}: the server answered with something that is not JSON", response.status_code, request=what
            ) from None
        if not isinstance(answer, dict):
            what = request_of(method, url)
            raise ServerError(f"{what}: the server's answer is not a JSON object", response.status_code, request=what)
        return answer

    async def download(self, url: str, path: Path) -> None:
        """Stream a file to ``path``, retried as a whole on the same failures as any request.

        The answer must begin within ``timeout_s``; after that the file may take as long as it needs at
        ``MIN_DOWNLOAD_RATE`` bytes per second or more (a large Bulk file), never a byte-a-second drip.
        """
        what = request_of("GET", url)
        self._check_origin(what, url)
        try:
            async for attempt in self._retrying():
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.retries += 1
                    await self._download_once(url, path)
        except Retryable as exc:
            status = exc.response.status_code
            raise ServerError(f"{what}: HTTP {status} after retries", status, request=what) from None
        except httpx.TransportError as exc:
            raise self._transport_failure(what, exc) from None

    async def _download_once(self, url: str, path: Path) -> None:
        timeout = self.settings.timeout_s
        loop = asyncio.get_running_loop()
        async with self.limit.slot() as number:
            self.requests += 1
            try:
                async with asyncio.timeout(timeout) as deadline, self.client.stream("GET", url) as response:
                    if response.status_code in RETRY_STATUS:
                        await response.aread()
                        if response.status_code in OVERLOAD_STATUS:
                            self.limit.overloaded(number)
                        raise Retryable(response)
                    if not response.is_success:
                        await response.aread()
                        what, issues = request_of("GET", url), outcome_issues(response)
                        raise ServerError(
                            f"{what}: HTTP {response.status_code}: {outcome_text(response, issues)}",
                            response.status_code,
                            request=what,
                            issues=issues,
                        )
                    started, received = loop.time(), 0
                    with open_new(path) as fh:  # never through a link planted in the folder; mode 0600
                        async for chunk in response.aiter_bytes():
                            fh.write(chunk)
                            received += len(chunk)
                            deadline.reschedule(started + timeout + received / MIN_DOWNLOAD_RATE)
            except TimeoutError:
                self.limit.overloaded(number)
                raise RequestDeadline(
                    f"the file did not arrive at {MIN_DOWNLOAD_RATE // 1024} KiB/s or more after {timeout:g} s"
                ) from None
            self.limit.answered()

    # ------------------------------------------------------------------------------------------------ FHIR

    async def capabilities(self) -> Capability:
        """GET /metadata; refuse anything but FHIR R4 (4.0.x).

        This is the first request of every command, so its errors name the server: a 404 here almost always
        means ``--server`` is not the FHIR base URL.
        """
        try:
            response = await self.request("GET", "metadata")
        except ServerError as exc:
            hint = ""
            if exc.status in (400, 404, 405):
                hint = f"; is {self.base} the server's FHIR base URL (the one /metadata and /Patient hang off)?"
            raise ServerError(f"{self.base}: {exc}{hint}", exc.status, request=exc.request, issues=exc.issues) from None
        self.server_time = _server_time(response)
        try:
            cap = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            cap = None
        if not isinstance(cap, dict) or cap.get("resourceType") != "CapabilityStatement":
            raise ServerError(
                f"{self.base}/metadata is not a CapabilityStatement: is this a FHIR server base URL?",
                response.status_code,
                request=ServerRequest("GET", "metadata"),
            )
        version = str(cap.get("fhirVersion", ""))
        if not version.startswith("4.0."):
            raise ServerError(
                f"{self.base} speaks FHIR {version or '(unstated)'}; fhiradapter needs FHIR R4 (4.0.1)",
                response.status_code,
                request=ServerRequest("GET", "metadata"),
            )
        interactions: set[str] = set()
        params: dict[str, set[str]] = {}
        type_interactions: dict[str, set[str]] = {}
        for rest in cap.get("rest") or ():
            for i in rest.get("interaction") or ():
                interactions.add(str(i.get("code")))
            for res in rest.get("resource") or ():
                params[str(res.get("type"))] = {str(p.get("name")) for p in res.get("searchParam") or ()}
                type_interactions[str(res.get("type"))] = {str(i.get("code")) for i in res.get("interaction") or ()}
        software = (cap.get("software") or {}).get("name", "")
        return Capability(
            version,
            str(software),
            "transaction" in interactions,
            "batch" in interactions,
            params,
            "history-system" in interactions,
            type_interactions,
        )

    async def read(self, rtype: str, rid: str) -> dict[str, Any] | None:  # the resource as sent: JSON, read by key
        """A resource, or None when the server says it is gone (404 or 410)."""
        response = await self.request("GET", f"{rtype}/{rid}", ok=(404, 410))
        if response.status_code in (404, 410):
            return None
        return _bundle_or_resource(response, f"{rtype}/{rid}")

    async def search(
        self, rtype: str, params: list[tuple[str, str]]
    ) -> AsyncIterator[dict[str, Any]]:  # resources as sent: JSON, read by key (push, undo) or kept as is (pull)
        """Every matching resource (entries with search.mode ``match``), page by page along ``next`` links."""
        async with contextlib.aclosing(self.pages(rtype, params)) as pages:
            async for found, _more in pages:
                for resource in found:
                    yield resource

    async def pages(
        self, rtype: str, params: list[tuple[str, str]], skipped: list[str] | None = None
    ) -> AsyncGenerator[tuple[list[JsonObject], bool], None]:
        """A search page by page along ``next`` links: each page's matching resources, and whether more follow.

        Unusable entries are reported in ``skipped`` (default: ``self.skipped``); a caller that may set pages
        aside keeps its own list, so that what it discards is not reported twice.
        """
        query = self._query(params)
        url: str | None = rtype
        guard = PageGuard(f"{rtype} search", self.settings.max_pages)
        while url is not None:
            guard.before(url)
            found, url, total = await self._page(rtype, url, query if guard.pages == 1 else None, guard.pages, skipped)
            guard.after(found, total, url)
            yield found, url is not None

    def _query(self, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        query = [*params]
        if not any(k == "_count" for k, _ in query):
            query.append(("_count", str(self.settings.page_size)))
        return query

    async def _page(
        self, rtype: str, url: str, query: list[tuple[str, str]] | None, page: int, skipped: list[str] | None = None
    ) -> tuple[list[JsonObject], str | None, JsonValue]:
        """One search page: its usable matching resources, the ``next`` link's URL (or None), its ``total``."""
        response = await self.request("GET", url, params=query, headers={"Prefer": "handling=strict"})
        bundle = _bundle_or_resource(response, f"{rtype} search page {page}")
        if bundle.get("resourceType") != "Bundle":
            raise ServerError(
                f"{rtype} search page {page} is not a Bundle",
                response.status_code,
                request=request_of("GET", url),
            )
        found: list[JsonObject] = []
        reports = self.skipped if skipped is None else skipped
        entries = bundle.get("entry")
        for n, entry in enumerate(entries if isinstance(entries, list) else (), start=1):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            mode = (member(entry, "search") or {}).get("mode", "match")
            if mode != "match":
                continue
            problem = unusable(resource)
            if problem or not isinstance(resource, dict):  # reported, not kept: two id-less entries would be one
                reports.append(f"{rtype} search page {page} entry {n}: {problem}")
                continue
            found.append(resource)
        return found, self._next_link(bundle, rtype, page), bundle.get("total")

    def _next_link(self, bundle: JsonObject, rtype: str, page: int) -> str | None:
        for link in items(bundle, "link"):
            target = text(link, "url")
            if link.get("relation") == "next" and target is not None:
                here, there = urlsplit(self.base), urlsplit(target)
                if there.netloc and origin(target) != origin(self.base):  # the unit of trust, as for the token
                    # Often a proxy in front of the server that was not told its public address: the server
                    # then builds its links from its own. Not followed: the token would go there too.
                    raise ServerError(
                        f"{rtype} search page {page}: the next link points to {there.scheme}://{there.netloc}, "
                        f"not to --server ({here.scheme}://{here.netloc}); not followed. If that is the same "
                        "server behind a proxy, its public base URL needs setting on the server",
                        request=request_of("GET", target),
                    )
                return target
        return None

    async def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:  # write-back Bundles: JSON, built by push
        """POST a transaction or batch Bundle to the base; the response Bundle.

        ``Prefer: return=minimal``: only each entry's status and location are read, so the server need not
        send every written resource back.
        """
        response = await self.request("POST", "", json=bundle, headers={"Prefer": RETURN_MINIMAL})
        return _bundle_or_resource(response, f"{bundle.get('type', 'transaction')} Bundle")


def _bundle_or_resource(response: httpx.Response, what: str) -> JsonObject:
    """The answer's FHIR resource (a Bundle, or the resource read): JSON, read by its caller."""
    request = request_of(response.request.method, str(response.request.url))
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise ServerError(
            f"{what}: the server's answer is not JSON (HTTP {response.status_code})",
            response.status_code,
            request=request,
        ) from None
    if not isinstance(body, dict) or "resourceType" not in body:
        raise ServerError(f"{what}: the server's answer is not a FHIR resource", response.status_code, request=request)
    return body


def _server_time(response: httpx.Response) -> datetime:
    """The server's clock from its Date header (watermarks must be in the server's time), else ours."""
    value = response.headers.get("Date")
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value)
            return when if when.tzinfo else when.replace(tzinfo=UTC)
        except (TypeError, ValueError):
            pass
    return datetime.now(UTC)


def unusable(resource: JsonValue) -> str | None:
    """Why a search entry's resource cannot be kept (None when it can)."""
    if not isinstance(resource, dict):
        return "no resource"
    problem = type_problem(resource.get("resourceType"))  # a type names files (pull, sync): R4's names only
    if problem:
        return problem
    if not isinstance(resource.get("id"), str) or not resource["id"]:
        return f"{resource['resourceType']} without id"
    return None


def request_target(url: str) -> str:
    """The request target without its query string (search values can name patients)."""
    return url.split("?", 1)[0] or "/"


def request_of(method: str, url: str) -> ServerRequest:
    """A request as errors name it: the method and the target without its query string."""
    return ServerRequest(method, request_target(url))


def certificate_refused(exc: BaseException) -> str | None:
    """What to tell the user when ``exc`` comes from a server certificate that failed verification, else None."""
    reason = _refused_certificate(exc)
    if reason is None:
        return None
    return (
        f"the server's TLS certificate was not accepted ({reason}); if it is signed by the hospital's own CA, "
        "give that CA with --ca-bundle FILE (verification is never turned off)"
    )


def _refused_certificate(exc: BaseException) -> str | None:
    """The reason when ``exc`` comes from a server certificate that failed verification, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or current.reason or "certificate verify failed")
        current = current.__cause__ or current.__context__
    return None


def _transport_reason(exc: httpx.TransportError) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__

"""Push a write-back Bundle to a FHIR server, and account for every write.

``push`` sends ``writeback.json`` as transactions when the server's CapabilityStatement offers them, else as
batches, else entry by entry (``mode`` auto), in parts of whole patients (``chunk`` entries at most). Each entry
ends with one outcome, counted in ``PushSummary.outcomes``:

- ``created``, ``updated``, ``unchanged`` (a conditional create that found its match): applied;
- ``conflict``: 412, the server's copy changed since evaluate read it;
- ``error``: the server refused the entry (its OperationOutcome text is kept);
- ``not applied``: a transaction the server answered with anything but one response entry per request entry
  (R4 3.1.0.11: a ``transaction-response`` Bundle, entries in order), e.g. ``200`` with an OperationOutcome;
- ``unknown``: a batch entry the server's answer left out, or a write whose answer was lost and whose fate the
  server could not tell.
Anything but the first three makes ``push`` and ``sync`` exit 13, and ``sync`` keeps its watermark.

When an answer is lost (a timeout, a connection dropped after sending: :class:`AnswerLost`), each unanswered
write is looked up on the server by its identifier (a conditional create's ``If-None-Exist``, an update's
resource and version) before it is counted; what was not applied is sent once more, which the conditional
writes make safe.

In ``auto`` mode the server's limits are learnt as the push goes (``TransactionLimit``): a transaction
refused for its size (413, or a 400 that says so, as Medplum's "too many entries") is split in halves, and
later parts are cut to the size that worked; a patient whose entries still cannot go as one transaction is
sent as a batch (each write conditional and idempotent, but not atomic), and named in the summary. What was
learnt is returned (``PushSummary.limit``) for the sync store to remember per server; the next sync starts
from twice that (``TransactionLimit.probe``), so that a limit learnt from a passing refusal does not last.

Outside a transaction, each Provenance is sent after the entries it names, naming them by their ids on the
server (a batch's entries may not refer to each other, R4 3.1.0.11.4).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import parse_qsl

import orjson

from fhiradapter.core.fhir_json import normalise_reference
from fhiradapter.core.json_types import JsonObject, JsonValue, as_object
from fhiradapter.core.writeback import Outgoing, entry_patient, outgoing, split_bundle
from fhiradapter.errors import AnswerLost, ConfigError, InputError, ServerError
from fhiradapter.shell.server.fhir_client import (
    RETRY_STATUS,
    RETURN_MINIMAL,
    Capability,
    FhirClient,
    issues_text,
    outcome_text,
)
from fhiradapter.shell.server.limits import TransactionLimit

# Entries in one transaction or batch. The hosted services document 500 (Azure Health Data Services) and 160
# (AWS HealthLake) entries per Bundle; 100 fits both. Smaller limits (Medplum: 8 entries once any is
# conditional) are learnt in auto mode. See docs/servers.md.
DEFAULT_CHUNK = 100
SETTLE_ROUNDS = 3  # look-ups and sends again for writes whose answer was lost, before they count as unknown
APPLIED = ("created", "updated", "unchanged")
NOT_APPLIED = "not applied"
UNKNOWN = "unknown"
# What servers say, in an OperationOutcome issue's diagnostics, when a transaction is refused for its size (with a
# 400; a 413 always means it).
SIZE_REFUSAL = re.compile(
    r"too many (entries|resources|operations)|has too many|more \w+ operations than allowed|"
    r"(bundle|transaction) (is )?too (large|big)|bundle size|maximum (number of )?(entries|resources)|"
    r"exceeds? the maximum\b[^.]*\b(entries|resources)|entity too large",
    re.IGNORECASE,
)
# The 4xx answers about one entry (412 included), counted for it. Not these, which stop the push: 401, 403
# and 405 (no write would succeed), and what the client retries (408, 429), raised once the retries are spent.
STOP_STATUS = (401, 403, 405)
# How a write-back is sent: auto (the server's capability and limits decide), or one way for every part.
PushMode = Literal["auto", "transaction", "batch", "single"]
PUSH_MODES: dict[str, PushMode] = {"auto": "auto", "transaction": "transaction", "batch": "batch", "single": "single"}


def push_mode(name: str) -> PushMode:
    """``--mode``'s value as a push mode; a ConfigError naming the choices when it is none."""
    try:
        return PUSH_MODES[name]
    except KeyError:
        raise ConfigError(f"push mode {name!r}: one of {', '.join(PUSH_MODES)}") from None


ENTRY_REFUSALS = tuple(s for s in range(400, 500) if s not in (*STOP_STATUS, *RETRY_STATUS))


class WriteRecord(NamedTuple):
    """One entry sent and what became of it."""

    method: str
    url: str
    condition: str | None  # the conditional create's If-None-Exist
    status: int  # the HTTP status (0: no answer)
    location: str | None  # where the server says it was written
    outcome: str  # created | updated | unchanged | conflict | error | not applied | unknown


@dataclass
class PushSummary:
    mode: str
    parts: int = 1
    # A WriteRecord per entry sent: what the sync store records (typed as the tuples its signature takes)
    written: list[tuple[str, str, str | None, int, str | None, str]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    conflicts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    non_atomic: list[str] = field(default_factory=list)  # patients written as a batch: too large for a transaction
    limit: TransactionLimit | None = None  # what the server takes in one transaction (learnt, or given)
    size_refusals: int = 0  # transactions this push saw refused for their size
    found_after_lost_answer: int = 0  # writes whose answer was lost, found applied on the server
    lowest_concurrency: int = 0  # the adaptive limit's lowest point (below --concurrency: the server was slow)
    concurrency: int = 0  # --concurrency
    requests: int = 0
    retries: int = 0

    @property
    def complete(self) -> bool:
        """Every entry applied (or already there)."""
        return not (self.conflicts or self.errors)

    def notes(self) -> list[str]:
        """What the push adapted to (the server's transaction size, a slow server, lost answers), in words."""
        notes = []
        if self.non_atomic:
            shown = ", ".join(self.non_atomic[:5]) + (" ..." if len(self.non_atomic) > 5 else "")
            notes.append(
                f"{len(self.non_atomic)} patient(s) had more results than the server takes in one transaction and "
                f"were written as a batch (each write conditional, but not atomic): {shown}"
            )
        if self.limit and self.mode == "transaction" and self.size_refusals:
            notes.append(
                f"the server refuses transactions of {self.limit.refused_at} entries or more: they went in parts of "
                f"at most {self.limit.max_entries}"
            )
        if self.found_after_lost_answer:
            notes.append(f"{self.found_after_lost_answer} write(s) whose answer was lost were found applied")
        if self.lowest_concurrency and self.lowest_concurrency < self.concurrency:
            notes.append(
                "the server was slow or asked for less (timeouts, 429, 503): requests in flight went down to "
                f"{self.lowest_concurrency} of {self.concurrency}"
            )
        return notes


def load_bundle(path: Path) -> JsonObject:
    """writeback.json as JSON (read as written: push sends its entries as they are), checked to be a
    transaction or batch Bundle."""
    try:
        bundle = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path} not found") from None
    except OSError as exc:
        raise InputError(f"{path} unreadable: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        raise InputError(f"{path} is not JSON") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InputError(f"{path} is not a FHIR Bundle")
    if bundle.get("type") not in ("transaction", "batch"):
        raise InputError(f"{path} is a {bundle.get('type')!r} Bundle; push needs a transaction or batch")
    return bundle


def outcome_of(method: str, status: int) -> str:
    """An entry's outcome from its HTTP status."""
    if status == 201:
        return "created"
    if status == 200:
        return "updated" if method == "PUT" else "unchanged"  # a conditional create that found its match
    if status == 304:
        return "unchanged"
    if status == 412:
        return "conflict"
    return "error"


def refused_for_size(exc: ServerError) -> bool:
    """Whether a refused transaction was refused for its size (so that smaller ones may pass)."""
    if exc.status == 413:
        return True
    # A 400 says it only in words: in its OperationOutcome's diagnostics (never the request's URL).
    return exc.status == 400 and any(SIZE_REFUSAL.search(issue.diagnostics) for issue in exc.issues)


async def push(
    client: FhirClient,
    bundle: JsonObject,
    mode: PushMode = "auto",
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] | None = None,
    cap: Capability | None = None,
    limit: TransactionLimit | None = None,
) -> PushSummary:
    """Apply a write-back Bundle; ``mode`` auto | transaction | batch | single (see the module docstring).

    ``cap``: the server's capabilities when the caller has just read them (sync, from its pull); else
    /metadata is read. ``limit``: what this server took in one transaction before (the sync store's memory);
    parts are cut to it from the start.
    """
    entries = outgoing(bundle)
    if cap is None:
        cap = await client.capabilities()
    client.limit.watch_from_now()  # the slow-server note speaks of this push only
    adaptive = mode == "auto"
    if mode == "auto":
        mode = "transaction" if cap.transaction else "batch" if cap.batch else "single"
    summary = PushSummary(mode, limit=limit if adaptive else None)
    if entries:
        sender = _Sender(client, _Ledger(summary, progress))
        if mode in ("transaction", "batch"):
            size = min(chunk, summary.limit.max_entries) if summary.limit else chunk
            parts = split_bundle({**bundle, "type": mode}, max(1, size))
            summary.parts = len(parts)
            await _Parts(sender, summary, adaptive).send(parts, client.settings.concurrency)
        else:
            await sender.one_by_one(entries)
    summary.requests, summary.retries = client.requests, client.retries
    summary.lowest_concurrency, summary.concurrency = client.limit.lowest, client.settings.concurrency
    return summary


async def _run_all(jobs: Iterable[Coroutine[object, object, None]]) -> None:
    """Run the jobs side by side; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(job)
    except ExceptionGroup as errors:
        raise errors.exceptions[0] from None


def _split_provenance(entries: list[Outgoing]) -> tuple[list[Outgoing], list[Outgoing]]:
    """The entries other than Provenance, and the Provenance entries."""
    return [e for e in entries if not e.is_provenance], [e for e in entries if e.is_provenance]


def _with_entries(bundle: JsonObject, entries: list[Outgoing]) -> JsonObject:
    """``bundle`` holding ``entries`` only."""
    return {**bundle, "entry": [e.entry for e in entries]}


class _Ledger:
    """The record of what was written: each entry's outcome counted in the summary, and the progress."""

    def __init__(self, summary: PushSummary, progress: Callable[[int], None] | None) -> None:
        self.summary, self._progress = summary, progress

    def progress(self, n: int) -> None:
        if self._progress and n:
            self._progress(n)

    def count(
        self,
        sent: Outgoing,
        status: int,
        response: JsonObject,
        reason: str = "",
        outcome: str | None = None,
        location: str | None = None,
    ) -> str | None:
        """Count an entry's outcome from its ``response`` element (status, location, outcome); return where it
        was written (the server's Location, or an update's URL), None when it was not applied."""
        summary, method, where = self.summary, sent.method, sent.url
        outcome = outcome or outcome_of(method, status)
        summary.outcomes[outcome] += 1
        given = response.get("location")
        location = location or (str(given) if given else None)
        summary.written.append(WriteRecord(method, where, sent.if_none_exist, status, location, outcome))
        if outcome == "conflict":
            summary.conflicts.append(f"{method} {where}: 412, the server's copy changed since it was read")
        elif outcome == "error":
            reason = reason or issues_text(response.get("outcome"))[:300]
            summary.errors.append(f"{method} {where}: HTTP {status or '?'}" + (f": {reason}" if reason else ""))
        elif outcome == UNKNOWN and reason:
            summary.errors.append(f"{method} {where}: unknown whether applied, {reason}")
        if outcome not in APPLIED:
            return None
        # An update is where it was sent; servers need not give a Location for it.
        return location if location else where if method == "PUT" else None

    def count_refused(self, entries: list[Outgoing], exc: ServerError) -> None:
        """A whole part the server refused: each entry counted, so that the other parts still go and every
        entry ends with an outcome. 401, 403 and 405 stop the push (no write would succeed)."""
        if exc.status in STOP_STATUS:
            raise exc
        if exc.status is not None and 400 <= exc.status < 500:
            outcome, why = "error", f"refused with the rest of its part: {exc}"
        else:  # failed after its retries (5xx, no answer): the server may have applied some of it
            outcome, why = UNKNOWN, f"its part failed: {exc}"
        for sent in entries:
            self.count(sent, exc.status or 0, {}, outcome=outcome, reason=why)

    def count_conflict(self, entries: list[Outgoing], exc: ServerError) -> None:
        """A transaction refused with 412: none of it written."""
        self.summary.outcomes["conflict"] += len(entries)
        self.summary.conflicts.append(
            f"a transaction of {len(entries)} entries was refused, none of them written: {exc}"
        )

    def count_transaction(self, answer: JsonObject, entries: list[Outgoing]) -> None:
        """Each entry's outcome from a transaction's answer: one response entry per entry, in order (R4), or
        the whole part counts as not applied."""
        answered = _answer_entries(answer, "transaction-response")
        if answered is None or len(answered) != len(entries):
            for sent in entries:
                self.count(sent, 0, {}, outcome=NOT_APPLIED)
            why = _bad_answer(answer, "transaction-response", len(entries))
            self.summary.errors.append(
                f"a transaction of {len(entries)} entries counts as not applied: the server answered {why}"
            )
            return
        for sent, got in zip(entries, answered, strict=True):
            self.count(sent, _status(got), as_object(got.get("response")))

    def count_batch(self, answer: JsonObject, entries: list[Outgoing]) -> dict[str, str]:
        """Each entry's outcome from a batch's answer (one left unanswered counts as unknown); where each was
        written, by fullUrl."""
        located: dict[str, str] = {}
        answered = _answer_entries(answer, "batch-response") or []
        for sent, got in zip(entries, answered, strict=False):
            _locate(located, sent, self.count(sent, _status(got), as_object(got.get("response"))))
        missing = entries[len(answered) :]
        for sent in missing:
            self.count(sent, 0, {}, outcome=UNKNOWN)
        if missing:
            why = _bad_answer(answer, "batch-response", len(entries))
            self.summary.errors.append(
                f"a batch of {len(entries)} entries: the server answered {why}; "
                f"{len(missing)} write(s) left unanswered count as unknown"
            )
        return located


class _Sender:
    """Sending: one entry as its own request, a transaction, a batch; every answer counted in the ledger.
    A write whose answer was lost is handed to :class:`_LostAnswers` unless the caller settles it."""

    def __init__(self, client: FhirClient, ledger: _Ledger) -> None:
        self.client, self.ledger = client, ledger
        self.lost = _LostAnswers(self)

    async def one(self, sent: Outgoing, settle: bool = True) -> str | None:
        """One entry as its own request; a refusal of that entry alone (a 4xx) is counted, not raised."""
        headers = {"Prefer": RETURN_MINIMAL}  # status and Location are all that is read
        if sent.if_none_exist:
            headers["If-None-Exist"] = sent.if_none_exist
        if sent.if_match:
            headers["If-Match"] = sent.if_match
        try:
            response = await self.client.request(
                sent.method, sent.url, json=sent.resource, headers=headers, ok=ENTRY_REFUSALS
            )
        except AnswerLost:
            if not settle:
                raise
            return (await self.lost.settle([sent])).get(str(sent.full_url))
        status = response.status_code
        reason = outcome_text(response) if status >= 400 and status != 412 else ""
        return self.ledger.count(sent, status, {"location": response.headers.get("Location")}, reason)

    async def provenance(self, sent: Outgoing, located: dict[str, str], settle: bool = True) -> None:
        """A Provenance sent after its targets: each ``urn:uuid`` target replaced by where it was written."""
        targets = sent.resource.get("target")
        references = [as_object(t).get("reference") for t in targets] if isinstance(targets, list) else []
        resolved: list[JsonValue] = [
            {"reference": located[r]} for r in references if isinstance(r, str) and r in located
        ]
        if not resolved:  # nothing of its part was written: a Provenance of nothing is not sent
            return
        resource: JsonObject = {**sent.resource, "target": resolved}
        _locate(
            located,
            sent,
            await self.one(sent._replace(resource=resource, entry={**sent.entry, "resource": resource}), settle),
        )

    async def transaction(self, bundle: JsonObject, entries: list[Outgoing]) -> None:
        """A transaction, its answer counted; a 412 counts every entry as a conflict; a lost answer is settled."""
        try:
            answer = await self.client.transaction(bundle)
        except AnswerLost:
            await self.lost.settle(entries, transaction=bundle)
            return
        except ServerError as exc:
            if exc.status != 412:
                raise
            self.ledger.count_conflict(entries, exc)
            return
        self.ledger.count_transaction(answer, entries)

    async def batch(self, bundle: JsonObject, entries: list[Outgoing]) -> None:
        """A batch without its Provenance, which follows, naming what was written by the ids the server gave."""
        results, provenances = _split_provenance(entries)
        located: dict[str, str] = {}
        if results:
            try:
                answer = await self.client.transaction(_with_entries(bundle, results))
            except AnswerLost:
                located = await self.lost.settle(results)
            else:
                located = self.ledger.count_batch(answer, results)
        for sent in provenances:
            await self.provenance(sent, located)

    async def batch_or_count(self, bundle: JsonObject, entries: list[Outgoing]) -> None:
        """A batch; a refusal of the whole request is counted for each of its entries, not raised."""
        try:
            await self.batch(bundle, entries)
        except ServerError as exc:
            self.ledger.count_refused(entries, exc)
        self.ledger.progress(len(entries))

    async def one_by_one(self, entries: list[Outgoing]) -> None:
        """Each entry as its own request, side by side; the Provenances last, naming the server ids."""
        results, provenances = _split_provenance(entries)
        located: dict[str, str] = {}

        async def one(sent: Outgoing) -> None:
            _locate(located, sent, await self.one(sent))
            self.ledger.progress(1)

        await _run_all(one(sent) for sent in results)  # within the client's concurrency
        for sent in provenances:
            await self.provenance(sent, located)
            self.ledger.progress(1)


class _LostAnswers:
    """Writes whose answer was lost (:class:`AnswerLost`): looked up on the server by their identifier, counted
    when found, sent once more when not (the conditional writes make that safe)."""

    def __init__(self, sender: _Sender) -> None:
        self.sender = sender

    async def settle(self, entries: list[Outgoing], transaction: JsonObject | None = None) -> dict[str, str]:
        """Writes whose answer was lost: look each up on the server; count what was applied; send the rest again
        (conditional writes make that safe), up to ``SETTLE_ROUNDS`` times; count what still cannot be told as
        unknown.

        ``transaction``: the entries were one transaction; when none of it was applied it is sent again whole.
        Returns where each entry was written, by fullUrl.
        """
        located: dict[str, str] = {}
        pending = list(entries)
        ledger = self.sender.ledger
        for _round in range(SETTLE_ROUNDS):
            places = await asyncio.gather(*(_find_written(self.sender.client, sent) for sent in pending))
            missing = []
            for sent, where in zip(pending, places, strict=True):
                if isinstance(where, str):
                    ledger.summary.found_after_lost_answer += 1
                    status = 201 if sent.method == "POST" else 200
                    _locate(located, sent, ledger.count(sent, status, {}, location=where))
                elif isinstance(where, _Unknown):
                    ledger.count(sent, 0, {}, outcome=UNKNOWN, reason=where.reason)
                else:
                    missing.append(sent)
            if not missing:
                return located
            pending = await self._send_again(missing, located, transaction if len(missing) == len(entries) else None)
            if not pending:
                return located
        for sent in pending:
            ledger.count(sent, 0, {}, outcome=UNKNOWN, reason=f"its answer was lost {SETTLE_ROUNDS + 1} times")
        return located

    async def _send_again(
        self, missing: list[Outgoing], located: dict[str, str], transaction: JsonObject | None
    ) -> list[Outgoing]:
        """Send again what a look-up found not applied; return what lost its answer again (to look up)."""
        if transaction is not None:  # nothing of the transaction was applied: it goes again whole
            try:  # a second loss is looked up again, not settled here
                self.sender.ledger.count_transaction(await self.sender.client.transaction(transaction), missing)
            except AnswerLost:
                return missing
            return []
        # Each entry as it stands (a Provenance already names server ids), the Provenance last.
        results, provenances = _split_provenance(missing)
        lost: list[Outgoing] = []

        async def again(sent: Outgoing) -> None:
            try:
                _locate(located, sent, await self.sender.one(sent, settle=False))
            except AnswerLost:
                lost.append(sent)

        await _run_all(again(sent) for sent in results)
        for sent in provenances:
            try:
                if _names_urns(sent):
                    await self.sender.provenance(sent, located, settle=False)
                else:
                    _locate(located, sent, await self.sender.one(sent, settle=False))
            except AnswerLost:
                lost.append(sent)
        return lost


def _names_urns(provenance: Outgoing) -> bool:
    """Whether a Provenance still names some of its targets by their ``urn:uuid`` in the Bundle."""
    targets = provenance.resource.get("target")
    listed = targets if isinstance(targets, list) else []
    return any(str(as_object(t).get("reference", "")).startswith("urn:") for t in listed)


class _Parts:
    """Parts sent from one queue, and the transaction-limit handling: a part larger than what the server was
    found to take is cut before it is sent; a transaction refused for its size is cut in halves and the limit
    learnt; one patient's part that no transaction can hold goes as a batch."""

    def __init__(self, sender: _Sender, summary: PushSummary, adaptive: bool) -> None:
        self.sender, self.summary, self.adaptive = sender, summary, adaptive

    async def send(self, parts: list[JsonObject], concurrency: int) -> None:
        """Send the parts, ``concurrency`` at a time: a part taken after the server refused a transaction for its
        size is cut to what the server takes before it is sent."""
        queue: asyncio.Queue[JsonObject] = asyncio.Queue()
        for part in parts:
            queue.put_nowait(part)

        async def worker() -> None:
            while True:
                part = await queue.get()
                try:
                    for piece in await self.part(part):
                        queue.put_nowait(piece)
                finally:
                    queue.task_done()

        try:
            async with asyncio.TaskGroup() as group:
                workers = [group.create_task(worker()) for _ in range(max(1, concurrency))]
                await queue.join()
                for task in workers:
                    task.cancel()
        except ExceptionGroup as errors:
            raise errors.exceptions[0] from None

    async def part(self, part: JsonObject) -> list[JsonObject]:
        """Send one part; return the smaller parts to send instead when it must be cut."""
        entries = outgoing(part)
        limit = self.summary.limit
        if part.get("type") == "transaction" and limit and len(entries) > limit.max_entries:
            pieces = self._cut(part, limit.max_entries)
            if pieces:
                return pieces
            if len(entries) >= limit.refused_at:  # one patient, more than the server takes in a transaction
                return await self._as_batch(part, entries)
        if part.get("type") == "batch":
            await self.sender.batch_or_count(part, entries)
            return []
        try:
            await self.sender.transaction(part, entries)
        except ServerError as exc:
            if not (self.adaptive and refused_for_size(exc)):
                self.sender.ledger.count_refused(entries, exc)
                self.sender.ledger.progress(len(entries))
                return []
            return await self._refused_for_size(part, entries)
        self.sender.ledger.progress(len(entries))
        return []

    async def _refused_for_size(self, part: JsonObject, entries: list[Outgoing]) -> list[JsonObject]:
        """A transaction refused for its size: the limit learnt, and the part cut in halves (or, one patient's,
        sent as a batch)."""
        self.summary.size_refusals += 1
        known = self.summary.limit  # another part may have learnt a smaller limit meanwhile
        start = known or TransactionLimit(len(entries), len(entries))
        self.summary.limit = start.refused(len(entries))
        return self._cut(part, self.summary.limit.max_entries) or await self._as_batch(part, entries)

    def _cut(self, part: JsonObject, max_entries: int) -> list[JsonObject]:
        """``part`` in pieces of at most ``max_entries`` (whole patients); empty when it cannot be cut."""
        pieces = split_bundle(part, max_entries)
        if len(pieces) <= 1:
            return []
        self.summary.parts += len(pieces) - 1
        return pieces

    async def _as_batch(self, part: JsonObject, entries: list[Outgoing]) -> list[JsonObject]:
        """A part of one patient that no transaction can hold: sent as a batch, and named in the summary."""
        patients = {p for e in entries if (p := entry_patient(e.entry))}
        self.summary.non_atomic.extend(sorted(patients))
        await self.sender.batch_or_count({**part, "type": "batch"}, entries)
        return []


@dataclass(frozen=True)
class _Unknown:
    reason: str


async def _find_written(client: FhirClient, sent: Outgoing) -> str | _Unknown | None:
    """Where a write whose answer was lost stands on the server: ``Type/id`` if applied, None if not."""
    method, url, resource = sent.method, sent.url, sent.resource
    try:
        if method == "POST" and sent.if_none_exist:
            params = parse_qsl(sent.if_none_exist, keep_blank_values=True)
            matches = [r async for r in client.search(url, params)]
            if len(matches) > 1:
                return _Unknown(f"{len(matches)} resources on the server have its identifier")
            return f"{url}/{matches[0]['id']}" if matches else None
        if method == "PUT" and url.count("/") == 1:
            rtype, rid = url.split("/")
            current: JsonObject | None = await client.read(rtype, rid)  # the server's JSON
            if current is None:
                return None
            if all(current.get(k) == v for k, v in resource.items() if k not in ("meta", "id", "text")):
                return url
            expected = sent.if_match or ""
            if expected and f'"{as_object(current.get("meta")).get("versionId")}"' in expected:
                return None  # still the version the update was meant for: not applied
            return _Unknown("the server's copy differs from what was sent and from what was read")
    except ServerError as exc:
        return _Unknown(f"looking it up failed: {exc}")
    return _Unknown("it has no identifier to look it up by")


def _answer_entries(answer: JsonObject, kind: str) -> list[JsonObject] | None:
    """A transaction or batch answer's entries, when it is a ``kind`` Bundle (else None)."""
    if answer.get("resourceType") != "Bundle" or answer.get("type") != kind:
        return None
    entries = answer.get("entry") or []
    return [as_object(e) for e in entries] if isinstance(entries, list) else None


def _bad_answer(answer: JsonObject, kind: str, sent: int) -> str:
    """What was wrong with a transaction or batch answer, in words."""
    rtype = answer.get("resourceType")
    if rtype == "OperationOutcome":
        text = issues_text(answer)
        return "with an OperationOutcome instead of a Bundle" + (f" ({text[:200]})" if text else "")
    if rtype != "Bundle":
        return f"with a {rtype or 'non-FHIR'} resource instead of a {kind} Bundle"
    if answer.get("type") != kind:
        return f"with a {answer.get('type')!r} Bundle instead of a {kind}"
    listed = answer.get("entry")
    got = len(listed) if isinstance(listed, list) else 0
    return f"{got} response entr{'y' if got == 1 else 'ies'} for {sent} sent (R4 requires one per entry, in order)"


def _status(entry: JsonObject) -> int:
    """The leading digits of ``response.status`` ("201" and "201 Created" both occur)."""
    text = str(as_object(entry.get("response")).get("status", ""))
    digits = text.split(" ", 1)[0]
    return int(digits) if digits.isdigit() else 0


def _locate(located: dict[str, str], sent: Outgoing, location: str | None) -> None:
    """Note where an entry was written (``Type/id``, from the server's Location), under its fullUrl."""
    where = normalise_reference(location)
    if where and sent.full_url is not None:
        located[sent.full_url] = where

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
from typing import Any
from urllib.parse import parse_qsl

import orjson

from fhiradapter.core.fhir_json import normalise_reference
from fhiradapter.core.writeback import entry_patient, split_bundle
from fhiradapter.errors import AnswerLost, InputError, ServerError
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
# What servers say when a transaction is refused for its size (with a 400; a 413 always means it).
SIZE_REFUSAL = re.compile(
    r"too many (entries|resources|operations)|has too many|more \w+ operations than allowed|"
    r"(bundle|transaction) (is )?too (large|big)|bundle size|maximum (number of )?(entries|resources)|"
    r"exceeds? the maximum\b[^.]*\b(entries|resources)|entity too large",
    re.IGNORECASE,
)
# The 4xx answers about one entry (412 included), counted for it. Not these, which stop the push: 401, 403
# and 405 (no write would succeed), and what the client retries (408, 429), raised once the retries are spent.
STOP_STATUS = (401, 403, 405)
ENTRY_REFUSALS = tuple(s for s in range(400, 500) if s not in (*STOP_STATUS, *RETRY_STATUS))
Entry = dict[str, Any]


@dataclass
class PushSummary:
    mode: str
    parts: int = 1
    # (method, url, condition, status, location, outcome) per entry sent: what the sync store records
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


def load_bundle(path: Path) -> dict[str, Any]:
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
    return exc.status == 413 or (exc.status == 400 and SIZE_REFUSAL.search(exc.outcome) is not None)


async def push(
    client: FhirClient,
    bundle: dict[str, Any],
    mode: str = "auto",
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
    entries = [e for e in bundle.get("entry") or () if isinstance(e, dict)]
    if cap is None:
        cap = await client.capabilities()
    client.limit.watch_from_now()  # the slow-server note speaks of this push only
    adaptive = mode == "auto"
    if mode == "auto":
        mode = "transaction" if cap.transaction else "batch" if cap.batch else "single"
    summary = PushSummary(mode, limit=limit if adaptive else None)
    if entries:
        writer = _Writer(client, summary, progress, adaptive)
        if mode in ("transaction", "batch"):
            size = min(chunk, summary.limit.max_entries) if summary.limit else chunk
            parts = split_bundle({**bundle, "type": mode}, max(1, size))
            summary.parts = len(parts)
            await writer.parts(parts)
        else:
            await writer.one_by_one(entries)
    summary.requests, summary.retries = client.requests, client.retries
    summary.lowest_concurrency, summary.concurrency = client.limit.lowest, client.settings.concurrency
    return summary


async def _run_all(jobs: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run the jobs side by side; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(job)
    except ExceptionGroup as errors:
        raise errors.exceptions[0] from None


def _split_provenance(entries: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """The entries other than Provenance, and the Provenance entries."""
    results: list[Entry] = []
    provenances: list[Entry] = []
    for e in entries:
        (provenances if (e.get("resource") or {}).get("resourceType") == "Provenance" else results).append(e)
    return results, provenances


def _entries(bundle: dict[str, Any]) -> list[Entry]:
    return [e for e in bundle.get("entry") or () if isinstance(e, dict)]


class _Writer:
    """One push: the client, what has been counted, and what it learnt of the server's transaction size."""

    def __init__(
        self, client: FhirClient, summary: PushSummary, progress: Callable[[int], None] | None, adaptive: bool
    ) -> None:
        self.client, self.summary, self.progress, self.adaptive = client, summary, progress, adaptive

    def _progress(self, n: int) -> None:
        if self.progress and n:
            self.progress(n)

    # ------------------------------------------------------------------------------------------------ parts

    async def parts(self, parts: list[dict[str, Any]]) -> None:
        """Send the parts from one queue, ``concurrency`` at a time: a part taken after the server refused a
        transaction for its size is cut to what the server takes before it is sent."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for part in parts:
            queue.put_nowait(part)

        async def worker() -> None:
            while True:
                part = await queue.get()
                try:
                    for piece in await self._part(part):
                        queue.put_nowait(piece)
                finally:
                    queue.task_done()

        try:
            async with asyncio.TaskGroup() as group:
                workers = [group.create_task(worker()) for _ in range(max(1, self.client.settings.concurrency))]
                await queue.join()
                for task in workers:
                    task.cancel()
        except ExceptionGroup as errors:
            raise errors.exceptions[0] from None

    async def _part(self, part: dict[str, Any]) -> list[dict[str, Any]]:
        """Send one part; return the smaller parts to send instead when it must be cut."""
        entries = _entries(part)
        limit = self.summary.limit
        if part.get("type") == "transaction" and limit and len(entries) > limit.max_entries:
            pieces = split_bundle(part, limit.max_entries)
            if len(pieces) > 1:
                self.summary.parts += len(pieces) - 1
                return pieces
            if len(entries) >= limit.refused_at:  # one patient, more than the server takes in a transaction
                return await self._as_batch(part)
        if part.get("type") == "batch":
            await self._refused_whole(self._batch(part, entries), entries)
            self._progress(len(entries))
            return []
        try:
            await self._transaction(part, entries)
        except ServerError as exc:
            if not (self.adaptive and refused_for_size(exc)):
                self._count_refused(entries, exc)
                self._progress(len(entries))
                return []
            self.summary.size_refusals += 1
            known = self.summary.limit  # another part may have learnt a smaller limit meanwhile
            start = known or TransactionLimit(len(entries), len(entries))
            self.summary.limit = start.refused(len(entries))
            pieces = split_bundle(part, self.summary.limit.max_entries)
            if len(pieces) > 1:
                self.summary.parts += len(pieces) - 1
                return pieces
            return await self._as_batch(part)
        self._progress(len(entries))
        return []

    async def _refused_whole(self, sending: Coroutine[Any, Any, None], entries: list[Entry]) -> None:
        """Send a batch; a refusal of the whole request is counted for each of its entries, not raised."""
        try:
            await sending
        except ServerError as exc:
            self._count_refused(entries, exc)

    def _count_refused(self, entries: list[Entry], exc: ServerError) -> None:
        """A whole part the server refused: each entry counted, so that the other parts still go and every
        entry ends with an outcome. 401, 403 and 405 stop the push (no write would succeed)."""
        if exc.status in STOP_STATUS:
            raise exc
        if exc.status is not None and 400 <= exc.status < 500:
            outcome, why = "error", f"refused with the rest of its part: {exc}"
        else:  # failed after its retries (5xx, no answer): the server may have applied some of it
            outcome, why = UNKNOWN, f"its part failed: {exc}"
        for sent in entries:
            self._count(sent, exc.status or 0, {}, outcome=outcome, reason=why)

    async def _as_batch(self, part: dict[str, Any]) -> list[dict[str, Any]]:
        """A part of one patient that no transaction can hold: sent as a batch, and named in the summary."""
        entries = _entries(part)
        patients = {p for e in entries if (p := entry_patient(e))}
        self.summary.non_atomic.extend(sorted(patients))
        await self._refused_whole(self._batch({**part, "type": "batch"}, entries), entries)
        self._progress(len(entries))
        return []

    async def _transaction(self, bundle: dict[str, Any], entries: list[Entry]) -> None:
        try:
            answer = await self.client.transaction(bundle)
        except AnswerLost:
            await self._settle_lost(entries, transaction=bundle)
            return
        except ServerError as exc:
            if exc.status != 412:
                raise
            self.summary.outcomes["conflict"] += len(entries)
            self.summary.conflicts.append(
                f"a transaction of {len(entries)} entries was refused, none of them written: {exc}"
            )
            return
        self._count_transaction(answer, entries)

    async def _batch(self, bundle: dict[str, Any], entries: list[Entry]) -> None:
        """A batch without its Provenance, which follows, naming what was written by the ids the server gave."""
        results, provenances = _split_provenance(entries)
        located: dict[str, str] = {}
        if results:
            try:
                answer = await self.client.transaction({**bundle, "entry": results})
            except AnswerLost:
                located = await self._settle_lost(results)
            else:
                answered = _answer_entries(answer, "batch-response") or []
                for sent, got in zip(results, answered, strict=False):
                    _locate(located, sent, self._count(sent, _status(got), got))
                missing = results[len(answered) :]
                for sent in missing:
                    self._count(sent, 0, {}, outcome=UNKNOWN)
                if missing:
                    why = _bad_answer(answer, "batch-response", len(results))
                    self.summary.errors.append(
                        f"a batch of {len(results)} entries: the server answered {why}; "
                        f"{len(missing)} write(s) left unanswered count as unknown"
                    )
        for sent in provenances:
            await self._provenance(sent, located)

    # ------------------------------------------------------------------------------------------ one by one

    async def one_by_one(self, entries: list[Entry]) -> None:
        results, provenances = _split_provenance(entries)
        located: dict[str, str] = {}

        async def one(sent: Entry) -> None:
            _locate(located, sent, await self._one(sent))
            self._progress(1)

        await _run_all(one(sent) for sent in results)  # within the client's concurrency
        for sent in provenances:  # last, naming what was written by its server ids
            await self._provenance(sent, located)
            self._progress(1)

    async def _one(self, entry: Entry, settle: bool = True) -> str | None:
        """One entry as its own request; a refusal of that entry alone (a 4xx) is counted, not raised."""
        request = entry.get("request") or {}
        method, url = str(request.get("method", "")), str(request.get("url", ""))
        headers = {"Prefer": RETURN_MINIMAL}  # status and Location are all that is read
        if request.get("ifNoneExist"):
            headers["If-None-Exist"] = str(request["ifNoneExist"])
        if request.get("ifMatch"):
            headers["If-Match"] = str(request["ifMatch"])
        try:
            response = await self.client.request(
                method, url, json=entry.get("resource"), headers=headers, ok=ENTRY_REFUSALS
            )
        except AnswerLost:
            if not settle:
                raise
            return (await self._settle_lost([entry])).get(str(entry.get("fullUrl")))
        status = response.status_code
        reason = outcome_text(response) if status >= 400 and status != 412 else ""
        return self._count(entry, status, {"response": {"location": response.headers.get("Location")}}, reason)

    async def _provenance(self, entry: Entry, located: dict[str, str], settle: bool = True) -> None:
        """A Provenance sent after its targets: each ``urn:uuid`` target replaced by where it was written."""
        resource = dict(entry.get("resource") or {})
        targets = [t for t in resource.get("target") or () if isinstance(t, dict)]
        resolved = [{"reference": located[str(t.get("reference"))]} for t in targets if t.get("reference") in located]
        if not resolved:  # nothing of its part was written: a Provenance of nothing is not sent
            return
        resource["target"] = resolved
        _locate(located, entry, await self._one({**entry, "resource": resource}, settle))

    # ------------------------------------------------------------------------------------------ lost answers

    async def _settle_lost(self, entries: list[Entry], transaction: dict[str, Any] | None = None) -> dict[str, str]:
        """Writes whose answer was lost: look each up on the server; count what was applied; send the rest again
        (conditional writes make that safe), up to ``SETTLE_ROUNDS`` times; count what still cannot be told as
        unknown.

        ``transaction``: the entries were one transaction; when none of it was applied it is sent again whole.
        Returns where each entry was written, by fullUrl.
        """
        located: dict[str, str] = {}
        pending = list(entries)
        for _round in range(SETTLE_ROUNDS):
            places = await asyncio.gather(*(_find_written(self.client, sent) for sent in pending))
            missing = []
            for sent, where in zip(pending, places, strict=True):
                if isinstance(where, str):
                    self.summary.found_after_lost_answer += 1
                    method = str((sent.get("request") or {}).get("method", ""))
                    _locate(located, sent, self._count(sent, 201 if method == "POST" else 200, {}, location=where))
                elif isinstance(where, _Unknown):
                    self._count(sent, 0, {}, outcome=UNKNOWN, reason=where.reason)
                else:
                    missing.append(sent)
            if not missing:
                return located
            pending = await self._send_again(missing, located, transaction if len(missing) == len(entries) else None)
            if not pending:
                return located
        for sent in pending:
            self._count(sent, 0, {}, outcome=UNKNOWN, reason=f"its answer was lost {SETTLE_ROUNDS + 1} times")
        return located

    async def _send_again(
        self, missing: list[Entry], located: dict[str, str], transaction: dict[str, Any] | None
    ) -> list[Entry]:
        """Send again what a look-up found not applied; return what lost its answer again (to look up)."""
        if transaction is not None:  # nothing of the transaction was applied: it goes again whole
            try:
                await self._transaction_once(transaction, missing)
            except AnswerLost:
                return missing
            return []
        # Each entry as it stands (a Provenance already names server ids), the Provenance last.
        results, provenances = _split_provenance(missing)
        lost: list[Entry] = []

        async def again(sent: Entry) -> None:
            try:
                _locate(located, sent, await self._one(sent, settle=False))
            except AnswerLost:
                lost.append(sent)

        await _run_all(again(sent) for sent in results)
        for sent in provenances:
            try:
                if any(str(t.get("reference", "")).startswith("urn:") for t in sent["resource"].get("target", ())):
                    await self._provenance(sent, located, settle=False)
                else:
                    _locate(located, sent, await self._one(sent, settle=False))
            except AnswerLost:
                lost.append(sent)
        return lost

    async def _transaction_once(self, bundle: dict[str, Any], entries: list[Entry]) -> None:
        """A transaction sent again after its first answer was lost (a second loss is raised, not settled)."""
        self._count_transaction(await self.client.transaction(bundle), entries)

    def _count_transaction(self, answer: dict[str, Any], entries: list[Entry]) -> None:
        """Each entry's outcome from a transaction's answer: one response entry per entry, in order (R4), or
        the whole part counts as not applied."""
        answered = _answer_entries(answer, "transaction-response")
        if answered is None or len(answered) != len(entries):
            for sent in entries:
                self._count(sent, 0, {}, outcome=NOT_APPLIED)
            why = _bad_answer(answer, "transaction-response", len(entries))
            self.summary.errors.append(
                f"a transaction of {len(entries)} entries counts as not applied: the server answered {why}"
            )
            return
        for sent, got in zip(entries, answered, strict=True):
            self._count(sent, _status(got), got)

    # ------------------------------------------------------------------------------------------ counting

    def _count(
        self,
        sent: Entry,
        status: int,
        got: dict[str, Any],
        reason: str = "",
        outcome: str | None = None,
        location: str | None = None,
    ) -> str | None:
        """Count an entry's outcome; return where it was written (the server's Location, or an update's URL)."""
        summary = self.summary
        request = sent.get("request") or {}
        method = str(request.get("method", ""))
        outcome = outcome or outcome_of(method, status)
        summary.outcomes[outcome] += 1
        where = str(request.get("url", ""))
        identifier = str(request.get("ifNoneExist") or "") or None
        response = (got.get("response") or {}) if isinstance(got, dict) else {}
        location = location or (str(response["location"]) if response.get("location") else None)
        summary.written.append((method, where, identifier, status, location, outcome))
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


@dataclass(frozen=True)
class _Unknown:
    reason: str


async def _find_written(client: FhirClient, sent: Entry) -> str | _Unknown | None:
    """Where a write whose answer was lost stands on the server: ``Type/id`` if applied, None if not."""
    request = sent.get("request") or {}
    method, url = str(request.get("method", "")), str(request.get("url", ""))
    resource = sent.get("resource") or {}
    try:
        if method == "POST" and request.get("ifNoneExist"):
            params = parse_qsl(str(request["ifNoneExist"]), keep_blank_values=True)
            matches = [r async for r in client.search(url, params)]
            if len(matches) > 1:
                return _Unknown(f"{len(matches)} resources on the server have its identifier")
            return f"{url}/{matches[0]['id']}" if matches else None
        if method == "PUT" and url.count("/") == 1:
            rtype, rid = url.split("/")
            current = await client.read(rtype, rid)
            if current is None:
                return None
            if all(current.get(k) == v for k, v in resource.items() if k not in ("meta", "id", "text")):
                return url
            expected = str(request.get("ifMatch") or "")
            if expected and f'"{(current.get("meta") or {}).get("versionId")}"' in expected:
                return None  # still the version the update was meant for: not applied
            return _Unknown("the server's copy differs from what was sent and from what was read")
    except ServerError as exc:
        return _Unknown(f"looking it up failed: {exc}")
    return _Unknown("it has no identifier to look it up by")


def _answer_entries(answer: dict[str, Any], kind: str) -> list[dict[str, Any]] | None:
    """A transaction or batch answer's entries, when it is a ``kind`` Bundle (else None)."""
    if answer.get("resourceType") != "Bundle" or answer.get("type") != kind:
        return None
    entries = answer.get("entry") or []
    return [e if isinstance(e, dict) else {} for e in entries] if isinstance(entries, list) else None


def _bad_answer(answer: dict[str, Any], kind: str, sent: int) -> str:
    """What was wrong with a transaction or batch answer, in words."""
    rtype = answer.get("resourceType")
    if rtype == "OperationOutcome":
        text = issues_text(answer)
        return "with an OperationOutcome instead of a Bundle" + (f" ({text[:200]})" if text else "")
    if rtype != "Bundle":
        return f"with a {rtype or 'non-FHIR'} resource instead of a {kind} Bundle"
    if answer.get("type") != kind:
        return f"with a {answer.get('type')!r} Bundle instead of a {kind}"
    got = len(answer.get("entry") or [])
    return f"{got} response entr{'y' if got == 1 else 'ies'} for {sent} sent (R4 requires one per entry, in order)"


def _status(entry: dict[str, Any]) -> int:
    """The leading digits of ``response.status`` ("201" and "201 Created" both occur)."""
    text = str((entry.get("response") or {}).get("status", ""))
    digits = text.split(" ", 1)[0]
    return int(digits) if digits.isdigit() else 0


def _locate(located: dict[str, str], sent: Entry, location: str | None) -> None:
    """Note where an entry was written (``Type/id``, from the server's Location), under its fullUrl."""
    full_url = sent.get("fullUrl")
    where = normalise_reference(location)
    if where and isinstance(full_url, str):
        located[full_url] = where

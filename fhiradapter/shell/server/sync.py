"""``fhiradapter sync``: pull what changed into the store, evaluate the study, push the results, advance the watermark.

One run:
1. ``/metadata`` (R4 check, capabilities, the server's clock); the pull's start time in the server's clock, less
   a margin for clock skew, becomes the next watermark;
2. pull into the store's mirror: everything on the first run (or ``--since none``), else only what changed after
   the watermark (``--since auto``) or an instant; deletions are noticed from the server's ``_history`` (or, on
   a full pull, as resources no longer seen);
3. evaluate the study's whole mirror (an incremental pull still evaluates whole patients) into the run folder,
   which keeps every output for the record; the write-back comes back in memory (not read from the folder);
4. push that write-back (unless ``--dry-run``; see ``push.py``), cut below the transaction size this server
   refused before (the store remembers it per server), probing twice that size on each run that writes
   (``TransactionLimit.probe``: a server that recovered gets whole transactions again). A 412 conflict
   (someone changed a resource after we read it): pull again what changed since this run started, re-evaluate,
   push once more; what still conflicts is reported;
5. only then store the new watermark. A run that dies before that leaves the old watermark: the next run pulls
   again and, since writes are conditional and the plan sees the results already on the server, writes nothing
   twice.

The whole run is one event loop with one client: the pull, the evaluation (on the loop's thread, while no
request is in flight) and the push share its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson

from fhiradapter.core.approval import Approval, StandingRule, approved_bundle, split_by_rule
from fhiradapter.core.protocol import Mappings
from fhiradapter.core.results import ProtocolIdentity
from fhiradapter.errors import AdapterError
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.outputs import Writeback, write_held
from fhiradapter.shell.run.pipeline import run_evaluate
from fhiradapter.shell.server.bulk import bulk_pull
from fhiradapter.shell.server.fhir_client import Capability, FhirClient, unusable
from fhiradapter.shell.server.pull import (
    PullSummary,
    Sink,
    logical_subjects,
    patient_of,
    pull_into,
    resolve_study,
    study_subjects,
)
from fhiradapter.shell.server.pull_folder import first_few
from fhiradapter.shell.server.push import DEFAULT_CHUNK, PushMode, PushSummary, push
from fhiradapter.shell.server.run_record import EvaluatedCounts, LimitsSeen, SyncRecord
from fhiradapter.shell.server.store import SyncStore

T = TypeVar("T")
SKEW_MARGIN = timedelta(minutes=2)
HISTORY_PAGE = 1000


@dataclass
class SyncSummary:
    run_id: int
    server: str
    study: str = ""
    since: str | None = None
    watermark: str | None = None
    dry_run: bool = False
    patients: int = 0
    pulled: Counter[str] = field(default_factory=Counter)
    deleted: int = 0
    evaluated: EvaluatedCounts | None = None  # records used / rejected (evaluate's summary); None: not evaluated
    plan: Counter[str] = field(default_factory=Counter)
    # per patient whose results the plan creates or updates: per action, how many results of each kind
    changes: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)
    in_words: dict[str, list[str]] = field(default_factory=dict)  # those changes as a reviewer reads them
    held: int = 0  # changes not covered by the standing rule: written to ``held_folder`` for a person to approve
    held_folder: Path | None = None
    approved_by: str | None = None  # the standing rule the changes written went out under
    pushed: Counter[str] = field(default_factory=Counter)
    provenances: int = 0  # of the entries pushed, the run's own Provenance records (one per transaction part)
    conflicts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    non_atomic: list[str] = field(default_factory=list)  # patients written as a batch: too large for a transaction
    # The store's transaction limit for this server as the run found it, what the run tried, and what it left.
    transaction_limit: LimitsSeen | None = None
    requests: int = 0
    retries: int = 0
    per_search: int | None = None  # patients asked for in one search by the run's pull (None: a Bulk pull)
    split: int = 0  # searches for several patients whose pages ran on, read patient by patient instead
    failure: str | None = None  # why the run stopped (kept with the run in the store), if it did
    out: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def record(self) -> SyncRecord:
        """The run's summary, frozen as the store keeps it and ``fhiradapter runs`` reads it."""
        return SyncRecord(
            run_id=self.run_id,
            server=self.server,
            study=self.study,
            since=self.since,
            watermark=self.watermark,
            dry_run=self.dry_run,
            patients=self.patients,
            pulled=dict(self.pulled),
            deleted=self.deleted,
            evaluated=self.evaluated,
            plan=dict(self.plan),
            changes={p: {a: dict(kinds) for a, kinds in acts.items()} for p, acts in self.changes.items()},
            held=self.held,
            held_folder=str(self.held_folder) if self.held_folder else None,
            approved_by=self.approved_by,
            pushed=dict(self.pushed),
            provenances=self.provenances,
            conflicts=list(self.conflicts),
            errors=list(self.errors),
            warnings=list(self.warnings),
            non_atomic=list(self.non_atomic),
            transaction_limit=self.transaction_limit,
            requests=self.requests,
            retries=self.retries,
            per_search=self.per_search,
            split=self.split,
            failure=self.failure,
            seconds={k: round(v, 3) for k, v in self.seconds.items()},
        )


@dataclass(frozen=True, kw_only=True)
class SyncOptions:
    """What a sync run is asked to do (keyword-built; a dataclass, as it holds callbacks): the study, the day and
    the mappings, where the run folders go, how to pull and how to push, and who is told what as it goes."""

    study: str
    as_of: date
    since: str = "auto"  # "auto" | "none" | an instant
    dry_run: bool = False
    work_dir: Path
    mappings: Mappings
    mappings_identity: ProtocolIdentity  # ``mappings_io.load_mappings``
    progress: Callable[[int], None] | None = None  # the pull's, per patient
    on_total: Callable[[int], None] | None = None
    # The push's: given the number of entries to send, returns what to call as parts are answered.
    on_push: Callable[[int], Callable[[int], None]] | None = None
    chunk: int = DEFAULT_CHUNK
    mode: PushMode = "auto"  # see push.push
    bulk: bool = False  # pull through Bulk Data $export instead of searches
    group: str | None = None  # with bulk: Group/<id>/$export
    # How far before the pull's start the next watermark is set: covers writes that commit with an earlier
    # lastUpdated than their visibility (in-flight transactions), and clock steps on the server.
    overlap: timedelta = SKEW_MARGIN
    per_search: int | None = None  # patients per search in the pull; None: pull.patients_per_search
    on_evaluate: Callable[[], None] | None = None  # called as evaluation starts (between the two bars)
    # docs/review-and-approve.md: what a scheduled sync may write without a person's review (None: nothing; every
    # change is held, in the run's held/ folder, for `fhiradapter approve` and `fhiradapter push`).
    standing_rule: StandingRule | None = None


def run_sync(client: FhirClient, store: SyncStore, opts: SyncOptions) -> SyncSummary:
    """The whole run (see the module docstring), in one event loop with ``client`` (not yet opened)."""
    server = client.base
    since = (
        store.watermark(server, opts.study) if opts.since == "auto" else None if opts.since == "none" else opts.since
    )
    run_id = store.start_run(server, opts.study, since, opts.dry_run)
    summary = SyncSummary(run_id, server, since=since, dry_run=opts.dry_run)
    try:
        asyncio.run(_sync(client, store, opts, summary, run_id))
        status = "conflicts" if summary.conflicts else "errors" if summary.errors else "ok"
        store.finish_run(run_id, "dry-run" if opts.dry_run else status, summary.record())
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        summary.failure = _failure(exc)
        store.finish_run(run_id, status, summary.record())
        raise
    return summary


async def _sync(client: FhirClient, store: SyncStore, opts: SyncOptions, summary: SyncSummary, run_id: int) -> None:
    server = summary.server
    async with client:
        try:
            clock = time.perf_counter()
            cap, started = await _pull_phase(client, store, opts, summary, summary.since, run_id)
            summary.seconds["pull"] = time.perf_counter() - clock
            out = opts.work_dir / f"run-{run_id}"
            clock = time.perf_counter()
            if opts.on_evaluate:
                opts.on_evaluate()
            with interruptible():
                planned = _evaluate(store, server, summary, out, opts)
            summary.seconds["evaluate"] = time.perf_counter() - clock
            if opts.dry_run:
                return
            clock = time.perf_counter()
            pushed = await _push_phase(client, store, planned, opts, cap, summary)
            summary.seconds["push"] = time.perf_counter() - clock
            if pushed.conflicts:
                # Someone changed what we read: pull what changed since this run started, evaluate, push once more.
                summary.warnings.append("conflict on push: pulled the changes made meanwhile, evaluated again, pushed")
                summary.conflicts = []
                await _pull_phase(client, store, opts, summary, started, run_id, full=False)
                with interruptible():
                    planned = _evaluate(store, server, summary, out, opts, again=True)
                await _push_phase(client, store, planned, opts, cap, summary)
            if not summary.errors:
                summary.watermark = started
                store.set_watermark(server, opts.study, started, run_id)
        finally:
            summary.requests, summary.retries = client.requests, client.retries


def _failure(exc: BaseException) -> str:
    """Why a run stopped, as the store keeps it: the adapter's own message (resource ids at most), else the type."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(exc, AdapterError):
        return str(exc)
    return f"unexpected internal error ({type(exc).__name__})"  # its text may quote patient data


async def _pull_phase(
    client: FhirClient,
    store: SyncStore,
    opts: SyncOptions,
    summary: SyncSummary,
    since: str | None,
    run_id: int,
    full: bool = True,
) -> tuple[Capability, str]:
    cap = await client.capabilities()
    assert client.server_time is not None  # noqa: S101 - set by capabilities()
    started = (client.server_time - opts.overlap).strftime("%Y-%m-%dT%H:%M:%SZ")
    sink = store.sink(client.base, opts.study, run_id)
    history = None
    if not (since is None and full) and cap.history_system:
        # Deletions come from the server's history, read (page after page) while the pull runs.
        history = asyncio.create_task(_timed(_deletions(client, since or started), summary, "history"))
    try:
        if opts.bulk:
            pulled = await _bulk_into(client, cap, opts, sink, since, run_id)
        else:
            pulled = await pull_into(
                client,
                cap,
                opts.study,
                sink,
                since,
                progress=opts.progress,
                on_total=opts.on_total,
                per_search=opts.per_search,
            )
    except BaseException:
        if history is not None:
            history.cancel()
            with contextlib.suppress(BaseException):
                await history
        raise
    sink.flush()
    summary.study, summary.patients = pulled.study, pulled.patients
    if not opts.bulk:
        if summary.per_search is None:  # the run's own pull, not a re-pull after a conflict
            summary.per_search = pulled.per_search
        summary.split += pulled.split
    summary.pulled.update(sink.counts)
    summary.warnings.extend(w for w in pulled.warnings if w not in summary.warnings)
    if since is None and full:
        summary.deleted += store.mark_unseen_deleted(client.base, opts.study, run_id)
    elif history is not None:
        summary.deleted += store.mark_deleted(client.base, opts.study, await history)
    else:
        summary.warnings.append("the server offers no _history: deletions since the last run are not noticed")
    return cap, started


async def _bulk_into(
    client: FhirClient, cap: Capability, opts: SyncOptions, sink: Sink, since: str | None, run_id: int
) -> PullSummary:
    """The study's subjects by search, everything else by one Bulk export, kept only for the study's patients."""
    summary = PullSummary(opts.study)
    research_study = await resolve_study(client, opts.study)
    summary.study = f"ResearchStudy/{research_study['id']}"
    sink.add(research_study)
    patients: set[str] = set()
    subjects = await study_subjects(client, str(research_study["id"]), cap, summary.warnings)
    subjects += await logical_subjects(
        client, research_study, cap, summary.warnings, {str(r.get("id")) for r in subjects}
    )
    for subject in subjects:
        sink.add(subject)
        owner = patient_of(subject, client.base)
        if owner:
            patients.add(owner)
    summary.patients = len(patients)
    exported = await bulk_pull(client, opts.work_dir / f"bulk-{run_id}", opts.group, since=since)
    outside = 0
    skipped: list[str] = []
    for path in exported.files:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError:
                    resource = None
                    problem: str | None = "not JSON"
                else:
                    problem = unusable(resource)
                if problem:  # reported, not kept: the sink keys resources by type and id
                    skipped.append(f"{path.name} line {number}: {problem}")
                    continue
                owner = (
                    f"Patient/{resource.get('id')}"
                    if resource.get("resourceType") == "Patient"
                    else patient_of(resource, client.base)
                )
                if owner is None or owner in patients:
                    sink.add(resource)
                else:
                    outside += 1
    if outside:
        summary.warnings.append(f"the export held {outside} resource(s) of patients outside the study: left out")
    if skipped:
        summary.warnings.append(f"{len(skipped)} exported line(s) unusable, skipped: {first_few(skipped, sep='; ')}")
    summary.warnings.extend(f"the server's export error file says: {e}" for e in exported.errors[:20])
    return summary


async def _timed(work: Awaitable[T], summary: SyncSummary, phase: str) -> T:
    clock = time.perf_counter()
    try:
        return await work
    finally:
        summary.seconds[phase] = summary.seconds.get(phase, 0.0) + time.perf_counter() - clock


async def _deletions(client: FhirClient, since: str) -> list[tuple[str, str]]:
    """(type, id) of every resource whose latest event in the server's history after ``since`` is a DELETE.

    History lists the newest events first, so the first event seen for a resource is its latest: a resource
    deleted and then created again is not reported.
    """
    gone: list[tuple[str, str]] = []
    latest: set[tuple[str, str]] = set()
    url: str | None = "_history"
    # History pages are read one after the other (each names the next): large pages, few round trips.
    params: list[tuple[str, str]] | None = [("_since", since), ("_count", str(HISTORY_PAGE))]
    pages: set[str] = set()
    while url is not None and url not in pages:
        pages.add(url)
        bundle = await client.json("GET", url, params=params)
        params = None
        for entry in bundle.get("entry") or ():
            request = entry.get("request") or {}
            resource = entry.get("resource") or {}
            parts = str(request.get("url", "")).split("?", 1)[0].split("/")
            if resource.get("resourceType") and resource.get("id"):
                key = (str(resource["resourceType"]), str(resource["id"]))
            elif len(parts) >= 2:
                key = (parts[0], parts[1])
            else:
                continue
            if key in latest:
                continue
            latest.add(key)
            if request.get("method") == "DELETE":
                gone.append(key)
        url = next(
            (str(link["url"]) for link in bundle.get("link") or () if link.get("relation") == "next"),
            None,
        )
    return gone


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C stops blocking work inside the event loop at once.

    Within ``asyncio.run``, Ctrl-C only cancels the main task, which takes effect at its next ``await``: an
    evaluation (seconds to minutes, with its workers) would run to its end first. Python's own handler
    raises KeyboardInterrupt where the work is, as outside the loop.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _evaluate(
    store: SyncStore, server: str, summary: SyncSummary, out: Path, opts: SyncOptions, again: bool = False
) -> Writeback:
    """Evaluate the study's mirror into the run folder; the write-back comes back in memory, for the push.

    Evaluation runs on the event loop's thread: nothing else is in flight meanwhile, and its worker processes
    are forked from a process whose only other threads are idle.
    """
    folder = out / "input"
    _counts, refused = store.write_ndjson(server, opts.study, folder)
    if refused:
        summary.warnings.append(
            f"{len(refused)} stored resource(s) left out of the evaluation: {first_few(refused, sep='; ')}"
        )
    handed: list[Writeback] = []
    result = run_evaluate(
        RunRequest(
            inputs=(folder,),
            out=out / ("out-retry" if again else "out"),
            as_of=opts.as_of,
            mappings=opts.mappings,
            mappings_identity=opts.mappings_identity,
            report=False,
            study=summary.study.removeprefix("ResearchStudy/"),  # the study pulled: its subjects are evaluated
            fhir_bases=(server,),  # the server's absolute references are its own resources
            on_writeback=handed.append,
        )
    )
    summary.evaluated = EvaluatedCounts(
        records_read=result.records_read,
        records_used=result.records_used,
        records_rejected=result.records_rejected,
        rejects_by_reason=dict(result.rejects_by_reason),
    )
    summary.out = out / ("out-retry" if again else "out")
    (planned,) = handed
    summary.plan, summary.changes, summary.in_words = planned.actions, planned.changes, planned.in_words
    return planned


async def _push_phase(
    client: FhirClient, store: SyncStore, planned: Writeback, opts: SyncOptions, cap: Capability, summary: SyncSummary
) -> PushSummary:
    """Push the write-back evaluate handed over, with the capabilities the pull read seconds before (no second
    /metadata round trip), cut below the transaction size this server refused before (the store's memory): the
    run's first push tries twice that (``TransactionLimit.probe``); what it learns replaces it, or removes it
    once the server takes what ``--chunk`` asks."""
    learnt = store.transaction_limit(summary.server)
    bundle = _approved_part(planned, opts, summary)
    entries = len(bundle["entry"])
    first = summary.transaction_limit is None
    limit = learnt.probe(opts.chunk) if learnt and first else learnt
    if learnt and entries and first:
        tried = f"parts of {limit.max_entries} entries" if limit else f"--chunk {opts.chunk}"
        summary.warnings.append(
            f"this server refused transactions before: the store keeps parts of {learnt.max_entries} entries "
            f"(refused at {learnt.refused_at}); this run tried {tried} (fhiradapter runs --reset-limits "
            f"{summary.server} forgets it)"
        )
    progress = opts.on_push(entries) if opts.on_push and entries else None
    pushed = await push(client, bundle, opts.mode, opts.chunk, progress=progress, cap=cap, limit=limit)
    _add_push(summary, pushed)
    if opts.mode == "auto" and pushed.mode == "transaction" and entries:  # transactions were sent: evidence
        if pushed.limit is None:
            if learnt:
                store.clear_transaction_limit(summary.server)
        elif pushed.limit != learnt:
            store.set_transaction_limit(summary.server, pushed.limit, summary.run_id)
    now = store.transaction_limit(summary.server)
    found = learnt if summary.transaction_limit is None else summary.transaction_limit.found
    summary.transaction_limit = LimitsSeen(found=found, tried=limit, left=now)
    store.record_written(summary.server, opts.study, summary.run_id, pushed.written)
    return pushed


def _approved_part(
    planned: Writeback, opts: SyncOptions, summary: SyncSummary
) -> dict[str, Any]:  # a write-back Bundle: JSON, as core.approval builds it and push sends it
    """What the standing rule lets this run write; the rest goes to ``<run out>/held`` for a person to approve."""
    rule = opts.standing_rule
    allowed, held, _allowed_lines, held_lines = split_by_rule(planned.bundle, planned.plan_lines, rule)
    summary.held = len(held_lines)
    if held_lines and summary.out is not None:
        summary.held_folder = write_held(summary.out / "held", held, held_lines)
    if rule is None or not allowed["entry"]:
        return {**allowed, "entry": []}
    approval = Approval(
        approved_by=rule.signed_by,
        role=rule.role,
        approved_at=rule.signed_on,
        writeback_sha256="",
        plan_sha256="",
        standing_rule=rule.name,
    )
    summary.approved_by = rule.name
    sent, _left_out = approved_bundle(allowed, approval)
    return sent


def _add_push(summary: SyncSummary, pushed: PushSummary) -> None:
    summary.pushed.update(pushed.outcomes)
    summary.provenances += sum(1 for _method, url, *_ in pushed.written if url == "Provenance")
    summary.conflicts.extend(pushed.conflicts)
    summary.errors.extend(pushed.errors)
    summary.warnings.extend(w for w in pushed.notes() if w not in summary.warnings)  # a retry repeats them
    summary.non_atomic.extend(p for p in pushed.non_atomic if p not in summary.non_atomic)

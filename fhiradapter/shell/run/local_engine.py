"""The local engine: read -> map -> group by patient (spilling to disk) -> rules, on this machine's cores.

Memory is bounded by one bucket of patients, not by the input: pass 1 maps every resource to a compact
record and appends it to one of N bucket files chosen by a hash of its patient; pass 2 loads one bucket at a
time, keeps the newest copy of each resource, groups by patient and evaluates. Small inputs use one
in-memory bucket. Every input record ends up used or in ``rejects.ndjson``.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

from fhiradapter.core.dedup import InputRecord
from fhiradapter.core.evaluate import CohortRow, EvaluationSettings
from fhiradapter.core.mappers import MapContext, Record
from fhiradapter.core.results import Population, TimedRunSummary
from fhiradapter.errors import InputError
from fhiradapter.shell.common.mappings_io import ucum_factor
from fhiradapter.shell.common.out_folder import SPILL_PREFIX
from fhiradapter.shell.run.engine import Evaluated, FoundInputs, PhaseClock, RunRequest, RunStats
from fhiradapter.shell.run.outputs import (
    PartsIndex,
    PatientParts,
)
from fhiradapter.shell.run.publish import publish_run
from fhiradapter.shell.run.readers import (
    InputLimits,
    Task,
    is_plain,
    plan_tasks,
)
from fhiradapter.shell.run.spill import Buckets, RejectsFile, load_bucket
from fhiradapter.shell.run.steps import (
    CHUNK_BYTES,
    GLOBAL_TYPES,
    evaluate_group,
    keep_newest_global,
    read_task,
    settle_globals,
    writeback_context,
)
from fhiradapter.shell.run.workers import run_jobs

R = TypeVar("R")  # what one worker returns

BUCKET_BYTES = 48 * 1024 * 1024  # input bytes per bucket: about 50 MB of records held at once per worker


PARALLEL_MIN_BYTES = 32 * 1024 * 1024  # below this one process is faster than two


def default_workers(input_bytes: int) -> int:
    """Both cores for inputs large enough to repay starting a second process."""
    return 1 if input_bytes < PARALLEL_MIN_BYTES else max(1, min(2, os.cpu_count() or 1))


@dataclass(frozen=True)
class LocalEngine:
    """The run on this machine's cores: ``workers`` processes (None: as many as the input's size repays,
    ``default_workers``)."""

    workers: int | None = None
    name: ClassVar[str] = "local"

    def run(self, request: RunRequest, found: FoundInputs, settings: EvaluationSettings) -> TimedRunSummary:
        """The run in ``request.out``, which ``run_evaluate`` holds (locked)."""
        return run_local(request, found, settings, self.workers)


def run_local(
    run: RunRequest, found: FoundInputs, settings: EvaluationSettings, workers: int | None
) -> TimedRunSummary:
    """The two passes over ``found.files`` with ``workers`` processes, then ``publish_run``."""
    files, out, progress = found.files, run.out, run.progress
    input_bytes = sum(f.stat().st_size * (1 if is_plain(f) else 5) for f in files)  # packed: about 5 times more
    buckets = max(1, -(-input_bytes // BUCKET_BYTES))
    workers = workers or default_workers(input_bytes)
    clock = PhaseClock()

    with tempfile.TemporaryDirectory(dir=out, prefix=SPILL_PREFIX) as spill_dir:  # mode 700: patient data
        spill = Path(spill_dir)
        try:
            tasks = plan_tasks(files, max(CHUNK_BYTES, input_bytes // (4 * workers) + 1))
        except OSError as exc:
            raise InputError(f"input unreadable: {exc.filename}: {exc.strerror}") from None
        shares = _share(tasks, workers)
        in_memory = workers == 1 and buckets == 1
        one = _run_workers(
            _pass_one_worker,
            [(w, shares[w], buckets, spill, settings, in_memory, run.limits) for w in range(workers)],
            progress,
        )
        clock.lap("read_and_map")
        stats = RunStats(files=len(files), input_bytes=input_bytes)
        for r in one:
            stats.merge(r.stats)
        glob_rejects = RejectsFile(spill / "rejects-globals.ndjson", run.reject_cap, stats.unlisted)
        try:
            medications = settle_globals(
                [g for r in one for g in r.globals.values()], found.unread, glob_rejects, stats
            )
        finally:
            glob_rejects.close()
        settings = settings.with_study_from_data(medications.values())
        memory = one[0].memory if in_memory else None
        per_bucket = sum(f.stat().st_size for f in files) // buckets  # progress: pass two counts again
        jobs = [
            (
                w,
                list(range(w, buckets, workers)),
                [r.bucket_paths for r in one],
                spill,
                settings,
                medications,
                memory,
                per_bucket,
                run.writeback,
                run.enrol_candidates,
                run.reject_cap,
            )
            for w in range(workers)
        ]
        two = _run_workers(_pass_two_worker, jobs, progress)
        clock.lap("evaluate")
        for r2 in two:
            stats.merge(r2.stats)
        evaluated = Evaluated(
            stats,
            [row for r2 in two for row in r2.rows],
            [r.rejects for r in one] + [glob_rejects.path] + [r2.rejects for r2 in two],
            [r2.parts for r2 in two],
            workers,
            {"read_and_map": [round(r.cpu, 3) for r in one], "evaluate": [round(r2.cpu, 3) for r2 in two]},
        )
        return publish_run(run, found, settings, spill, evaluated, clock)


def _share(tasks: list[Task], workers: int) -> list[list[tuple[int, Task]]]:
    """Tasks dealt to workers by size (largest first to the least loaded), each with its rank in input order."""
    loads = [0] * workers
    shares: list[list[tuple[int, Task]]] = [[] for _ in range(workers)]
    sizes = [(t.end or t.path.stat().st_size) - t.start for t in tasks]
    for n in sorted(range(len(tasks)), key=lambda k: -sizes[k]):
        w = loads.index(min(loads))
        loads[w] += sizes[n]
        shares[w].append((n, tasks[n]))
    return [sorted(share) for share in shares]


class SharedCounter(Protocol):
    """A counter in shared memory (``multiprocessing.Value``), which forked workers add to under its lock."""

    value: int

    def get_lock(self) -> AbstractContextManager[object]: ...


# Where workers report the bytes they read: the display itself (one worker, in this process), a shared counter
# (forked workers inherit it), or no one.
_PROGRESS: Callable[[int], None] | SharedCounter | None = None


def _run_workers(
    fn: Callable[..., R], jobs: Sequence[tuple[object, ...]], progress: Callable[[int], None] | None
) -> list[R]:
    """Run one job per worker: in this process when there is one, else in forked processes."""
    global _PROGRESS  # the one way to hand a shared counter to forked workers
    if len(jobs) == 1:
        _PROGRESS = progress
        try:
            return [fn(*jobs[0])]
        finally:
            _PROGRESS = None
    counter: SharedCounter | None = multiprocessing.get_context("fork").Value("q", 0) if progress else None
    _PROGRESS = counter  # set before the workers are forked: they inherit it
    seen = 0

    def tick() -> None:
        nonlocal seen
        if counter is not None and progress is not None:
            now = counter.value
            progress(now - seen)
            seen = now

    try:
        return run_jobs(fn, jobs, tick)
    finally:
        _PROGRESS = None


def _report_bytes(n: int) -> None:
    target = _PROGRESS
    if target is None:
        return
    if callable(target):
        target(n)
    else:
        with target.get_lock():
            target.value += n


@dataclass
class _PassOne:
    stats: RunStats
    globals: dict[str, InputRecord]
    rejects: Path
    bucket_paths: list[Path]
    memory: Buckets | None
    cpu: float  # this worker's CPU seconds


def _pass_one_worker(
    worker: int,
    tasks: list[tuple[int, Task]],
    buckets: int,
    spill: Path,
    settings: EvaluationSettings,
    in_memory: bool,
    limits: InputLimits,
) -> _PassOne:
    """Read and map this worker's share of the input into its bucket files."""
    cpu = time.process_time()
    ctx = MapContext(settings.mappings, ucum_factor, settings.local_bases)
    stats = RunStats()
    rejects = RejectsFile(spill / f"rejects-1-{worker:02d}.ndjson", limits.rejects_per_file or None, stats.unlisted)
    store = Buckets(buckets, None if in_memory else spill, worker)
    globals_: dict[str, InputRecord] = {}
    progress = _report_bytes if _PROGRESS is not None else None
    try:
        for rank, task in tasks:
            for item in read_task(rank, task, ctx, rejects, stats, progress, limits.record_bytes):
                if item.ref.split("/", 1)[0] not in GLOBAL_TYPES:
                    store.add(item.patient or item.ref, item)
                else:  # study-wide resources (few) are deduplicated at once and kept in memory
                    keep_newest_global(globals_, item, rejects, stats)
        if not in_memory:
            store.flush()
    finally:
        rejects.close()
        store.close()
    cpu = time.process_time() - cpu
    return _PassOne(stats, globals_, rejects.path, store.paths, store if in_memory else None, cpu)


@dataclass
class _PassTwo:
    stats: RunStats
    rows: list[CohortRow]
    rejects: Path
    parts: PartsIndex
    cpu: float  # this worker's CPU seconds


def _pass_two_worker(
    worker: int,
    bucket_ids: list[int],
    bucket_paths: list[list[Path]],
    spill: Path,
    settings: EvaluationSettings,
    medications: Mapping[str, Record | None],
    memory: Buckets | None,
    per_bucket: int = 0,
    writeback: bool = True,
    enrol: bool = False,
    reject_cap: int | None = None,
) -> _PassTwo:
    """Deduplicate, group by patient and evaluate the buckets given to this worker."""
    cpu = time.process_time()
    stats = RunStats()
    rows: list[CohortRow] = []
    parts = PatientParts(spill, f"{worker:02d}")
    try:
        rejects = RejectsFile(spill / f"rejects-2-{worker:02d}.ndjson", reject_cap, stats.unlisted)
    except BaseException:
        parts.close()
        raise
    wctx = writeback_context(settings, writeback)
    try:
        for b in bucket_ids:
            items = memory.take(b) if memory is not None else load_bucket([p[b] for p in bucket_paths])
            for result, row, plan, extract in evaluate_group(items, settings, medications, rejects, stats, wctx, enrol):
                parts.add(result, plan, extract)
                if result.population != Population.CANDIDATE:
                    rows.append(row)
            del items
            _report_bytes(per_bucket)
    finally:
        try:
            rejects.close()
        finally:
            index = parts.close()
    stats.plan.update(index.actions)
    return _PassTwo(stats, rows, rejects.path, index, time.process_time() - cpu)

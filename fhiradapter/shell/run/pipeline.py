"""The evaluate pipeline: read -> map -> group by patient (spilling to disk) -> rules -> write results.

Memory is bounded by one bucket of patients, not by the input: pass 1 maps every resource to a compact
record and appends it to one of N bucket files chosen by a hash of its patient; pass 2 loads one bucket at a
time, keeps the newest copy of each resource, groups by patient and evaluates. Small inputs use one
in-memory bucket. Every input record ends up used or in ``rejects.ndjson``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from fhiradapter import __version__
from fhiradapter.core import fhir_json
from fhiradapter.core.dedup import InputRecord, keep_newest, newer, superseded_reason, version_of
from fhiradapter.core.evaluate import CohortRow, EvaluationSettings, evaluate_patient, summarise_cohort
from fhiradapter.core.extract import patient_extract
from fhiradapter.core.fhir_types import Resource, resource_type
from fhiradapter.core.mappers import MapContext, Record, map_resource
from fhiradapter.core.model import (
    AdverseEvent,
    Condition,
    Consent,
    EarlierResult,
    Exposure,
    Issue,
    Observed,
    PatientRecord,
    Person,
    StudySubject,
    SupportingResource,
)
from fhiradapter.core.protocol import ID_PATTERN, Mappings, StudyKey, parse_identifier
from fhiradapter.core.results import CohortSummary, PatientResult, Population, to_builtins
from fhiradapter.core.writeback import (
    Existing,
    PlanEntry,
    WritebackContext,
    plan_patient,
)
from fhiradapter.errors import ConfigError, InputError
from fhiradapter.shell.common.files import write_new
from fhiradapter.shell.common.mappings_io import ucum_factor
from fhiradapter.shell.common.out_folder import SPILL_PREFIX, claim_output, drop_manifest, write_manifest, writing
from fhiradapter.shell.common.urls import safe_url
from fhiradapter.shell.report.report import write_report
from fhiradapter.shell.run.outputs import (
    PartsIndex,
    PatientParts,
    Writeback,
    concatenate,
    iter_rows,
    write_results,
    write_sorted_lines,
    write_writeback,
)
from fhiradapter.shell.run.readers import (
    MAX_RECORD_BYTES,
    PULL_MANIFEST,
    InputLimits,
    RawRecord,
    Reject,
    Task,
    find_inputs,
    is_plain,
    plan_tasks,
    read_file,
)
from fhiradapter.shell.run.spill import Buckets, RejectsFile, RejectSink, cap_rejects, load_bucket
from fhiradapter.shell.run.workers import run_jobs

BUCKET_BYTES = 48 * 1024 * 1024  # input bytes per bucket: about 50 MB of records held at once per worker
CHUNK_BYTES = 16 * 1024 * 1024  # smallest share of an NDJSON file given to one worker
PARALLEL_MIN_BYTES = 32 * 1024 * 1024  # below this one process is faster than two
GLOBAL_TYPES = frozenset({"Medication", "ResearchStudy"})
SUBJECT_KEYS = ("subject", "patient", "individual")
WRITEBACK_FILES = ("writeback.json", "writeback-plan.ndjson")
REPORT_FILES = ("report.html", "report.md", "report-km.png", "report-swimmer.png")
CANDIDATES_FILE = "candidates.ndjson"  # screening candidates' results, with --screen-candidates (docs/protocol.md §1)
# Every file a run may write or remove in --out (whatever its options): an input by one of these names there is
# refused before anything is written (``out_folder.inputs_in_the_way``).
OUTPUT_FILES = (
    "results.json",
    "clinical.ndjson",
    "rejects.ndjson",
    "summary.json",
    CANDIDATES_FILE,
    *WRITEBACK_FILES,
    *REPORT_FILES,
    "approval.json",  # removed by each run: an approval is of the write-back it reviewed
)


@dataclass
class RunStats:
    read: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    plan: Counter[str] = field(default_factory=Counter)
    patients: int = 0
    files: int = 0
    input_bytes: int = 0
    # docs/protocol.md §1: subjects, candidates (screened), not-in-study, not-screened (candidates who had died)
    population: Counter[str] = field(default_factory=Counter)
    unmapped: Counter[tuple[str, str]] = field(default_factory=Counter)  # (what, "system|code") not mapped
    unlisted: Counter[tuple[str, str]] = field(default_factory=Counter)  # (file, code): rejects counted, not listed
    not_read: list[str] = field(default_factory=list)  # files of an input folder that hold no FHIR data: no records

    def merge(self, other: RunStats) -> None:
        self.read.update(other.read)
        self.rejected.update(other.rejected)
        self.reasons.update(other.reasons)
        self.plan.update(other.plan)
        self.patients += other.patients
        self.population.update(other.population)
        self.unmapped.update(other.unmapped)
        self.unlisted.update(other.unlisted)
        self.not_read.extend(other.not_read)

    def as_dict(self) -> dict[str, Any]:
        types = sorted(set(self.read) | set(self.rejected))
        return {
            "files": self.files,
            "files_not_read": sorted(self.not_read),  # listed in rejects.ndjson with why; they hold no records
            "input_bytes": self.input_bytes,
            "patients": self.patients,
            "records_read": sum(self.read.values()),
            "records_used": sum(self.read.values()) - sum(self.rejected.values()),
            "records_rejected": sum(self.rejected.values()),
            "by_type": {
                t: {
                    "read": self.read[t],
                    "used": self.read[t] - self.rejected[t],
                    "rejected": self.rejected[t],
                }
                for t in types
            },
            "rejects_by_reason": dict(sorted(self.reasons.items())),
            "rejects_not_listed": _by_file(self.unlisted),
            "population": {k: self.population.get(k, 0) for k in POPULATIONS},
            "unmapped_codes": _most_frequent(self.unmapped),
            "writeback": {k: self.plan.get(k, 0) for k in ("create", "update", "unchanged")},
        }


POPULATIONS = ("subjects", "candidates", "not-in-study", "not-screened")
UNMAPPED_SHOWN = 20  # per kind of code, in the run summary


def _by_file(unlisted: Counter[tuple[str, str]]) -> dict[str, int]:
    """Per input file, its rejects counted but not listed one by one in rejects.ndjson (over the cap)."""
    files: Counter[str] = Counter()
    for (name, _code), n in unlisted.items():
        files[name] += n
    return dict(sorted(files.items()))


def _most_frequent(unmapped: Counter[tuple[str, str]]) -> dict[str, list[dict[str, Any]]]:
    """The codes most often left unmapped, per kind (``Observation.code``, ...): where a site's mapping work
    starts (each is a line to add to mappings/codes.toml)."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for (kind, code), n in sorted(unmapped.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])):
        shown = kinds.setdefault(kind, [])
        if len(shown) < UNMAPPED_SHOWN:
            shown.append({"code": code, "records": n})
    return kinds


def _patient_key(res: Resource | dict[str, Any], record: Record | None) -> str | None:
    """The patient whose record this is: the mapped record's, else the one its JSON names (a reject's)."""
    if isinstance(record, Person):
        return record.ref
    patient = getattr(record, "patient", None)
    if isinstance(patient, str):
        return patient
    for key in SUBJECT_KEYS:
        if isinstance(res, dict):
            element = res.get(key)
            target = fhir_json.normalise_reference(element.get("reference")) if isinstance(element, dict) else None
        else:
            target = fhir_json.reference_of(getattr(res, key, None))
        if target and target.startswith("Patient/"):
            return target
    return None


def _reject_entry(
    origin: tuple[str, str],
    ref: str | None,
    code: str,
    reason: str,
    unmapped: str | None = None,
    path: str | None = None,
) -> dict[str, Any]:
    rtype, _, rid = (ref or "").partition("/")
    entry = {
        "file": origin[0],
        "locator": origin[1],
        "resourceType": rtype or None,
        "id": rid or None,
        "code": code,
        **({"path": path} if path else {}),  # the FHIR element the reason is about (Observation.valueQuantity.code)
        "reason": reason,
    }
    if unmapped is not None:  # the source's code that no mapping knows (system|code): what to add to mappings/
        entry["unmapped"] = unmapped
    return entry


def pulled_from(inputs: list[Path]) -> list[str]:
    """The servers the input folders were pulled from (their ``pull-manifest.json``): their absolute
    references are the data's own."""
    servers = []
    for folder in inputs:
        try:
            manifest = orjson.loads((folder / PULL_MANIFEST).read_bytes()) if folder.is_dir() else None
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(manifest, dict) and isinstance(manifest.get("server"), str):
            servers.append(manifest["server"])
    return servers


def default_workers(input_bytes: int) -> int:
    """Both cores for inputs large enough to repay starting a second process."""
    return 1 if input_bytes < PARALLEL_MIN_BYTES else max(1, min(2, os.cpu_count() or 1))


def run_evaluate(
    inputs: list[Path],
    out: Path,
    as_of: date,
    mappings: Mappings,
    mappings_identity: dict[str, Any],
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    report: bool = True,
    writeback: bool = True,
    study: str | None = None,
    screen_candidates: bool = False,
    enrol_candidates: bool = False,
    fhir_bases: tuple[str, ...] = (),
    on_phase: Callable[[str], None] | None = None,
    engine: str = "local",
    spark_master: str | None = None,
    urls: tuple[str, ...] = (),
    results_dir: str = "",
    on_writeback: Callable[[Writeback], None] | None = None,
    compare_with_paper: bool | None = None,
    limits: InputLimits | None = None,
) -> dict[str, Any]:
    """Run the whole job; returns the run summary (also written to ``summary.json``).

    ``study``: the ResearchStudy id whose subjects are evaluated (default: the one the mappings name).
    ``screen_candidates``: also evaluate patients without a ResearchSubject of the study, as screening
    candidates at the as-of date, reported apart in ``candidates.ndjson``; ``enrol_candidates``: and write
    them back (a new ResearchSubject each). docs/protocol.md §1. ``fhir_bases``: the FHIR base URLs the data came
    from, whose absolute references are local (a pull folder's server is one already); a reference to any
    other server is rejected (``bad-reference``). ``engine``: ``local`` (this machine's cores) or ``spark``
    (a Spark session at ``spark_master``, ``local[*]`` by default; ``shell/spark_engine.py``), which also
    reads ``urls``: inputs by URL (``hdfs://``, ``s3a://``, as the Spark configuration allows).
    ``on_writeback``: called with the write-back as published (the Bundle and the plan), so that a caller
    that pushes it at once (sync) need not read the files back. ``limits``: the largest record read, and how
    many rejects of one file are listed one by one (``--max-record-bytes``, ``--max-rejects-per-file``).
    """
    if enrol_candidates and not screen_candidates:
        raise ConfigError("enrolling candidates needs --screen-candidates too")
    if engine not in ("local", "spark"):
        raise ConfigError(f"unknown engine {engine!r}: local or spark")
    if results_dir and engine != "spark":
        raise ConfigError("--results-dir is written by Spark: add --engine spark")
    if results_dir and writeback:
        raise ConfigError(
            "--results-dir writes the results only: add --no-writeback (the write-back of a run that "
            "size goes through the driver; evaluate it without --results-dir to write it back)"
        )
    if urls and engine != "spark":
        raise ConfigError(f"{urls[0]}: an input by URL is read by Spark: add --engine spark")
    files, unread = find_inputs(inputs, exclude=out)
    bases = tuple(dict.fromkeys([*fhir_bases, *pulled_from(inputs)]))
    settings = EvaluationSettings(as_of, mappings, study_key(study), screen_candidates, bases)
    run = RunRequest(
        files,
        unread,
        out,
        mappings_identity,
        report,
        writeback,
        screen_candidates,
        enrol_candidates,
        on_phase or (lambda _phase: None),
        list(urls),
        results_dir,
        on_writeback,
        compare_with_paper,
        limits or InputLimits(),
    )
    with claim_output(out, inputs, OUTPUT_FILES), writing(out):
        drop_manifest(out)  # until the new one is written, the set in ``out`` is not whole
        with writing(out / "approval.json"):  # an approval is of the write-back it reviewed, not of this run's
            (out / "approval.json").unlink(missing_ok=True)
        if engine == "spark":
            from fhiradapter.shell.run.spark_engine import run_spark  # noqa: PLC0415 - pyspark only when asked

            return run_spark(run, settings, spark_master, progress)
        return _run_local(run, settings, progress, workers)


def _run_local(
    run: RunRequest,
    settings: EvaluationSettings,
    progress: Callable[[int], None] | None,
    workers: int | None,
) -> dict[str, Any]:
    """The run on this machine's cores, in ``run.out``, which ``run_evaluate`` holds (locked)."""
    files, out = run.files, run.out
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
            medications = settle_globals([g for r in one for g in r.globals.values()], run.unread, glob_rejects, stats)
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
        return publish_run(run, settings, spill, evaluated, clock)


class PhaseClock:
    """The wall time of each phase of a run, for summary.json's ``seconds``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._since, 3)
        self._since = now


@dataclass
class RunRequest:
    """What a run is asked to do: inputs, where the outputs go, and which outputs."""

    files: list[Path]
    unread: list[Reject]
    out: Path
    mappings_identity: dict[str, Any]
    report: bool = True
    writeback: bool = True
    screen_candidates: bool = False
    enrol_candidates: bool = False
    on_phase: Callable[[str], None] = field(default=lambda _phase: None)
    urls: list[str] = field(default_factory=list)  # inputs Spark reads by URL (hdfs://, s3a://): --engine spark
    results_dir: str = ""  # --engine spark: per-patient results go to this URL, written by Spark
    on_writeback: Callable[[Writeback], None] | None = None  # given the write-back in memory, once published
    compare_with_paper: bool | None = None  # the report's comparison with the paper: None = when it is its cohort
    limits: InputLimits = field(default_factory=InputLimits)  # the largest record; rejects listed per file

    @property
    def reject_cap(self) -> int | None:
        """Rejects listed one by one per input file (None: all of them)."""
        return self.limits.rejects_per_file or None


@dataclass
class Evaluated:
    """What an engine hands back once every patient is evaluated: the counts, one small row per patient for
    the cohort statistics, the reject files, and where each writer's per-patient outputs lie."""

    stats: RunStats
    rows: list[CohortRow]
    reject_parts: list[Path]
    parts: list[PartsIndex]
    workers: int
    cpu: dict[str, list[float]]  # CPU seconds per worker and pass (summary.json: how evenly work was shared)


def study_key(study: str | None) -> StudyKey | None:
    """``--study``: an id, or an identifier ``SYSTEM|VALUE`` (docs/protocol.md §1); None: the mappings' study."""
    if not study:
        return None
    study = study.removeprefix("ResearchStudy/")  # the reference as a ResearchSubject writes it names the same
    if "|" in study:
        try:
            return StudyKey(None, frozenset({parse_identifier(study, "--study")}))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if not re.fullmatch(ID_PATTERN.strip("^$"), study):
        raise ConfigError(f"--study {study!r}: not a FHIR id ([A-Za-z0-9-.], at most 64) nor SYSTEM|VALUE")
    return StudyKey(study)


def settle_globals(
    items: Iterable[InputRecord], unread: list[Reject], rejects: RejectSink, stats: RunStats
) -> dict[str, Record | None]:
    """The study-wide resources (Medication, ResearchStudy), one copy each, and the files not read.

    Returns the Medications by reference, which every patient's exposures may name.
    """
    for file_not_read in unread:  # files of the input folders not read: listed, with why (never unseen)
        rejects.reject(file_not_read.as_dict())
        stats.not_read.append(file_not_read.file)  # a file, not a record: counted apart from the records
    kept: dict[str, InputRecord] = {}
    for item in items:
        keep_newest_global(kept, item, rejects, stats)
    for item in kept.values():
        if item.record is None:
            _reject_unmapped(item, rejects, stats)
    return {ref: item.record for ref, item in kept.items() if isinstance(item.record, SupportingResource)}


def publish_run(
    run: RunRequest,
    settings: EvaluationSettings,
    spill: Path,
    done: Evaluated,
    clock: PhaseClock,
    elsewhere: Callable[[dict[str, Any], CohortSummary], None] | None = None,
) -> dict[str, Any]:
    """The cohort statistics, then every output in ``run.out``, manifest.json last; returns the run summary.

    Both engines finish through here, so their outputs are written by the same code. ``elsewhere``: the
    per-patient results were written by Spark to ``run.results_dir``; it writes the header and the cohort
    there too, and ``run.out`` gets no results.json, clinical.ndjson or candidates.ndjson.
    """
    out, as_of, mappings_identity = run.out, settings.as_of, run.mappings_identity
    # One bad file lists at most so many rejects; the rest are counted (summary.json) and said in one line.
    capped = cap_rejects(done.reject_parts, spill / "rejects-capped.ndjson", run.reject_cap, done.stats.unlisted)
    done = dataclasses.replace(done, reject_parts=[capped])
    cohort = summarise_cohort(done.rows)
    clock.lap("cohort_statistics")
    summary: dict[str, Any] = {"as_of": as_of.isoformat(), "protocol": {**mappings_identity}}
    summary["protocol"]["study"] = settings.study
    summary |= done.stats.as_dict()
    summary["workers"] = done.workers
    if not run.writeback:
        summary["writeback"] = None  # not planned (--no-writeback): no counts rather than zeros
    header = {
        "as_of": as_of.isoformat(),
        "protocol": {**mappings_identity, "study": settings.study},
        "adapter": {"name": "fhiradapter", "version": __version__},
        "inputs": [str(f) for f in run.files] + run.urls,
        "run_summary": summary,
    }
    run.on_phase("write")
    # An output this run does not write must not be left from an earlier one, looking current.
    skipped = (WRITEBACK_FILES if not run.writeback else ()) + (REPORT_FILES if not run.report else ())
    skipped += (CANDIDATES_FILE,) if not run.screen_candidates else ()
    for name in skipped:
        (out / name).unlink(missing_ok=True)
    if elsewhere is not None:
        summary["results_dir"] = safe_url(run.results_dir)
        for name in ("results.json", "clinical.ndjson", CANDIDATES_FILE):
            (out / name).unlink(missing_ok=True)
        concatenate(done.reject_parts, out / "rejects.ndjson")
        elsewhere(header, cohort)
    else:
        write_results(out, spill, done.reject_parts, [i for p in done.parts for i in p.subjects], header, cohort)
        write_sorted_lines(out / "clinical.ndjson", spill, [i for p in done.parts for i in p.clinical])
        if run.screen_candidates:
            write_sorted_lines(out / CANDIDATES_FILE, spill, [i for p in done.parts for i in p.candidates])
    handed = None
    if run.writeback:
        wb_index = [i for p in done.parts for i in p.writeback]
        handed = write_writeback(
            out, spill, wb_index, [i for p in done.parts for i in p.plan], header, keep=run.on_writeback is not None
        )
    clock.lap("write")
    if run.report:
        run.on_phase("report")
        folder = mappings_identity.get("mappings_dir")
        rows = iter_rows([p.report_rows for p in done.parts if p.report_rows])
        write_report(
            out, header, to_builtins(cohort), rows, summary, Path(folder) if folder else None, run.compare_with_paper
        )
    clock.lap("report")
    summary["seconds"] = clock.seconds  # in summary.json, not in results.json (which stays reproducible)
    summary["worker_cpu_seconds"] = done.cpu
    write_new(out / "summary.json", orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    written = ["rejects.ndjson", "summary.json"]
    written += ["results.json", "clinical.ndjson"] if elsewhere is None else []
    written += list(WRITEBACK_FILES) if run.writeback else []
    written += list(REPORT_FILES) if run.report else []
    written += [CANDIDATES_FILE] if run.screen_candidates and elsewhere is None else []
    manifest_run = {"run_id": uuid.uuid4().hex, "as_of": as_of.isoformat(), "protocol": header["protocol"]}
    write_manifest(out, manifest_run, written)  # last: the set is whole
    if run.on_writeback is not None and handed is not None:
        run.on_writeback(handed)
    return summary


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


_PROGRESS: Any = None  # a shared counter of bytes read, inherited by forked workers


def _run_workers(
    fn: Callable[..., Any], jobs: list[tuple[Any, ...]], progress: Callable[[int], None] | None
) -> list[Any]:
    """Run one job per worker: in this process when there is one, else in forked processes."""
    global _PROGRESS  # the one way to hand a shared counter to forked workers
    if len(jobs) == 1:
        _PROGRESS = progress
        try:
            return [fn(*jobs[0])]
        finally:
            _PROGRESS = None
    counter = multiprocessing.get_context("fork").Value("q", 0) if progress else None
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


def read_task(
    rank: int,
    task: Task,
    ctx: MapContext,
    rejects: RejectSink,
    stats: RunStats,
    progress: Callable[[int], None] | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[InputRecord]:
    """Read and map one task (a file, or a line-aligned share of one): every record mapped, or rejected.

    ``rank`` is the task's place in input order: with the line's place in the task it orders copies of a
    resource by where they were seen (the "last seen" tie-breaker of dedup). The local engine and the Spark
    engine both read through here.
    """
    records = read_file(task.path, progress, task, max_record_bytes)
    for seq, raw in enumerate(records, rank * 1_000_000_000):
        item = map_raw(raw, seq, ctx, rejects, stats)
        if item is not None:
            yield item


def map_raw(
    raw: RawRecord | Reject, seq: int, ctx: MapContext, rejects: RejectSink, stats: RunStats
) -> InputRecord | None:
    """One record as a reader gave it, mapped (or, a reader's reject, reported and counted). ``seq`` is its
    place in the input, the last-seen tie-breaker."""
    if isinstance(raw, Reject):
        kind = raw.resource_type or "(not a resource)"
        stats.read[kind] += 1
        stats.rejected[kind] += 1
        stats.reasons[raw.code] += 1
        rejects.reject(raw.as_dict())
        return None
    res = raw.resource
    if isinstance(res, dict):
        rtype, rid = res["resourceType"], res["id"]
    else:
        rtype, rid = resource_type(res), res.id
    ref = f"{rtype}/{rid}"
    stats.read[rtype] += 1
    record, issues = map_resource(res, ref, raw.origin, ctx, raw.aliases)
    return InputRecord(ref, version_of(res), seq, record, issues, raw.origin, _patient_key(res, record))


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


def writeback_context(settings: EvaluationSettings, writeback: bool) -> WritebackContext | None:
    """What the write-back plan needs to know of the run (None: no write-back)."""
    return WritebackContext(settings.mappings.protocol.protocol.id, settings.study_of_run) if writeback else None


def evaluate_group(
    items: list[InputRecord],
    settings: EvaluationSettings,
    medications: Mapping[str, Record | None],
    rejects: RejectSink,
    stats: RunStats,
    wctx: WritebackContext | None,
    enrol: bool = False,
) -> Iterator[tuple[PatientResult, CohortRow, list[PlanEntry], dict[str, Any]]]:
    pending: dict[str, list[InputRecord]] = {}
    for item in _dedup(items, rejects, stats):
        record = item.record
        if record is None:
            _reject_unmapped(item, rejects, stats)
            continue
        if isinstance(record, Exposure) and record.med_ref is not None:
            resolved = _resolve_medication(record, medications)
            if not isinstance(resolved, Exposure):
                _reject(item, rejects, stats, *resolved)
                continue
            item = item._replace(record=resolved)
        patient = item.patient
        assert patient is not None  # noqa: S101 - every mapped record names its patient
        pending.setdefault(patient, []).append(item)
    for patient in sorted(pending):
        group = pending.pop(patient)
        if not any(isinstance(i.record, Person) for i in group):
            for item in group:
                _reject(item, rejects, stats, "unknown-subject", f"{patient} is not in the input (no Patient resource)")
            continue
        rec = PatientRecord(patient)
        issues: list[Issue] = []
        origins: dict[str, tuple[str, str]] = {}
        for item in group:
            _add(rec, item.record)
            issues.extend(item.issues)
            origins[item.ref] = item.origin
        evaluation = evaluate_patient(rec, settings, issues)
        for u in evaluation.unused:
            rejects.reject(_reject_entry(origins[u.ref], u.ref, u.code, u.message))
            stats.rejected[u.ref.split("/", 1)[0]] += 1
            stats.reasons[u.code] += 1
        result, row = evaluation.result, evaluation.row
        if result is None or row is None:  # outside the study population (docs/protocol.md §1)
            code, reason = evaluation.skipped or ("unused", "not evaluated")
            reported = {u.ref for u in evaluation.unused}
            for item in group:
                if item.ref not in reported:
                    _reject(item, rejects, stats, code, reason)
            stats.population[code] += 1
            continue
        candidate = result.population == Population.CANDIDATE
        stats.population["candidates" if candidate else "subjects"] += 1
        stats.patients += 1
        plan: list[PlanEntry] = []
        if wctx is not None and (not candidate or enrol):  # a candidate is enrolled only when asked
            chosen = next((x for x in rec.subjects if x.ref == result.research_subject), None)
            existing = [Existing(w.ref, w.identifier, w.content_hash, w.version, w.content) for w in rec.written]
            target = (chosen.ref, chosen.version, chosen.raw or {}) if chosen else None
            plan = plan_patient(result, existing, target, wctx)
        extract = patient_extract(rec, settings.as_of, {u.ref for u in evaluation.unused})
        yield result, row, plan, extract


def keep_newest_global(kept: dict[str, InputRecord], item: InputRecord, rejects: RejectSink, stats: RunStats) -> None:
    """Keep the newer of ``item`` and the copy already kept under its reference; reject the other."""
    old = kept.get(item.ref)
    if old is not None and newer(old, item):
        old, item = item, old
    kept[item.ref] = item
    if old is not None:
        _reject(old, rejects, stats, "duplicate-superseded", superseded_reason(old, item))


def reject_superseded(older: InputRecord, kept: InputRecord, rejects: RejectSink, stats: RunStats) -> None:
    """Reject a copy another copy of the same resource supersedes, saying which rule decided."""
    _reject(older, rejects, stats, "duplicate-superseded", superseded_reason(older, kept))


def _dedup(items: list[InputRecord], writer: RejectSink, stats: RunStats) -> list[InputRecord]:
    """The copy of each resource that counts (docs/protocol.md §4); the others are rejected, saying why."""
    winners: list[InputRecord] = []
    for item, kept in keep_newest(items):
        if kept is None:
            winners.append(item)
        else:
            _reject(item, writer, stats, "duplicate-superseded", superseded_reason(item, kept))
    return winners


def _resolve_medication(med: Exposure, medications: Mapping[str, Record | None]) -> Exposure | tuple[str, str]:
    target = medications.get(med.med_ref or "")
    if target is None:
        return "bad-reference", f"medicationReference {med.med_ref} is not in the input"
    drug = target.code if isinstance(target, SupportingResource) else None
    if drug is None:
        return "unmapped-code", f"{med.med_ref} is not a protocol drug in mappings/codes.toml"
    return med._replace(drug=drug, med_ref=None)


def _reject_unmapped(item: InputRecord, writer: RejectSink, stats: RunStats) -> None:
    """Reject a record the mapper could not use, for the reason of its last issue (all its issues in words);
    an unmapped code is named in the reject and counted for the run summary's ``unmapped_codes``."""
    issues = item.issues
    if not issues:
        _reject(item, writer, stats, "unused", "not used")
        return
    last = issues[-1]
    # The element the reject is about is a field of its own; other issues of the record keep theirs in the text.
    reason = "; ".join(
        _without_path(i.message, i.path) if i.path == last.path else f"{i.path}: {_without_path(i.message, i.path)}"
        for i in issues
    )
    _reject(item, writer, stats, last.code, reason, last.source_code, last.path)
    if last.source_code is not None:
        stats.unmapped[(f"{item.ref.split('/', 1)[0]}.{last.path}", last.source_code)] += 1


def _without_path(message: str, path: str) -> str:
    return message.removeprefix(f"{path}: ") if path else message


def _reject(
    item: InputRecord,
    writer: RejectSink,
    stats: RunStats,
    code: str,
    reason: str,
    unmapped: str | None = None,
    path: str | None = None,
) -> None:
    writer.reject(_reject_entry(item.origin, item.ref, code, reason, unmapped, path))
    stats.rejected[item.ref.split("/", 1)[0]] += 1
    stats.reasons[code] += 1


def _add(rec: PatientRecord, record: Record | None) -> None:
    if isinstance(record, Person):
        rec.person = record
    elif isinstance(record, Observed):
        rec.observations.append(record)
    elif isinstance(record, Exposure):
        rec.meds.append(record)
    elif isinstance(record, AdverseEvent):
        rec.adverse_events.append(record)
    elif isinstance(record, Condition):
        rec.conditions.append(record)
    elif isinstance(record, Consent):
        rec.consents.append(record)
    elif isinstance(record, StudySubject):
        rec.subjects.append(record)
    elif isinstance(record, EarlierResult):
        rec.written.append(record)
    elif isinstance(record, SupportingResource):
        rec.others.append(record)

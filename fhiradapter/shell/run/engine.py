"""What a run's engines take and hand back: the run request, the inputs found, the ``Engine`` interface, the
counts, the phase clock, and what an engine returns once every patient is evaluated. The local and the Spark
engine meet here (and share ``steps``); neither imports the other."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Protocol

from msgspec import UNSET

from fhiradapter.core.evaluate import CohortRow, EvaluationSettings
from fhiradapter.core.protocol import Mappings
from fhiradapter.core.results import (
    PlanCounts,
    PopulationCounts,
    ProtocolIdentity,
    RunSummary,
    TimedRunSummary,
    TypeCounts,
    UnmappedCode,
)
from fhiradapter.shell.run.outputs import (
    PartsIndex,
    Writeback,
)
from fhiradapter.shell.run.readers import (
    InputLimits,
    Reject,
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

    def summary(
        self, as_of: date, protocol: ProtocolIdentity, workers: int, writeback: bool, results_dir: str = ""
    ) -> RunSummary:
        """The run summary (results.json's ``run_summary``): these counts, and what the run was. ``writeback``:
        whether the write-back was planned (without it, no counts rather than zeros)."""
        types = sorted(set(self.read) | set(self.rejected))
        population = [self.population.get(k, 0) for k in POPULATIONS]
        return RunSummary(
            as_of=as_of,
            protocol=protocol,
            files=self.files,
            files_not_read=tuple(sorted(self.not_read)),
            input_bytes=self.input_bytes,
            patients=self.patients,
            records_read=sum(self.read.values()),
            records_used=sum(self.read.values()) - sum(self.rejected.values()),
            records_rejected=sum(self.rejected.values()),
            by_type={t: TypeCounts(self.read[t], self.read[t] - self.rejected[t], self.rejected[t]) for t in types},
            rejects_by_reason=dict(sorted(self.reasons.items())),
            rejects_not_listed=_by_file(self.unlisted),
            population=PopulationCounts(*population),
            unmapped_codes=_most_frequent(self.unmapped),
            writeback=PlanCounts(*(self.plan.get(k, 0) for k in ("create", "update", "unchanged")))
            if writeback
            else None,
            workers=workers,
            results_dir=results_dir or UNSET,
        )


POPULATIONS = ("subjects", "candidates", "not-in-study", "not-screened")


UNMAPPED_SHOWN = 20  # per kind of code, in the run summary


def _by_file(unlisted: Counter[tuple[str, str]]) -> dict[str, int]:
    """Per input file, its rejects counted but not listed one by one in rejects.ndjson (over the cap)."""
    files: Counter[str] = Counter()
    for (name, _code), n in unlisted.items():
        files[name] += n
    return dict(sorted(files.items()))


def _most_frequent(unmapped: Counter[tuple[str, str]]) -> dict[str, tuple[UnmappedCode, ...]]:
    """The codes most often left unmapped, per kind (``Observation.code``, ...): where a site's mapping work
    starts (each is a line to add to mappings/codes.toml)."""
    kinds: dict[str, list[UnmappedCode]] = {}
    for (kind, code), n in sorted(unmapped.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])):
        shown = kinds.setdefault(kind, [])
        if len(shown) < UNMAPPED_SHOWN:
            shown.append(UnmappedCode(code, n))
    return {kind: tuple(shown) for kind, shown in kinds.items()}


class PhaseClock:
    """The wall time of each phase of a run, for summary.json's ``seconds``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._since, 3)
        self._since = now


def _no_phase(_phase: str) -> None:
    """A run's phases, told to no one."""


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """What a run is asked to do, from the CLI or sync to the engine: the inputs, the day and the mappings, where
    the outputs go and which of them, how the input is read, and who is told what as it goes. Keyword-built;
    a dataclass rather than a Struct, as it holds the engine and callbacks.

    ``study``: the ResearchStudy id whose subjects are evaluated (default: the one the mappings name).
    ``screen_candidates``: also evaluate patients without a ResearchSubject of the study, as screening
    candidates at the as-of date, reported apart in ``candidates.ndjson``; ``enrol_candidates``: and write them
    back (a new ResearchSubject each). docs/protocol.md §1. ``fhir_bases``: the FHIR base URLs the data came
    from, whose absolute references are local (a pull folder's server is one already); a reference to any other
    server is rejected (``bad-reference``). ``engine``: ``local_engine.LocalEngine`` (this machine's cores; the
    default) or ``spark_engine.SparkEngine``, which also reads ``urls`` (inputs by URL: ``hdfs://``, ``s3a://``)
    and may write the results to ``results_dir``. ``on_writeback``: called with the write-back as published (the
    Bundle and the plan), so that a caller that pushes it at once (sync) need not read the files back.
    ``limits``: the largest record read, how many rejects of one file are listed one by one, and which reader
    reads NDJSON (``--reader``: ``python`` or ``duckdb``).
    """

    inputs: tuple[Path, ...]
    out: Path
    as_of: date
    mappings: Mappings
    mappings_identity: ProtocolIdentity  # the results header's "protocol" (its study: the one evaluated)
    study: str | None = None
    fhir_bases: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()  # inputs Spark reads by URL (hdfs://, s3a://): needs the Spark engine
    report: bool = True
    writeback: bool = True
    screen_candidates: bool = False
    enrol_candidates: bool = False
    compare_with_paper: bool | None = None  # the report's comparison with the paper: None = when it is its cohort
    limits: InputLimits = field(default_factory=InputLimits)  # the largest record; rejects listed per file
    results_dir: str = ""  # Spark engine: per-patient results go to this URL, written by Spark
    engine: Engine | None = None  # None: the local engine, with as many workers as the input's size repays
    progress: Callable[[int], None] | None = None  # told the bytes read, as they are read (both passes)
    on_phase: Callable[[str], None] = _no_phase  # told each phase as it starts: write, report
    on_writeback: Callable[[Writeback], None] | None = None  # given the write-back in memory, once published

    @property
    def reject_cap(self) -> int | None:
        """Rejects listed one by one per input file (None: all of them)."""
        return self.limits.rejects_per_file or None


@dataclass(frozen=True)
class FoundInputs:
    """The input files found under the request's paths, in input order, and the files there not read (each a
    ``not-read`` reject: no FHIR data by its name)."""

    files: list[Path]
    unread: list[Reject]


class Engine(Protocol):
    """Where the per-patient work runs: ``local_engine.LocalEngine`` (this machine's cores) or
    ``spark_engine.SparkEngine`` (a Spark session). Each takes its own options when built (workers, the Spark
    master); both finish through ``publish.publish_run``, and return what it returns."""

    @property
    def name(self) -> str:
        """``local`` or ``spark``, as ``--engine`` names it."""
        ...

    def run(self, request: RunRequest, found: FoundInputs, settings: EvaluationSettings) -> TimedRunSummary:
        """The run, in ``request.out``, which ``pipeline.run_evaluate`` holds (locked)."""
        ...


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

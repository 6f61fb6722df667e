"""What a run's engines take and hand back: the run request, the counts, the phase clock, and what an
engine returns once every patient is evaluated. The local and the Spark engine meet here and in ``steps``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from msgspec import UNSET

from fhiradapter.core.evaluate import CohortRow
from fhiradapter.core.results import (
    PlanCounts,
    PopulationCounts,
    ProtocolIdentity,
    RunSummary,
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

"""What the rules decide, as typed values: one frozen type per concept, a ``StrEnum`` per category.

The rules (eligibility, Child-Pugh, response, toxicity, survival) return these types, ``evaluate_patient``
puts them together in a :class:`PatientResult`, and JSON is made once, at the edge, by :func:`to_json`. The
field names and their order are results.json's documented contract (docs/running.md); a field that is left
``UNSET`` is not written at all (a key that results.json only has in some cases).

The types are ``msgspec`` Structs: frozen, without a ``__dict__`` (like a slotted class), picklable (a worker
process hands them back), and encoded to JSON by msgspec straight from the attributes. Categories are
``StrEnum`` members, so ``Response.PR == "PR"`` and JSON holds the plain string.
"""

from __future__ import annotations

import datetime
from datetime import date
from enum import StrEnum
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType


class CriterionStatus(StrEnum):
    MET = "met"
    NOT_MET = "not_met"
    UNKNOWN = "unknown"


class EligibilityStatus(StrEnum):
    ELIGIBLE = "eligible"
    INELIGIBLE = "ineligible"
    UNDETERMINED = "undetermined"  # a criterion is unknown and none is not met


class Population(StrEnum):
    """docs/protocol.md §1: a study subject (a ResearchSubject of the study) or a screening candidate."""

    SUBJECT = "subject"
    CANDIDATE = "candidate"


class Response(StrEnum):
    """WHO + AFP response of an assessment, and the best overall response (docs/protocol.md §4)."""

    CR = "CR"
    PR = "PR"
    SD = "SD"
    PD = "PD"
    NE = "NE"


class ResponseBasis(StrEnum):
    """What a PD or PR rests on."""

    TUMOUR = "tumour"
    AFP = "afp"
    BOTH = "both"
    NEW_LESION = "new_lesion"


class SubjectStatus(StrEnum):
    """R4 ResearchSubject.status as docs/protocol.md §7 sets it."""

    SCREENING = "screening"
    INELIGIBLE = "ineligible"
    ELIGIBLE = "eligible"
    ON_STUDY_INTERVENTION = "on-study-intervention"
    FOLLOW_UP = "follow-up"
    OFF_STUDY = "off-study"


class StopReason(StrEnum):
    """Why the study drug stopped (docs/protocol.md §7): recorded in statusReason, else inferred."""

    PROGRESSION = "progression"
    TOXICITY = "toxicity"
    REFUSAL = "refusal"
    DEATH = "death"
    OTHER = "other"


class DoseActionKind(StrEnum):
    INTERRUPT = "interrupt"
    DISCONTINUE = "discontinue"


# --- Eligibility (§2) -------------------------------------------------------------------------------------


class Measurement(msgspec.Struct, frozen=True, omit_defaults=True):
    """A measured value a criterion used: in the concept's canonical unit, with its date."""

    value: float | int | None
    unit: str | None
    date: date | None
    conversion: str | None = None  # the unit conversion applied, when there was one (written only then)


class AgeRange(msgspec.Struct, frozen=True):
    """The age at screening of a patient whose birth date has no month or day: both possible ages."""

    min: int
    max: int


class Measurability(msgspec.Struct, frozen=True):
    metastases: int
    bidimensional_lesions: int


class ChildPughClass(msgspec.Struct, frozen=True):
    score: int
    cls: str = msgspec.field(name="class")


class AnthracyclineHistory(msgspec.Struct, frozen=True, omit_defaults=True):
    anthracycline_start: str  # as precise as the record (a partial date stays partial)
    progression_date: date | None = None


CriterionValue = int | str | Measurement | AgeRange | Measurability | ChildPughClass | AnthracyclineHistory | None


class Criterion(msgspec.Struct, frozen=True):
    id: str  # one of eligibility.CRITERIA
    status: CriterionStatus
    value: CriterionValue
    evidence: tuple[str, ...]  # resource ids, sorted
    detail: str


class Eligibility(msgspec.Struct, frozen=True):
    status: EligibilityStatus
    screening_date: date
    criteria: tuple[Criterion, ...]
    screening_date_source: str = ""

    def criterion(self, cid: str) -> Criterion:
        return next(c for c in self.criteria if c.id == cid)

    def failed(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.criteria if c.status is CriterionStatus.NOT_MET)

    def unknown(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.criteria if c.status is CriterionStatus.UNKNOWN)


# --- Child-Pugh (§3) --------------------------------------------------------------------------------------


class ChildPughScore(msgspec.Struct, frozen=True):
    score: int | None
    cls: str | None = msgspec.field(name="class")
    points: dict[str, int]
    missing: tuple[str, ...]
    used_pt_instead_of_inr: bool
    evidence: tuple[str, ...]


# --- Response (§4) ----------------------------------------------------------------------------------------


class Assessment(msgspec.Struct, frozen=True):
    date: date
    response: Response
    spd_mm2: float | int | None
    afp: float | int | None
    basis: ResponseBasis | None
    afp_only: bool
    confirmed: bool | None
    reasons: tuple[str, ...]
    evidence: tuple[str, ...]


class Baseline(msgspec.Struct, frozen=True):
    """The baseline tumour assessment and AFP. Without one (best response NE), only the first three are
    written, as null."""

    date: date | None
    spd_mm2: float | int | None
    afp: float | int | None
    afp_date: datetime.date | UnsetType | None = UNSET
    afp_uln: float | int | UnsetType | None = UNSET
    afp_evaluable: bool | UnsetType = UNSET
    lesions: tuple[str, ...] | UnsetType = UNSET
    evidence: tuple[str, ...] | UnsetType = UNSET


class ResponseDuration(msgspec.Struct, frozen=True):
    start: date
    end: date
    days: int
    censored: bool


# --- Toxicity (§5) ----------------------------------------------------------------------------------------


class Toxicity(msgspec.Struct, frozen=True):
    """One term's worst grade in the treatment-emergent window."""

    term: str
    display: str
    meddra: str | None
    worst_grade: int
    source: str  # what the worst grade came from: reported | derived | lab
    sources: tuple[str, ...]
    criteria: str
    first_date: date
    evidence: tuple[str, ...]


class DoseAction(msgspec.Struct, frozen=True):
    date: date
    action: DoseActionKind
    term: str
    grade: int
    rule: str
    evidence: tuple[str, ...]


# --- Survival (§6) and the patient ------------------------------------------------------------------------


class Survival(msgspec.Struct, frozen=True):
    days: int
    event: bool
    end_date: date
    basis: str


class Conversion(msgspec.Struct, frozen=True):
    resource: str
    conversion: str


class Note(msgspec.Struct, frozen=True):
    """A data-quality finding about the patient's records (``issues`` in results.json)."""

    resource: str | None
    path: str
    code: str
    message: str


class Characteristics(msgspec.Struct, frozen=True):
    """Table 1 of a report: who the patient was at screening (values the rules already used)."""

    age: int | AgeRange | None
    sex: str | None
    ecog: float | int | None
    child_pugh_class: str | None
    prior_anthracycline: tuple[str, ...]
    metastatic_sites: tuple[str, ...]
    baseline_afp: float | int | None


class PatientResult(msgspec.Struct, frozen=True, kw_only=True):
    """One patient's entry of results.json."""

    patient: str
    population: Population
    research_subject: str | None
    eligibility: Eligibility
    child_pugh: ChildPughScore
    treated: bool
    index_date: date | None
    last_dose_date: date | None
    treatment_days: int | None
    on_treatment_at_as_of: bool
    assessments: tuple[Assessment, ...]
    baseline: Baseline | None
    best_response: Response | None
    best_response_reason: str | None
    duration_of_response: ResponseDuration | None
    os: Survival | None
    toxicities: tuple[Toxicity, ...]
    dose_actions: tuple[DoseAction, ...]
    conversions: tuple[Conversion, ...]
    off_treatment_reason: StopReason | UnsetType | None = UNSET  # written for treated patients only
    characteristics: Characteristics
    research_subject_status: SubjectStatus
    research_subject_period_end: date | None
    issues: tuple[Note, ...]


# --- The cohort (§6) --------------------------------------------------------------------------------------


class Rate(msgspec.Struct, frozen=True):
    """A proportion with its exact (Clopper-Pearson) 95 % interval; ``rate`` and the interval are None at n = 0."""

    count: int
    n: int
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    method: str = "clopper-pearson"


class SurvivalPoint(msgspec.Struct, frozen=True):
    """One row of the Kaplan-Meier table."""

    t: float
    at_risk: int
    events: int
    censored: int
    survival: float
    ci_low: float
    ci_high: float


class ToxicityCount(msgspec.Struct, frozen=True):
    """Table 2: patients by worst grade of one term."""

    term: str
    display: str
    meddra: str | None
    grade_1_2: int
    grade_3_4: int


class ScreeningCounts(msgspec.Struct, frozen=True):
    eligibility_counts: dict[str, int]
    failed_criteria: dict[str, int]


class CohortSummary(msgspec.Struct, frozen=True):
    """The cohort block of results.json, over the treated population (ITT)."""

    n_treated: int
    n_screened_only: int
    best_response_counts: dict[Response, int]
    orr: Rate
    dcr: Rate
    median_os_days: float | None
    os_ci: tuple[float | None, float | None]
    os_n: int
    os_events: int
    os_table: tuple[SurvivalPoint, ...]
    median_treatment_days: float | int | None
    treatment_days_range: tuple[int, int] | None
    toxicity_table: tuple[ToxicityCount, ...]
    screening: ScreeningCounts


# --- The run (results.json's header, summary.json) --------------------------------------------------------


class ProtocolIdentity(msgspec.Struct, frozen=True):
    """The mappings a run used: the protocol's id, version and title, the study evaluated, and the folder and
    sha256 of the mappings files (``mappings_io.load_mappings``)."""

    id: str
    version: str
    title: str
    toxicity_criteria: str
    study: str
    rules: str
    mappings_dir: str
    sha256: str
    concept_maps: tuple[str, ...] | UnsetType = UNSET  # the site's ConceptMap files read, when it has any


class AdapterInfo(msgspec.Struct, frozen=True):
    name: str
    version: str


class TypeCounts(msgspec.Struct, frozen=True):
    """Records of one resource type: read, used, rejected."""

    read: int
    used: int
    rejected: int


class PopulationCounts(msgspec.Struct, frozen=True):
    """docs/protocol.md §1: study subjects, screened candidates, patients outside the study not screened, and
    candidates not screened (they had died)."""

    subjects: int
    candidates: int
    not_in_study: int = msgspec.field(name="not-in-study")
    not_screened: int = msgspec.field(name="not-screened")


class UnmappedCode(msgspec.Struct, frozen=True):
    """A code no mapping names (``system|code``), and how many records carry it."""

    code: str
    records: int


class PlanCounts(msgspec.Struct, frozen=True):
    """The write-back plan's entries per action."""

    create: int
    update: int
    unchanged: int


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What a run read, rejected and decided, in counts: results.json's ``run_summary`` (docs/running.md).

    Built once, when every patient is evaluated; summary.json is this with the run's timings
    (:class:`TimedRunSummary`)."""

    as_of: date
    protocol: ProtocolIdentity
    files: int
    files_not_read: tuple[str, ...]  # listed in rejects.ndjson with why; they hold no records
    input_bytes: int
    patients: int
    records_read: int
    records_used: int
    records_rejected: int
    by_type: dict[str, TypeCounts]
    rejects_by_reason: dict[str, int]
    rejects_not_listed: dict[str, int]  # per input file: rejects counted, not listed (over the cap)
    population: PopulationCounts
    unmapped_codes: dict[str, tuple[UnmappedCode, ...]]  # per kind of code, the most frequent
    writeback: PlanCounts | None  # None: not planned (--no-writeback), no counts rather than zeros
    workers: int
    results_dir: str | UnsetType = UNSET  # --engine spark --results-dir: where Spark wrote the results


class TimedRunSummary(RunSummary, frozen=True, kw_only=True):
    """summary.json: the run summary and the run's wall time per phase and CPU time per worker (which results.json
    leaves out, so that it stays reproducible)."""

    seconds: dict[str, float]
    worker_cpu_seconds: dict[str, list[float]]


class ResultsHeader(msgspec.Struct, frozen=True):
    """results.json before its ``subjects``: the as-of date, the mappings, the adapter, the inputs, the summary."""

    as_of: date
    protocol: ProtocolIdentity
    adapter: AdapterInfo
    inputs: tuple[str, ...]
    run_summary: RunSummary


_encoder = msgspec.json.Encoder()


def to_json(value: msgspec.Struct) -> bytes:
    """The JSON of a result (the one place results become JSON)."""
    return _encoder.encode(value)


def to_builtins(value: Any) -> Any:  # any result, as arbitrary JSON: the tests compare it with results.json's
    """A result as its JSON holds it, in plain dicts, lists, strings and numbers (for tests: the code reads the
    typed values, and reads results back with ``readback``)."""
    return msgspec.json.decode(_encoder.encode(value))

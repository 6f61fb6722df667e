"""Domain values: compact, immutable records mapped from FHIR resources, and the per-patient record.

Records are ``NamedTuple``s on purpose: they are small (the pipeline holds only these; raw JSON only where a
resource is written back as it was, ``StudySubject.raw`` and ``EarlierResult.content``), cheap to pickle when
the grouping step spills to disk, and immutable. A date the mapper requires in full (an observation's, an
adverse event's) is a ``datetime.date``; one a record may give without its day or month is a
:class:`~fhiradapter.core.dates.PartialDate`, which the rules compare at its own precision.
Every record keeps ``ref`` ("Type/id") for evidence and ``origin`` (file, locator) for reject reports.
"""

from __future__ import annotations

from datetime import date
from typing import NamedTuple

import msgspec
from msgspec import field

from fhiradapter.core.dates import PartialDate
from fhiradapter.core.json_types import JsonObject

Origin = tuple[str, str]  # (source file, "line 12" | "entry 3" | "entry 3 (Bundle in line 5)")


class Issue(NamedTuple):
    """A data-quality finding: which resource, where in it, a stable code and a readable reason.

    ``source_code``: for ``unmapped-code``, the resource's own codes (``system|code``, comma-separated) that no
    mapping knows: the line a site adds to mappings/codes.toml.
    """

    ref: str | None
    path: str
    code: str
    message: str
    source_code: str | None = None


class Person(NamedTuple):
    """A Patient: birth date and sex for age and Table 1, death for survival (docs/protocol.md §6)."""

    ref: str
    birth_date: PartialDate | None
    gender: str | None
    deceased_date: PartialDate | None
    deceased_flag: bool
    origin: Origin


class Observed(NamedTuple):
    """One Observation reduced to what the rules read.

    ``value`` is in the concept's canonical unit (``unit``); ``coded`` holds a mapped answer
    (``"mild"``, ``"worsened"``, ...). Tumour sizes carry the lesion (``focus``) and both diameters in mm.
    """

    ref: str
    patient: str
    concept: str
    date: date
    value: float | None
    unit: str | None
    coded: str | None
    low: float | None
    high: float | None
    focus: str | None
    longest_mm: float | None  # tumour size: the longest diameter
    perpendicular_mm: float | None  # and the greatest diameter perpendicular to it
    status: str
    conversion: str | None
    origin: Origin


class Exposure(NamedTuple):
    """A drug exposure (MedicationStatement / Administration / Request) with its mapped drug concept."""

    ref: str
    patient: str
    drug: str | None
    drug_code: str | None
    start: PartialDate | None
    end: PartialDate | None
    status: str
    med_ref: str | None  # unresolved reference to a separate Medication, resolved after reading
    stop_reason: str | None  # mapped statusReason: progression | toxicity | refusal | death | other
    origin: Origin


class AdverseEvent(NamedTuple):
    """An AdverseEvent with its CTC v2.0 term and grade (reported, or derived from severity), for §5."""

    ref: str
    patient: str
    term: str | None  # CTC v2.0 term key from mappings, None when unmapped
    term_text: str
    meddra: str | None
    grade: int | None
    grade_source: str  # "reported" (ae-grade extension) | "derived" (from severity)
    date: date
    origin: Origin


class Condition(NamedTuple):
    """A Condition of a protocol concept (HCC, metastasis, neuropathy, infection...) for §2."""

    ref: str
    patient: str
    concept: str
    verification: str | None
    clinical: str | None
    onset: PartialDate | None
    recorded: PartialDate | None
    origin: Origin
    text: str | None = None  # the code's display or text, for reports


class Consent(NamedTuple):
    """A research Consent, for the consent criterion of §2."""

    ref: str
    patient: str
    status: str
    date: PartialDate | None
    origin: Origin


class StudySubject(NamedTuple):
    """A ResearchSubject: the study link, the screening date and the version for write-back."""

    ref: str
    patient: str
    study: str | None
    status: str
    start: PartialDate | None
    end: PartialDate | None
    has_consent: bool
    version: str | None
    origin: Origin
    # JSON edge: the resource itself, as read, so that a status update written back changes nothing else
    raw: JsonObject | None = None
    study_identifier: tuple[str, str] | None = None  # a logical ``study`` reference: (system, value)


class EarlierResult(NamedTuple):
    """A result resource the adapter wrote in an earlier run (found by the adapter's identifier system)."""

    ref: str
    patient: str
    identifier: str
    content_hash: str | None
    version: str | None
    origin: Origin
    # JSON edge: what it said (the fields read), as read, so that a plan can show old and new
    content: JsonObject | None = None


class SupportingResource(NamedTuple):
    """A resource that is read for completeness (BodyStructure, ResearchStudy, Medication)."""

    ref: str
    patient: str | None
    code: str | None  # for Medication: the mapped drug concept
    origin: Origin
    identifiers: tuple[tuple[str, str], ...] = ()  # for ResearchStudy: its identifiers (system, value)


class PatientRecord(msgspec.Struct):
    """Everything known about one patient, as mapped records (filled record by record as they are grouped)."""

    patient: str
    person: Person | None = None
    observations: list[Observed] = field(default_factory=list)
    meds: list[Exposure] = field(default_factory=list)
    adverse_events: list[AdverseEvent] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    consents: list[Consent] = field(default_factory=list)
    subjects: list[StudySubject] = field(default_factory=list)
    written: list[EarlierResult] = field(default_factory=list)
    others: list[SupportingResource] = field(default_factory=list)

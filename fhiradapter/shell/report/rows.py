"""The compact per-patient row a report needs, so that no report has to re-read results.json.

Each engine writes one :class:`ReportRow` per study subject as it evaluates (the local engine's workers into
the spill folder, Spark's driver from what it collects); the report reads them back as the same type
(``outputs.iter_rows``). Its fields are the results' own types (``Characteristics``, ``Survival``, ...), so a
renamed result field is a type error here, not a missing key at run time.
"""

from __future__ import annotations

import msgspec

from fhiradapter.core import dates
from fhiradapter.core.eligibility import explain
from fhiradapter.core.results import (
    Characteristics,
    CriterionStatus,
    EligibilityStatus,
    PatientResult,
    Response,
    StopReason,
    SubjectStatus,
    Survival,
)


class AssessmentDay(msgspec.Struct, frozen=True):
    """An assessment on the swimmer plot: its day from the index date (day 1) and its response."""

    day: int
    response: Response


class ReportRow(msgspec.Struct, frozen=True, kw_only=True):
    """One study subject, as the report's tables and figures need it."""

    patient: str
    treated: bool
    characteristics: Characteristics
    treatment_days: int | None
    best_response: Response | None
    status: SubjectStatus
    off_treatment_reason: StopReason | None
    os: Survival | None
    eligibility: EligibilityStatus
    # Each criterion not met or unknown, as a reader needs it: the value found and the limit (§2).
    failed: tuple[str, ...]
    unknown: tuple[str, ...]
    assessments: tuple[AssessmentDay, ...]
    on_treatment: bool
    issues: tuple[str, ...]  # the codes of the data-quality notes


def report_row(result: PatientResult) -> ReportRow:
    """What the report keeps of one subject's result."""
    index = result.index_date
    criteria = result.eligibility.criteria
    return ReportRow(
        patient=result.patient,
        treated=result.treated,
        characteristics=result.characteristics,
        treatment_days=result.treatment_days,
        best_response=result.best_response,
        status=result.research_subject_status,
        off_treatment_reason=result.off_treatment_reason or None,
        os=result.os,
        eligibility=result.eligibility.status,
        failed=tuple(explain(c) for c in criteria if c.status is CriterionStatus.NOT_MET),
        unknown=tuple(explain(c) for c in criteria if c.status is CriterionStatus.UNKNOWN),
        assessments=tuple(
            AssessmentDay(dates.inclusive_days(index, a.date), a.response) for a in result.assessments if index
        ),
        on_treatment=result.on_treatment_at_as_of,
        issues=tuple(i.code for i in result.issues),
    )


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ReportRow)


def encode_row(row: ReportRow) -> bytes:
    """One line of a report-rows part file (without its newline)."""
    return _encoder.encode(row)


def decode_row(line: bytes) -> ReportRow:
    return _decoder.decode(line)

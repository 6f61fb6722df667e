"""Registry rows: results.json (and the clinical extract) flattened into the export tables, optionally pseudonymised.

Read from typed values (``PatientResult``, ``CohortSummary``, the header, ``extract.ClinicalExtract``); each
table's rows are :data:`Row` values, one cell per column name, which the shell writes to SQL
(``shell/registry/registry_db.py``) or to CSV/Parquet files. Nothing here touches a database or a file.

Pseudonymisation (for registries) is done here, once, so every output format gets the same treatment:
- the subject key is ``HMAC-SHA-256(key, "Patient/<id>")``, hex, first 32 characters (128 bits);
- the birth date is replaced by the age at the index date (at screening for an untreated patient);
- free text is dropped (criterion details, reasons, verbatim AE terms, data-quality messages);
- resource ids are dropped (they name the patient: ``Observation/thal-01-afp``); lesions become ``L1``, ``L2`` ...
The mapping from pseudonym back to patient is never computed into any output.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Literal

import msgspec

from fhiradapter.core import dates
from fhiradapter.core.extract import ClinicalExtract
from fhiradapter.core.results import CohortSummary, Criterion, PatientResult, Response, ResultsHeader
from fhiradapter.errors import ConfigError

# A row of an export table: its cells by column name, each as a database column or a CSV/Parquet cell holds it.
Cell = str | int | float | bool | None
Row = dict[str, Cell]

# What an export writes: the registry tables, or SDTM datasets (``export --export-format``).
ExportFormat = Literal["tables", "sdtm"]
EXPORT_FORMATS: dict[str, ExportFormat] = {"tables": "tables", "sdtm": "sdtm"}


def export_format(name: str) -> ExportFormat:
    """``name`` as an export format; a ConfigError naming the choices when it is none."""
    try:
        return EXPORT_FORMATS[name]
    except KeyError:
        raise ConfigError(f"export format {name!r}: one of {', '.join(EXPORT_FORMATS)}") from None


MIN_KEY_BYTES = 32  # HMAC-SHA-256 key: at least the hash's own size (RFC 2104 §3)
PSEUDONYM_CHARS = 32


@dataclass(frozen=True)
class Pseudonymiser:
    """Keyed hashing of subject keys. ``key_id`` names the key (a hash of it) without revealing it."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"the pseudonymisation key has {len(self.key)} bytes; at least {MIN_KEY_BYTES} bytes are required "
                "(e.g. `openssl rand -hex 32 > key`)"
            )

    def __repr__(self) -> str:  # never print the key
        return f"Pseudonymiser(key_id={self.key_id!r})"

    def pseudonym(self, patient_ref: str) -> str:
        return hmac.new(self.key, patient_ref.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_CHARS]

    @property
    def key_id(self) -> str:
        return hmac.new(self.key, b"fhiradapter key id", hashlib.sha256).hexdigest()[:12]


@dataclass(frozen=True)
class RunInfo:
    """What identifies one export run; ``run_id`` is derived from the results' content, so re-exporting is a no-op."""

    run_id: str
    study_id: str
    as_of: str
    adapter_version: str
    mappings_version: str
    mappings_sha256: str
    results_sha256: str
    pseudonymised: bool
    key_id: str | None
    input_files: int
    records_read: int
    records_used: int
    records_rejected: int
    patients: int


def run_info(header: ResultsHeader, results_sha256: str, pseudo: Pseudonymiser | None) -> RunInfo:
    """The run row's values from results.json's header (everything but ``subjects``)."""
    protocol, summary = header.protocol, header.run_summary
    key_id = pseudo.key_id if pseudo else None
    seed = f"{results_sha256}|{'pseudo:' + (key_id or '') if pseudo else 'identified'}"
    return RunInfo(
        run_id=hashlib.sha256(seed.encode()).hexdigest()[:24],
        study_id=protocol.id,
        as_of=header.as_of.isoformat(),
        adapter_version=header.adapter.version,
        mappings_version=protocol.version,
        mappings_sha256=protocol.sha256,
        results_sha256=results_sha256,
        pseudonymised=pseudo is not None,
        key_id=key_id,
        input_files=summary.files,
        records_read=summary.records_read,
        records_used=summary.records_used,
        records_rejected=summary.records_rejected,
        patients=summary.patients,
    )


def iso(day: date | None) -> str | None:
    """A date as the export writes it (ISO 8601 text), None as None."""
    return day.isoformat() if day is not None else None


class SubjectView:
    """One subject's results and extract, with the identity rules applied (see the module docstring)."""

    def __init__(self, result: PatientResult, extract: ClinicalExtract | None, pseudo: Pseudonymiser | None):
        self.result, self.extract, self.pseudo = result, extract, pseudo
        patient = result.patient
        self.key = pseudo.pseudonym(patient) if pseudo else patient.removeprefix("Patient/")
        self.index_date = iso(result.index_date)
        self.reference_date = self.index_date or iso(result.eligibility.screening_date)
        self._lesions: dict[str, str] = {}

    @property
    def identified(self) -> bool:
        return self.pseudo is None

    def text(self, value: str | None) -> str | None:
        """Free text: kept when identified, dropped when pseudonymised."""
        return value if self.identified else None

    def refs(self, refs: Iterable[str] | None) -> str | None:
        """Evidence references, space-separated; dropped when pseudonymised (resource ids name the patient)."""
        return " ".join(refs or ()) if self.identified else None

    def lesion(self, ref: str | None) -> str | None:
        """A lesion's label: its BodyStructure reference, or L1, L2 ... in order of first sight when pseudonymised."""
        if ref is None:
            return None
        if self.identified:
            return ref
        return self._lesions.setdefault(ref, f"L{len(self._lesions) + 1}")

    @property
    def sex(self) -> str | None:
        """Patient.gender, from the extract, else as results.json's characteristics have it."""
        return (self.extract.sex if self.extract else None) or self.result.characteristics.sex

    @property
    def birth_date(self) -> str | None:
        return self.extract.birth_date if self.extract and self.identified else None

    @property
    def age_at_reference(self) -> int | None:
        birth, ref = self.extract.birth_date if self.extract else None, dates.to_date(self.reference_date)
        if not birth or ref is None:
            age = self.result.characteristics.age
            return age if isinstance(age, int) else None
        born = dates.partial_date(birth)
        return dates.age_bounds(born, ref)[0] if born is not None else None

    def study_day(self, value: str | None) -> int | None:
        """SDTM --DY: days from the index date, day 1 = index date, no day 0."""
        day, ref = dates.to_date(value), dates.to_date(self.index_date)
        if day is None or ref is None:
            return None
        delta = (day - ref).days
        return delta + 1 if delta >= 0 else delta


def _subject_row(subject: SubjectView) -> Row:
    result = subject.result
    elig, cp = result.eligibility, result.child_pugh
    return {
        "subject_key": subject.key,
        "sex": subject.sex,
        "birth_date": subject.birth_date,
        "age_at_index": subject.age_at_reference,
        "screening_date": iso(elig.screening_date),
        "eligibility_status": elig.status.value,
        "child_pugh_score": cp.score,
        "child_pugh_class": cp.cls,
        "treated": result.treated,
        "index_date": iso(result.index_date),
        "last_dose_date": iso(result.last_dose_date),
        "treatment_days": result.treatment_days,
        "research_subject_status": result.research_subject_status.value,
        "issues": len(result.issues),
    }


def _assessment_rows(subject: SubjectView) -> list[Row]:
    return [
        {
            "subject_key": subject.key,
            "seq": n,
            "assessment_date": iso(a.date),
            "study_day": subject.study_day(iso(a.date)),
            "response": a.response.value,
            "spd_mm2": a.spd_mm2,
            "afp_ng_ml": a.afp,
            "basis": a.basis.value if a.basis else None,
            "confirmed": a.confirmed,
            "evidence": subject.refs(a.evidence),
        }
        for n, a in enumerate(subject.result.assessments, start=1)
    ]


def _best_response_rows(subject: SubjectView) -> list[Row]:
    result = subject.result
    if not result.treated:
        return []
    dor = result.duration_of_response
    return [
        {
            "subject_key": subject.key,
            "best_response": result.best_response.value if result.best_response else None,
            "reason": subject.text(result.best_response_reason),
            "response_start": iso(dor.start) if dor else None,
            "response_end": iso(dor.end) if dor else None,
            "response_days": dor.days if dor else None,
            "response_censored": dor.censored if dor else None,
        }
    ]


def table_rows(subject: SubjectView) -> dict[str, list[Row]]:
    """Every table's rows for one subject (``run_id`` is added by the writer)."""
    result = subject.result
    criteria: list[Row] = [
        {
            "subject_key": subject.key,
            "criterion_id": c.id,
            "status": c.status.value,
            "value": _criterion_value(c, subject),
            "detail": subject.text(c.detail),
            "evidence": subject.refs(c.evidence),
        }
        for c in result.eligibility.criteria
    ]
    toxicities: list[Row] = [
        {
            "subject_key": subject.key,
            "term": t.term,
            "meddra": t.meddra,
            "worst_grade": t.worst_grade,
            "source": t.source,
            "first_date": iso(t.first_date),
            "criteria": t.criteria,
        }
        for t in result.toxicities
    ]
    actions: list[Row] = [
        {"subject_key": subject.key, "seq": n, "action_date": iso(d.date), "action": d.action.value, "term": d.term}
        for n, d in enumerate(result.dose_actions, start=1)
    ]
    outcomes: list[Row] = []
    if result.os:
        outcomes.append(
            {
                "subject_key": subject.key,
                "os_days": result.os.days,
                "os_event": result.os.event,
                "os_end_date": iso(result.os.end_date),
                "os_basis": result.os.basis,
            }
        )
    return {
        "subjects": [_subject_row(subject)],
        "eligibility_criteria": criteria,
        "assessments": _assessment_rows(subject),
        "best_responses": _best_response_rows(subject),
        "toxicities": toxicities,
        "dose_actions": actions,
        "outcomes": outcomes,
    }


def _criterion_value(c: Criterion, subject: SubjectView) -> str | None:
    """A criterion's value in one text cell: text as it is, anything else as its JSON (keys sorted)."""
    value = c.value
    if value is None:
        return None
    if isinstance(value, str):
        return None if c.id in FREE_TEXT_CRITERIA and not subject.identified else value
    return json.dumps(msgspec.to_builtins(value), sort_keys=True, separators=(",", ":"))


# Criterion values that are readable text rather than a code or a number.
FREE_TEXT_CRITERIA = frozenset({"consent"})


def cohort_row(cohort: CohortSummary) -> Row:
    """The one cohort-summary row of a run."""
    orr, dcr, counts = cohort.orr, cohort.dcr, cohort.best_response_counts
    low, high = cohort.treatment_days_range or (None, None)
    return {
        "n_treated": cohort.n_treated,
        "n_screened_only": cohort.n_screened_only,
        "cr": counts.get(Response.CR, 0),
        "pr": counts.get(Response.PR, 0),
        "sd": counts.get(Response.SD, 0),
        "pd": counts.get(Response.PD, 0),
        "ne": counts.get(Response.NE, 0),
        "orr_count": orr.count,
        "orr_n": orr.n,
        "orr_rate": orr.rate,
        "orr_ci_low": orr.ci_low,
        "orr_ci_high": orr.ci_high,
        "dcr_count": dcr.count,
        "dcr_n": dcr.n,
        "dcr_rate": dcr.rate,
        "dcr_ci_low": dcr.ci_low,
        "dcr_ci_high": dcr.ci_high,
        "ci_method": orr.method,
        "median_os_days": cohort.median_os_days,
        "os_ci_low": cohort.os_ci[0],
        "os_ci_high": cohort.os_ci[1],
        "os_events": cohort.os_events,
        "median_treatment_days": cohort.median_treatment_days,
        "treatment_days_min": low,
        "treatment_days_max": high,
    }

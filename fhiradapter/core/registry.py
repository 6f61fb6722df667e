"""Registry rows: results.json (and the clinical extract) flattened into the export tables, optionally pseudonymised.

One function per table, each returning plain dicts keyed by column name; the shell writes them to SQL
(``shell/registry_db.py``) or to CSV/Parquet files. Nothing here touches a database or a file.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fhiradapter.core import dates
from fhiradapter.errors import ConfigError

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


def run_info(header: Mapping[str, Any], results_sha256: str, pseudo: Pseudonymiser | None) -> RunInfo:
    """The run row's values from results.json's header (everything but ``subjects``)."""
    protocol, summary = header.get("protocol", {}), header.get("run_summary", {})
    key_id = pseudo.key_id if pseudo else None
    seed = f"{results_sha256}|{'pseudo:' + (key_id or '') if pseudo else 'identified'}"
    return RunInfo(
        run_id=hashlib.sha256(seed.encode()).hexdigest()[:24],
        study_id=str(protocol.get("id", "")),
        as_of=str(header.get("as_of", "")),
        adapter_version=str(header.get("adapter", {}).get("version", "")),
        mappings_version=str(protocol.get("version", "")),
        mappings_sha256=str(protocol.get("sha256", "")),
        results_sha256=results_sha256,
        pseudonymised=pseudo is not None,
        key_id=key_id,
        input_files=int(summary.get("files", 0)),
        records_read=int(summary.get("records_read", 0)),
        records_used=int(summary.get("records_used", 0)),
        records_rejected=int(summary.get("records_rejected", 0)),
        patients=int(summary.get("patients", 0)),
    )


class SubjectView:
    """One subject's results and extract, with the identity rules applied (see the module docstring)."""

    def __init__(self, result: Mapping[str, Any], extract: Mapping[str, Any] | None, pseudo: Pseudonymiser | None):
        self.result, self.extract, self.pseudo = result, extract or {}, pseudo
        patient = str(result["patient"])
        self.key = pseudo.pseudonym(patient) if pseudo else patient.removeprefix("Patient/")
        self.index_date: str | None = result.get("index_date")
        screening = result.get("eligibility", {}).get("screening_date")
        self.reference_date: str | None = self.index_date or screening
        self._lesions: dict[str, str] = {}

    @property
    def identified(self) -> bool:
        return self.pseudo is None

    def text(self, value: Any) -> Any:
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
    def birth_date(self) -> str | None:
        return self.extract.get("birth_date") if self.identified else None

    @property
    def age_at_reference(self) -> int | None:
        birth, ref = self.extract.get("birth_date"), dates.to_date(self.reference_date)
        if not birth or ref is None:
            age = self.result.get("characteristics", {}).get("age")
            return age if isinstance(age, int) else None
        born = dates.partial_date(str(birth))
        return dates.age_bounds(born, ref)[0] if born is not None else None

    def study_day(self, value: str | None) -> int | None:
        """SDTM --DY: days from the index date, day 1 = index date, no day 0."""
        day, ref = dates.to_date(value), dates.to_date(self.index_date)
        if day is None or ref is None:
            return None
        delta = (day - ref).days
        return delta + 1 if delta >= 0 else delta


def _json_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return _dumps(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def table_rows(v: SubjectView) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows for one subject (``run_id`` is added by the writer)."""
    r = v.result
    elig = r.get("eligibility", {})
    cp = r.get("child_pugh") or {}
    subject = {
        "subject_key": v.key,
        "sex": (v.extract.get("sex") or r.get("characteristics", {}).get("sex")),
        "birth_date": v.birth_date,
        "age_at_index": v.age_at_reference,
        "screening_date": elig.get("screening_date"),
        "eligibility_status": elig.get("status"),
        "child_pugh_score": cp.get("score"),
        "child_pugh_class": cp.get("class"),
        "treated": bool(r.get("treated")),
        "index_date": r.get("index_date"),
        "last_dose_date": r.get("last_dose_date"),
        "treatment_days": r.get("treatment_days"),
        "research_subject_status": r.get("research_subject_status"),
        "issues": len(r.get("issues") or ()),
    }
    criteria = [
        {
            "subject_key": v.key,
            "criterion_id": c["id"],
            "status": c["status"],
            "value": _criterion_value(c, v),
            "detail": v.text(c.get("detail")),
            "evidence": v.refs(c.get("evidence")),
        }
        for c in elig.get("criteria", ())
    ]
    assessments = [
        {
            "subject_key": v.key,
            "seq": n,
            "assessment_date": a.get("date"),
            "study_day": v.study_day(a.get("date")),
            "response": a.get("response"),
            "spd_mm2": a.get("spd_mm2"),
            "afp_ng_ml": a.get("afp"),
            "basis": a.get("basis"),
            "confirmed": a.get("confirmed"),
            "evidence": v.refs(a.get("evidence")),
        }
        for n, a in enumerate(r.get("assessments") or (), start=1)
    ]
    best = []
    if r.get("treated"):
        dor = r.get("duration_of_response") or {}
        best.append(
            {
                "subject_key": v.key,
                "best_response": r.get("best_response"),
                "reason": v.text(r.get("best_response_reason")),
                "response_start": dor.get("start"),
                "response_end": dor.get("end"),
                "response_days": dor.get("days"),
                "response_censored": dor.get("censored"),
            }
        )
    toxicities = [
        {
            "subject_key": v.key,
            "term": t["term"],
            "meddra": t.get("meddra"),
            "worst_grade": t["worst_grade"],
            "source": t.get("source"),
            "first_date": t.get("first_date"),
            "criteria": t.get("criteria"),
        }
        for t in r.get("toxicities") or ()
    ]
    actions = [
        {"subject_key": v.key, "seq": n, "action_date": d.get("date"), "action": d.get("action"), "term": d.get("term")}
        for n, d in enumerate(r.get("dose_actions") or (), start=1)
    ]
    os_ = r.get("os")
    outcomes = []
    if os_:
        outcomes.append(
            {
                "subject_key": v.key,
                "os_days": os_.get("days"),
                "os_event": bool(os_.get("event")),
                "os_end_date": os_.get("end_date"),
                "os_basis": os_.get("basis"),
            }
        )
    return {
        "subjects": [subject],
        "eligibility_criteria": criteria,
        "assessments": assessments,
        "best_responses": best,
        "toxicities": toxicities,
        "dose_actions": actions,
        "outcomes": outcomes,
    }


def _criterion_value(c: Mapping[str, Any], v: SubjectView) -> str | None:
    value = c.get("value")
    if isinstance(value, str) and c.get("id") in FREE_TEXT_CRITERIA and not v.identified:
        return None
    return _json_value(value)


# Criterion values that are readable text rather than a code or a number.
FREE_TEXT_CRITERIA = frozenset({"consent"})


def cohort_row(cohort: Mapping[str, Any]) -> dict[str, Any]:
    """The one cohort-summary row of a run."""
    orr, dcr = cohort.get("orr") or {}, cohort.get("dcr") or {}
    counts = cohort.get("best_response_counts") or {}
    os_ci = cohort.get("os_ci") or [None, None]
    days = cohort.get("treatment_days_range") or [None, None]
    return {
        "n_treated": cohort.get("n_treated"),
        "n_screened_only": cohort.get("n_screened_only"),
        "cr": counts.get("CR", 0),
        "pr": counts.get("PR", 0),
        "sd": counts.get("SD", 0),
        "pd": counts.get("PD", 0),
        "ne": counts.get("NE", 0),
        "orr_count": orr.get("count"),
        "orr_n": orr.get("n"),
        "orr_rate": orr.get("rate"),
        "orr_ci_low": orr.get("ci_low"),
        "orr_ci_high": orr.get("ci_high"),
        "dcr_count": dcr.get("count"),
        "dcr_n": dcr.get("n"),
        "dcr_rate": dcr.get("rate"),
        "dcr_ci_low": dcr.get("ci_low"),
        "dcr_ci_high": dcr.get("ci_high"),
        "ci_method": orr.get("method"),
        "median_os_days": cohort.get("median_os_days"),
        "os_ci_low": os_ci[0],
        "os_ci_high": os_ci[1],
        "os_events": cohort.get("os_events"),
        "median_treatment_days": cohort.get("median_treatment_days"),
        "treatment_days_min": days[0],
        "treatment_days_max": days[1],
    }

"""The per-patient source extract: the mapped records a registry or an SDTM dataset needs beyond results.json.

``evaluate`` writes one line per patient to ``clinical.ndjson`` (see ``shell/run/publish.py``); ``export`` reads it
beside ``results.json``. It holds what the rules read, after the as-of cut-off and without the records the run
rejected: birth date and sex, numeric observations (value in the canonical unit and as recorded), tumour
measurements per lesion, drug exposures and adverse events. Like results.json it names patients: it stays in the
results folder, and only the pseudonymising export may take it elsewhere.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from fhiradapter.core import dates
from fhiradapter.core.dates import PartialDate
from fhiradapter.core.evaluate import cut_off
from fhiradapter.core.mappers import as_recorded
from fhiradapter.core.model import PatientRecord

TUMOUR = "tumor_size"


def patient_extract(rec: PatientRecord, as_of: date, unused: set[str]) -> dict[str, Any]:
    """The extract line for one patient; ``unused`` holds the references the evaluation set aside."""
    kept, late = cut_off(rec, as_of)
    skip = unused | {u.ref for u in late}
    person = kept.person
    numeric: list[dict[str, Any]] = []
    tumour: list[dict[str, Any]] = []
    for o in kept.observations:
        if o.ref in skip:
            continue
        if o.concept == TUMOUR and o.longest_mm is not None:
            tumour.append(
                {
                    "ref": o.ref,
                    "date": o.date.isoformat(),
                    "lesion": o.focus,
                    "d1": o.longest_mm,
                    "d2": o.perpendicular_mm,
                }
            )
        elif o.value is not None:
            orig_value, orig_unit = as_recorded(o.conversion)
            numeric.append(
                {
                    "ref": o.ref,
                    "concept": o.concept,
                    "date": o.date.isoformat(),
                    "value": o.value,
                    "unit": o.unit,
                    "orig_value": orig_value if o.conversion else o.value,
                    "orig_unit": orig_unit if o.conversion else o.unit,
                    "low": o.low,
                    "high": o.high,
                }
            )
    return {
        "patient": rec.patient,
        "birth_date": _text(person.birth_date) if person else None,
        "sex": person.gender if person else None,
        "deceased_date": _text(person.deceased_date) if person else None,
        "observations": sorted(numeric, key=lambda x: (x["date"] or "", x["concept"], x["ref"])),
        "tumour": sorted(tumour, key=lambda x: (x["date"] or "", x["lesion"] or "", x["ref"])),
        "exposures": sorted(
            (
                {
                    "ref": m.ref,
                    "drug": m.drug,
                    "drug_code": m.drug_code,
                    "start": _text(m.start),
                    "end": _capped(m.end, as_of),
                }
                for m in kept.meds
                if m.ref not in skip
            ),
            key=lambda x: (x["start"] or "", x["ref"]),
        ),
        "adverse_events": sorted(
            (
                {
                    "ref": a.ref,
                    "term": a.term,
                    "verbatim": a.term_text,
                    "meddra": a.meddra,
                    "grade": a.grade,
                    "date": a.date.isoformat(),
                }
                for a in kept.adverse_events
                if a.ref not in skip
            ),
            key=lambda x: (x["date"] or "", x["ref"]),
        ),
    }


def _text(value: PartialDate | None) -> str | None:
    return str(value) if value is not None else None


def _capped(end: PartialDate | None, as_of: date) -> str | None:
    """An exposure's end as the extract gives it: never after the as-of date (nothing after it is read)."""
    return as_of.isoformat() if dates.after(end, as_of) else _text(end)

"""The per-patient source extract: the mapped records a registry or an SDTM dataset needs beyond results.json.

``evaluate`` writes one line per patient to ``clinical.ndjson`` (a :class:`ClinicalExtract`, written by
``shell/run/outputs.py``); ``export`` reads it beside ``results.json``. It holds what the rules read, after the
as-of cut-off and without the records the run rejected: birth date and sex, numeric observations (value in the
canonical unit and as recorded), tumour measurements per lesion, drug exposures and adverse events. Like
results.json it names patients: it stays in the results folder, and only the pseudonymising export may take it
elsewhere.
"""

from __future__ import annotations

from datetime import date

import msgspec

from fhiradapter.core import dates
from fhiradapter.core.dates import PartialDate
from fhiradapter.core.evaluate import cut_off
from fhiradapter.core.mappers import as_recorded
from fhiradapter.core.model import PatientRecord

TUMOUR = "tumor_size"


# Numbers keep the type they were written with (``float | int``): a value recorded as 5 is written as 5 and reads
# back as 5, not 5.0, so that every export writes it as before. Dates are text: a record may give only a month or
# a year. ``readback.decode_extract`` reads these same types back from clinical.ndjson.


class NumericObservation(msgspec.Struct, frozen=True):
    """A numeric observation: its value in the concept's canonical unit, and as the source recorded it."""

    ref: str
    concept: str
    date: str  # ISO day
    value: float | int
    unit: str | None
    orig_value: float | int | None
    orig_unit: str | None
    low: float | int | None  # reference range, in the canonical unit
    high: float | int | None


class TumourMeasurement(msgspec.Struct, frozen=True):
    """One lesion's diameters (mm) at one assessment."""

    ref: str
    date: str  # ISO day
    lesion: str | None
    d1: float | int | None  # the longest diameter
    d2: float | int | None  # the greatest diameter perpendicular to it


class DrugExposure(msgspec.Struct, frozen=True):
    """A drug exposure; its end never after the as-of date."""

    ref: str
    drug: str | None
    drug_code: str | None
    start: str | None  # a FHIR date, at the precision recorded
    end: str | None


class AdverseEventEntry(msgspec.Struct, frozen=True):
    """An adverse event: CTC term (None when unmapped), the term as reported, MedDRA code and grade."""

    ref: str
    term: str | None
    verbatim: str
    meddra: str | None
    grade: int | None
    date: str  # ISO day


class ClinicalExtract(msgspec.Struct, frozen=True):
    """One patient's line of clinical.ndjson: what a registry or an SDTM dataset needs beyond results.json."""

    patient: str
    birth_date: str | None
    sex: str | None
    deceased_date: str | None
    observations: tuple[NumericObservation, ...]
    tumour: tuple[TumourMeasurement, ...]
    exposures: tuple[DrugExposure, ...]
    adverse_events: tuple[AdverseEventEntry, ...]


def clinical_extract(rec: PatientRecord, as_of: date, unused: set[str]) -> ClinicalExtract:
    """The extract for one patient; ``unused`` holds the references the evaluation set aside."""
    kept, late = cut_off(rec, as_of)
    skip = unused | {u.ref for u in late}
    person = kept.person
    numeric: list[NumericObservation] = []
    tumour: list[TumourMeasurement] = []
    for o in kept.observations:
        if o.ref in skip:
            continue
        if o.concept == TUMOUR and o.longest_mm is not None:
            tumour.append(TumourMeasurement(o.ref, o.date.isoformat(), o.focus, o.longest_mm, o.perpendicular_mm))
        elif o.value is not None:
            orig_value, orig_unit = as_recorded(o.conversion)
            numeric.append(
                NumericObservation(
                    o.ref,
                    o.concept,
                    o.date.isoformat(),
                    o.value,
                    o.unit,
                    orig_value if o.conversion else o.value,
                    orig_unit if o.conversion else o.unit,
                    o.low,
                    o.high,
                )
            )
    exposures = [
        DrugExposure(
            exposure.ref, exposure.drug, exposure.drug_code, _text(exposure.start), _capped(exposure.end, as_of)
        )
        for exposure in kept.meds
        if exposure.ref not in skip
    ]
    events = [
        AdverseEventEntry(event.ref, event.term, event.term_text, event.meddra, event.grade, event.date.isoformat())
        for event in kept.adverse_events
        if event.ref not in skip
    ]
    return ClinicalExtract(
        rec.patient,
        _text(person.birth_date) if person else None,
        person.gender if person else None,
        _text(person.deceased_date) if person else None,
        tuple(sorted(numeric, key=lambda line: (line.date or "", line.concept, line.ref))),
        tuple(sorted(tumour, key=lambda line: (line.date or "", line.lesion or "", line.ref))),
        tuple(sorted(exposures, key=lambda line: (line.start or "", line.ref))),
        tuple(sorted(events, key=lambda line: (line.date or "", line.ref))),
    )


def _text(value: PartialDate | None) -> str | None:
    return str(value) if value is not None else None


def _capped(end: PartialDate | None, as_of: date) -> str | None:
    """An exposure's end as the extract gives it: never after the as-of date (nothing after it is read)."""
    return as_of.isoformat() if dates.after(end, as_of) else _text(end)

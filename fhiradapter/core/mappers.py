"""Mappers: one function per FHIR resource type, decoded resource -> (domain record | None, issues).

Resources come decoded into :mod:`fhir_types` Structs (an NDJSON line straight from its bytes), or as JSON
dicts (a Bundle's entries), which :func:`map_resource` converts first; a field of the wrong JSON type is then
an ``invalid-field`` reject naming its path.

A ``None`` record means the resource is not used; its issues say why (and it is reported as a reject).
A record with issues is used, and the issues are reported with the patient. Mappers never raise on bad
data. Unit conversion goes through ``MapContext.ucum_factor`` (supplied by the shell, UCUM-aware) and the
clinical conversions in ``mappings/units.toml``; both are recorded on the value they changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import msgspec

from fhiradapter.core import dates, fhir_json
from fhiradapter.core import fhir_types as fhir
from fhiradapter.core.codes import CodeTable
from fhiradapter.core.dates import PartialDate
from fhiradapter.core.model import (
    AdverseEvent,
    Condition,
    Consent,
    EarlierResult,
    Exposure,
    Issue,
    Observed,
    Origin,
    Person,
    StudySubject,
    SupportingResource,
)
from fhiradapter.core.protocol import Mappings
from fhiradapter.core.writeback import HASH_TAG_SYSTEM, IDENTIFIER_SYSTEM

Record = (
    Person
    | Observed
    | Exposure
    | AdverseEvent
    | Condition
    | Consent
    | StudySubject
    | EarlierResult
    | SupportingResource
)
Result = tuple[Record | None, list[Issue]]
UcumFactor = Callable[[str, str], float | None]

AE_GRADE_URL = "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade"
# docs/protocol.md §5: NCIt grade codes of the ae-grade extension, and the severity fallback (marked derived).
NCIT_GRADE = {"C41338": 1, "C41339": 2, "C41340": 3, "C41337": 4, "C48275": 5}
SEVERITY_GRADE = {"mild": 1, "moderate": 2, "severe": 3}
# docs/protocol.md §4: only these Observation statuses count.
COUNTED_OBS_STATUS = frozenset({"final", "amended", "corrected"})
NUMERIC_CONCEPTS = frozenset(
    {"afp", "anc", "platelets", "creatinine", "bilirubin", "albumin", "inr", "pt", "pt_control"}
)
CODED_CONCEPTS = frozenset({"disease_status", "ascites", "pregnancy_status", "breastfeeding_status"})
UNITLESS = frozenset({"", "1", "{INR}", "{ratio}", "{score}"})
TUMOUR_SIZE = "tumor_size"  # the concept of a tumour measurement (docs/protocol.md §4)
EXCLUDED_MED_STATUS = frozenset({"entered-in-error", "not-taken", "not-done", "cancelled", "draft", "intended"})


@dataclass(slots=True)
class MapContext:
    """What a mapper needs besides the resource: the mappings and a UCUM factor lookup."""

    mappings: Mappings
    ucum_factor: UcumFactor
    # FHIR base URLs this data came from (--fhir-base, a pull's server): absolute references under them are
    # local; any other absolute reference names another server's resource (docs/protocol.md §1: not our patient).
    local_bases: tuple[str, ...] = ()
    _factor_cache: dict[tuple[str, str], float | None] = field(default_factory=dict)

    def factor(self, unit: str, target: str) -> float | None:
        key = (unit, target)
        if key not in self._factor_cache:
            self._factor_cache[key] = self.ucum_factor(unit, target)
        return self._factor_cache[key]


def _lookup(concept: fhir.CodeableConcept | None, table: CodeTable) -> str | None:
    """The first coding of a CodeableConcept that ``table`` knows."""
    if concept is None or not concept.coding:
        return None
    for coding in concept.coding:
        hit = table.get(coding.system, coding.code)
        if hit is not None:
            return hit
    return None


def _round(value: float) -> float:
    """Drop binary noise from unit arithmetic so that 176.8 umol/L is exactly 2.0 mg/dL."""
    return float(f"{value:.12g}")


def _issue(ref: str, path: str, code: str, message: str) -> list[Issue]:
    return [Issue(ref, path, code, message)]


def _unmapped(ref: str, path: str, concept: fhir.CodeableConcept | None, message: str) -> list[Issue]:
    """An ``unmapped-code`` issue naming the codes found (``system|code``), so a site knows what to map."""
    found = ", ".join(f"{system or ''}|{code or ''}" for system, code in fhir_json.codings(concept)) or "no coding"
    return [Issue(ref, path, "unmapped-code", message, found)]


def _patient_ref(
    element: fhir.Reference | None, key: str, ref: str, aliases: dict[str, str] | None, bases: tuple[str, ...] = ()
) -> tuple[str | None, list[Issue]]:
    target = element.reference if element is not None else None
    if (  # fast path: a plain relative reference
        target is not None
        and target.startswith("Patient/")
        and target.count("/") == 1
        and fhir_json.RESOURCE_ID.fullmatch(target, 8)
    ):
        return target, []
    target, problem = fhir_json.local_reference(element, aliases, bases)
    if problem is not None:
        return None, _issue(ref, key, "bad-reference", f"{key}: {problem}")
    if target is None or not target.startswith("Patient/"):
        return None, _issue(ref, key, "no-subject", f"{key} is missing or is not a reference to a Patient")
    return target, []


def map_patient(res: fhir.Patient, ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None) -> Result:
    issues: list[Issue] = []
    birth = fhir_json.partial_date(res.birth_date)
    if res.birth_date is not None and birth is None:
        issues += _issue(ref, "birthDate", "bad-date", "birthDate is not a FHIR date")
    deceased_date = fhir_json.partial_date(res.deceased_date_time)
    flag = res.deceased_boolean is True or deceased_date is not None
    return Person(ref, birth, res.gender, deceased_date, flag, origin), issues


def _convert(
    concept: str, value: float, unit: str, ctx: MapContext, ref: str, path: str
) -> tuple[float | None, str | None, list[Issue]]:
    """Value in the concept's canonical unit, a note of the conversion applied, and issues."""
    target = ctx.mappings.canonical_unit[concept]
    if unit == target or (target == "" and unit in UNITLESS):
        return value, None, []
    original, steps = f"{value:g} {unit}", []
    clinical = ctx.mappings.conversions.get((concept, unit))
    if clinical is not None:
        value, unit = clinical.apply(value), clinical.to
        steps.append(f"{clinical.label}, mappings/units.toml")
    if unit != target:
        factor = ctx.factor(unit, target) if target else None
        if factor is None:
            return (
                None,
                None,
                _issue(
                    ref,
                    path,
                    "bad-unit",
                    f"unit {unit!r} cannot be converted to {target or 'a unitless value'!r} for {concept}",
                ),
            )
        value = value * factor
        steps.append(f"UCUM x {factor:.12g}")
    value = _round(value)
    return value, f"{original} -> {value:g} {target} ({'; '.join(steps)})", []


def as_recorded(conversion: str | None) -> tuple[float | None, str | None]:
    """The value and unit as the source recorded them, read back from a note written by ``_convert``."""
    if not conversion:
        return None, None
    original = conversion.split(" -> ", 1)[0]
    value, _, unit = original.partition(" ")
    try:
        return float(value), unit
    except ValueError:
        return None, None


def _quantity(q: fhir.Quantity | None) -> tuple[float | None, str]:
    if q is None:
        return None, ""
    # The coded unit (UCUM or not) when there is one, else the human-readable unit.
    return q.value, q.code if q.code is not None else q.unit or ""


def _implausible_number(res: fhir.Observation) -> str | None:
    """The path of the first number an Observation carries that no measurement can be (1e308, 30 digits)."""
    if res.value_quantity is not None and not fhir_json.plausible_number(res.value_quantity.value):
        return "valueQuantity.value"
    if not fhir_json.plausible_number(res.value_integer):
        return "valueInteger"
    for n, item in enumerate(res.reference_range or ()):
        for key, bound in (("low", item.low), ("high", item.high)):
            if bound is not None and not fhir_json.plausible_number(bound.value):
                return f"referenceRange[{n}].{key}.value"
    for n, component in enumerate(res.component or ()):
        value = component.value_quantity
        if value is not None and not fhir_json.plausible_number(value.value):
            return f"component[{n}].valueQuantity.value"
    return None


def map_observation(
    res: fhir.Observation, ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    """An Observation of a protocol concept, dated to the day, its value in the concept's canonical unit; or
    why it is not used (docs/protocol.md §2-§5). A result this adapter wrote earlier is kept as such."""
    written = _written(res, ref, origin, aliases)
    if written is not None:
        return written, []
    concept = _lookup(res.code, ctx.mappings.observation)
    if concept is None:
        return None, _unmapped(
            ref, "code", res.code, "Observation.code is not a protocol concept in the mappings' codes.toml"
        )
    status = res.status
    if status is None or status not in COUNTED_OBS_STATUS:
        return None, _issue(
            ref,
            "status",
            "status-not-counted",
            f"status {status!r} does not count (only final, amended, corrected)",
        )
    patient, issues = _patient_ref(res.subject, "subject", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    implausible = _implausible_number(res)
    if implausible is not None:
        return None, _issue(
            ref, implausible, "bad-value", f"{implausible} is not a number a measurement can be (beyond 1e12)"
        )
    day = _observation_day(res, ref)
    if not isinstance(day, date):
        return None, day
    if res.data_absent_reason is not None and not res.has_value():
        return None, _issue(ref, "dataAbsentReason", "no-value", "no value (dataAbsentReason)")
    if concept in NUMERIC_CONCEPTS:
        return _measured(res, ref, origin, ctx, concept, patient, day, status, issues)
    if concept == TUMOUR_SIZE:
        return _tumour_size(res, ref, origin, ctx, aliases, patient, day, status, issues)
    return _assessed(res, ref, origin, ctx.mappings, concept, patient, day, status, issues)


def _observation_day(res: fhir.Observation, ref: str) -> date | list[Issue]:
    """The day an Observation was made (effective[x]), or the issue why it has none an observation can use."""
    raw_date = res.effective_date_time or res.effective_instant or (res.effective_period or fhir.Period()).start
    effective = fhir_json.local_date(raw_date)
    if effective is None:
        return _issue(ref, "effective[x]", "no-date", "no usable effective date")
    day = dates.to_date(effective)
    if day is None:
        return _issue(
            ref,
            "effective[x]",
            "partial-date",
            "the effective date has no day (a month or a year only); an observation needs one",
        )
    return day


def _measured(
    res: fhir.Observation,
    ref: str,
    origin: Origin,
    ctx: MapContext,
    concept: str,
    patient: str,
    day: date,
    status: str,
    issues: list[Issue],
) -> Result:
    """A lab (a NUMERIC_CONCEPT): valueQuantity and the first reference range, in the canonical unit."""
    value, unit_in = _quantity(res.value_quantity)
    if value is None:
        return None, _issue(ref, "valueQuantity.value", "no-value", "valueQuantity.value is missing or not a number")
    value, note, bad = _convert(concept, value, unit_in, ctx, ref, "valueQuantity.code")
    if bad:
        return None, bad
    unit = ctx.mappings.canonical_unit[concept]
    low = high = None
    if res.reference_range:
        first = res.reference_range[0]
        for key, bound in (("low", first.low), ("high", first.high)):
            bound_value, bound_unit = _quantity(bound)
            if bound_value is None:
                continue
            converted, _note, bad = _convert(
                concept, bound_value, bound_unit or unit_in, ctx, ref, f"referenceRange[0].{key}"
            )
            if bad:
                issues += bad
            elif key == "low":
                low = converted
            else:
                high = converted
    return Observed(
        ref, patient, concept, day, value, unit, None, low, high, None, None, None, status, note, origin
    ), issues


def _tumour_size(
    res: fhir.Observation,
    ref: str,
    origin: Origin,
    ctx: MapContext,
    aliases: dict[str, str] | None,
    patient: str,
    day: date,
    status: str,
    issues: list[Issue],
) -> Result:
    """A tumour measurement (docs/protocol.md §4): the lesion and its two diameters in mm."""
    focus, longest, perpendicular, tissues = _tumour(res, ref, ctx, aliases)
    if focus is None or longest is None:
        return None, tissues
    issues += tissues
    return Observed(
        ref,
        patient,
        TUMOUR_SIZE,
        day,
        None,
        "mm",
        None,
        None,
        None,
        focus,
        longest,
        perpendicular,
        status,
        None,
        origin,
    ), issues


def _assessed(
    res: fhir.Observation,
    ref: str,
    origin: Origin,
    mappings: Mappings,
    concept: str,
    patient: str,
    day: date,
    status: str,
    issues: list[Issue],
) -> Result:
    """An assessment: ECOG (0-5), encephalopathy (West Haven 0-4), or a coded answer (ascites, pregnancy, ...)."""
    value: float | None = None
    coded = None
    if concept == "ecog":
        value = _ecog(res, mappings)
        if value is None:
            return None, _issue(
                ref, "value[x]", "bad-value", "ECOG needs valueInteger 0-5 or a mapped LOINC answer code"
            )
    elif concept == "encephalopathy":
        grade = res.value_integer
        if grade is None and res.value_quantity is not None:
            grade = res.value_quantity.value
        if grade not in (0, 1, 2, 3, 4):
            return None, _issue(
                ref,
                "valueInteger",
                "bad-value",
                "encephalopathy needs a West Haven grade 0-4 as valueInteger",
            )
        value = float(grade)
    elif concept in CODED_CONCEPTS:
        table = mappings.answer.get(concept)
        for system, code in fhir_json.codings(res.value_codeable_concept):
            coded = table.get(system, code) if table else None
            if coded:
                break
        if coded is None:
            return None, _issue(
                ref, "valueCodeableConcept", "unmapped-value", f"the {concept} answer is not a mapped code"
            )
    return Observed(
        ref, patient, concept, day, value, None, coded, None, None, None, None, None, status, None, origin
    ), issues


def _written(res: fhir.Observation, ref: str, origin: Origin, aliases: dict[str, str] | None) -> EarlierResult | None:
    """A result this adapter wrote earlier: kept as such (for the write-back plan), never read as input."""
    for ident in res.identifier or ():
        if ident.system == IDENTIFIER_SYSTEM and ident.value is not None:
            patient = fhir_json.reference_of(res.subject, aliases)
            if patient is None or not patient.startswith("Patient/"):
                return None
            meta = res.meta or fhir.Meta()
            digest = next((t.code for t in meta.tag or () if t.system == HASH_TAG_SYSTEM), None)
            return EarlierResult(ref, patient, ident.value, digest, meta.version_id, origin, msgspec.to_builtins(res))
    return None


def _ecog(res: fhir.Observation, mappings: Mappings) -> float | None:
    raw = res.value_integer
    if raw is None and res.value_quantity is not None:
        raw = res.value_quantity.value
    if raw is None and res.value_codeable_concept is not None:
        table = mappings.answer.get("ecog")
        for system, code in fhir_json.codings(res.value_codeable_concept):
            hit = table.get(system, code) if table else None
            if hit is not None:
                raw = int(hit)
                break
    if raw is None or raw not in range(6):
        return None
    return float(raw)


def _tumour(
    res: fhir.Observation, ref: str, ctx: MapContext, aliases: dict[str, str] | None
) -> tuple[str | None, float | None, float | None, list[Issue]]:
    focus = None
    if res.focus:
        focus = fhir_json.reference_of(res.focus[0], aliases)
        if focus and focus.startswith("#"):
            body = fhir_json.contained(res.contained, focus, "BodyStructure", fhir.ContainedBodyStructure)
            ident = body.identifier if body is not None else None
            if ident and ident[0].value:
                focus = f"BodyStructure?identifier={ident[0].system or ''}|{ident[0].value}"
            else:
                focus = f"{ref}{focus}"
    if focus is None:
        return (
            None,
            None,
            None,
            _issue(ref, "focus", "no-lesion", "TumorSize has no focus BodyStructure naming the lesion"),
        )
    dims: dict[str, float] = {}
    issues: list[Issue] = []
    for i, comp in enumerate(res.component or ()):
        kind = None
        for system, code in fhir_json.codings(comp.code):
            kind = ctx.mappings.tumor_component.get(system, code)
            if kind:
                break
        if kind is None or kind in dims:
            continue
        v, u = _quantity(comp.value_quantity)
        if v is None or v < 0:
            issues += _issue(ref, f"component[{i}].valueQuantity", "bad-value", "diameter missing or negative")
            continue
        factor = 1.0 if u == "mm" else ctx.factor(u, "mm") if u in ("cm", "m", "[in_i]") else None
        if factor is None:
            issues += _issue(
                ref, f"component[{i}].valueQuantity.code", "bad-unit", f"diameter unit {u!r} is not mm or cm"
            )
            continue
        dims[kind] = _round(v * factor)
    if "longest" not in dims:
        return (
            None,
            None,
            None,
            issues + _issue(ref, "component", "no-value", "no longest-diameter component (LOINC 33728-7)"),
        )
    if "perpendicular" not in dims:
        issues += _issue(
            ref,
            "component",
            "one-diameter",
            "no perpendicular diameter (LOINC 33729-5): the lesion is not bidimensional",
        )
    return focus, dims["longest"], dims.get("perpendicular"), issues


def _drug(concept: fhir.CodeableConcept | None, mappings: Mappings) -> tuple[str | None, str | None]:
    first = None
    for system, code in fhir_json.codings(concept):
        first = first or code
        hit = mappings.medication.get(system, code)
        if hit:
            return hit, code
    return None, first


def medication_concept(res: fhir.Medication | fhir.ContainedMedication, mappings: Mappings) -> str | None:
    """The protocol drug a Medication resource is (by its code or an ingredient's code)."""
    drug, _ = _drug(res.code, mappings)
    if drug:
        return drug
    for ing in res.ingredient or ():
        drug, _ = _drug(ing.item_codeable_concept, mappings)
        if drug:
            return drug
    return None


def map_medication_use(
    res: fhir.MedicationUse, ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    status = res.status
    if status in EXCLUDED_MED_STATUS:
        return None, _issue(ref, "status", "status-not-counted", f"status {status!r} is not an exposure")
    patient, issues = _patient_ref(res.subject, "subject", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    drug, code = _drug(res.medication_codeable_concept, ctx.mappings)
    med_ref = None
    if drug is None and res.medication_reference is not None:
        target = fhir_json.reference_of(res.medication_reference, aliases)
        if target and target.startswith("#"):
            med = fhir_json.contained(res.contained, target, "Medication", fhir.ContainedMedication)
            drug = medication_concept(med, ctx.mappings) if med else None
            if med is None:
                issues += _issue(
                    ref,
                    "medicationReference",
                    "bad-reference",
                    f"contained Medication {target} not found, or its code unreadable",
                )
        elif target and target.startswith("Medication/"):
            med_ref = target
    if drug is None and med_ref is None:
        return None, issues + _unmapped(
            ref,
            "medication[x]",
            res.medication_codeable_concept,
            "the medication is not a protocol drug in the mappings' codes.toml",
        )
    start, end = _exposure_dates(res)
    if start is None:
        return None, issues + _issue(ref, "effective[x]", "no-date", "no exposure start date")
    # A stop reason the record states wins over one derived from the data (docs/protocol.md §7): one that no
    # mapping knows (a financial problem, say) is "other", never left for the rules to guess.
    reason = None
    stated = [c for c in res.stop_reasons() if c.coding or c.text]
    for concept in stated:
        for system, code in fhir_json.codings(concept):
            reason = reason or ctx.mappings.stop_reason.get(system, code)
    if reason is None and stated:
        reason = "other"
    return Exposure(ref, patient, drug, code, start, end, str(status), med_ref, reason, origin), issues


def _exposure_dates(res: fhir.MedicationUse) -> tuple[PartialDate | None, PartialDate | None]:
    if isinstance(res, fhir.MedicationRequest):
        for dose in res.dosage_instruction or ():
            bounds = dose.timing.repeat.bounds_period if dose.timing and dose.timing.repeat else None
            if bounds is not None and bounds.start:
                return fhir_json.partial_date(bounds.start), fhir_json.partial_date(bounds.end)
        return fhir_json.partial_date(res.authored_on), None
    single = fhir_json.partial_date(res.effective_date_time)
    if single:
        return single, single
    if res.effective_period is not None:
        return fhir_json.partial_date(res.effective_period.start), fhir_json.partial_date(res.effective_period.end)
    return None, None


def map_adverse_event(
    res: fhir.AdverseEvent, ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    if res.actuality == "potential":
        return None, _issue(ref, "actuality", "not-actual", "a potential event, not an actual one")
    patient, issues = _patient_ref(res.subject, "subject", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    term = meddra = None
    for system, code in fhir_json.codings(res.event):
        term = ctx.mappings.ae_term.get(system, code)
        if system in ("http://terminology.hl7.org/CodeSystem/mdr", "https://www.meddra.org"):
            meddra = meddra or code
        if term:
            break
    text = fhir_json.concept_text(res.event) or fhir_json.first_code(res.event) or "(no term)"
    if term:
        meddra = ctx.mappings.ae_terms[term].meddra or meddra
    else:
        issues += _issue(
            ref,
            "event",
            "unmapped-term",
            f"AE term {text!r} is not mapped to a CTC v2.0 term (kept as reported)",
        )
    grade, source = None, "reported"
    for ext in res.extension or ():
        if ext.url != AE_GRADE_URL:
            continue
        for _system, code in fhir_json.codings(ext.value_codeable_concept):
            grade = NCIT_GRADE.get(code or "")
            if grade:
                break
    if grade is None:
        sev = fhir_json.first_code(res.severity)
        grade = SEVERITY_GRADE.get(sev or "")
        source = "derived"
    if grade is None:
        return None, issues + _issue(
            ref, "extension(ae-grade)", "no-grade", "neither an ae-grade extension nor a severity"
        )
    date = dates.to_date(fhir_json.local_date(res.date or res.detected or res.recorded_date))
    if date is None:
        return None, issues + _issue(ref, "date", "no-date", "no full onset date (date/detected)")
    return AdverseEvent(ref, patient, term, text, meddra, grade, source, date, origin), issues


def map_condition(
    res: fhir.Condition, ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    concept = _lookup(res.code, ctx.mappings.condition)
    if concept is None:
        return None, _unmapped(
            ref, "code", res.code, "Condition.code is not a protocol condition in the mappings' codes.toml"
        )
    patient, issues = _patient_ref(res.subject, "subject", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    onset = fhir_json.partial_date(res.onset_date_time or (res.onset_period or fhir.Period()).start)
    recorded = fhir_json.partial_date(res.recorded_date)
    return Condition(
        ref,
        patient,
        concept,
        fhir_json.first_code(res.verification_status),
        fhir_json.first_code(res.clinical_status),
        onset,
        recorded,
        origin,
        fhir_json.concept_text(res.code) or fhir_json.first_code(res.code),
    ), issues


def map_consent(res: fhir.Consent, ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None) -> Result:
    patient, issues = _patient_ref(res.patient, "patient", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    research = any(ctx.mappings.consent_research.get(s, c) for s, c in fhir_json.codings(res.scope))
    for cat in res.category or ():
        research = research or any(ctx.mappings.consent_research.get(s, c) for s, c in fhir_json.codings(cat))
    if not research:
        return None, _issue(ref, "scope", "not-research", "not a research consent")
    return Consent(ref, patient, str(res.status), fhir_json.partial_date(res.date_time), origin), issues


def map_research_subject(
    res: fhir.ResearchSubject, ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    """The subject's record; its whole JSON (``raw``, for write-back) is set by :func:`map_resource`."""
    patient, issues = _patient_ref(res.individual, "individual", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    period = res.period or fhir.Period()
    return StudySubject(
        ref,
        patient,
        fhir_json.local_reference(res.study, aliases, ctx.local_bases)[0],
        str(res.status),
        fhir_json.partial_date(period.start),
        fhir_json.partial_date(period.end),
        res.consent is not None and res.consent.given(),
        res.meta.version_id if res.meta is not None else None,
        origin,
        None,
        _logical(res.study),
    ), issues


def _logical(ref: fhir.Reference | None) -> tuple[str, str] | None:
    """A logical reference's identifier as ``(system, value)`` (docs/protocol.md §1), when it has both."""
    ident = ref.identifier if ref is not None else None
    if ident is None or not ident.system or not ident.value:
        return None
    return ident.system, ident.value


def map_other(res: fhir.Resource, ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None) -> Result:
    if isinstance(res, fhir.Medication):
        return SupportingResource(ref, None, medication_concept(res, ctx.mappings), origin), []
    if isinstance(res, fhir.ResearchStudy):
        idents = tuple((i.system, i.value) for i in res.identifier or () if i.system and i.value)
        return SupportingResource(ref, None, None, origin, idents), []
    if isinstance(res, fhir.BodyStructure):
        patient, issues = _patient_ref(res.patient, "patient", ref, aliases, ctx.local_bases)
        if patient is None:
            return None, issues
        return SupportingResource(ref, patient, None, origin), []
    return SupportingResource(ref, None, None, origin), []


def _map_typed(res: fhir.Resource, ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None) -> Result:
    """The mapper of the resource's type: one for each type of ``fhir_types.TYPES``, the types the protocol reads.

    Exact type tests, most frequent first: each costs a fraction of what ``isinstance`` costs on a Struct.
    """
    if type(res) is fhir.Observation:
        return map_observation(res, ref, origin, ctx, aliases)
    if type(res) is fhir.AdverseEvent:
        return map_adverse_event(res, ref, origin, ctx, aliases)
    if type(res) is fhir.Condition:
        return map_condition(res, ref, origin, ctx, aliases)
    if type(res) is fhir.MedicationStatement or type(res) is fhir.MedicationAdministration:
        return map_medication_use(res, ref, origin, ctx, aliases)
    if type(res) is fhir.MedicationRequest:
        return map_medication_use(res, ref, origin, ctx, aliases)
    if type(res) is fhir.Patient:
        return map_patient(res, ref, origin, ctx, aliases)
    if type(res) is fhir.Consent:
        return map_consent(res, ref, origin, ctx, aliases)
    if type(res) is fhir.ResearchSubject:
        return map_research_subject(res, ref, origin, ctx, aliases)
    return map_other(res, ref, origin, ctx, aliases)  # ResearchStudy, BodyStructure, Medication


def map_resource(
    res: fhir.Resource | dict[str, Any],  # JSON edge: a Bundle entry's resource, as parsed, before typing
    ref: str,
    origin: Origin,
    ctx: MapContext,
    aliases: dict[str, str] | None = None,
) -> Result:
    """Map any resource, decoded or as a JSON dict; types the protocol does not read give ``None`` and a
    ``type-not-used`` issue, a field of the wrong JSON type an ``invalid-field`` issue naming its path."""
    if isinstance(res, dict):
        kind, rid = str(res.get("resourceType")), res.get("id")
    else:
        kind, rid = fhir.resource_type(res), res.id
    if kind not in fhir.TYPES:
        return None, _issue(ref, "resourceType", "type-not-used", f"{kind} is not read by the protocol")
    if type(rid) is not str or not fhir_json.RESOURCE_ID.fullmatch(rid):
        return None, _issue(ref, "id", "bad-id", "the id breaks FHIR R4's rule [A-Za-z0-9-.]{1,64}")
    if isinstance(res, dict):
        try:
            typed = fhir.as_typed(res, fhir.TYPES[kind])
        except msgspec.ValidationError as exc:
            path, reason = fhir.error_path(exc)
            return None, _issue(ref, path, "invalid-field", f"{path} is not what FHIR R4 has there: {reason}")
        except RecursionError:
            return None, _issue(ref, "(structure)", "invalid-field", "the resource is nested too deeply to read")
    else:
        typed = res
    bad_date = fhir_json.unreadable_date(typed)
    if bad_date is not None:
        return None, _issue(ref, bad_date, "bad-date", f"{bad_date} is not a calendar date (e.g. 30 February)")
    try:
        record, issues = _map_typed(typed, ref, origin, ctx, aliases)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        # A defect the decoding let through: report it, never crash the run.
        return None, _issue(
            ref, "(structure)", "invalid-field", f"an element has an unexpected type ({type(exc).__name__})"
        )
    if isinstance(record, StudySubject):  # write-back updates the subject: keep its whole JSON
        whole = res if isinstance(res, dict) else msgspec.to_builtins(typed)
        record = record._replace(raw=fhir_json.resolve_aliases(dict(whole), aliases))
    return record, issues

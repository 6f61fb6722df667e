"""Mappers: one function per FHIR resource type, raw JSON dict -> (domain record | None, issues).

A ``None`` record means the resource is not used; its issues say why (and it is reported as a reject).
A record with issues is used, and the issues are reported with the patient. Mappers never raise on bad
data. Unit conversion goes through ``MapContext.ucum_factor`` (supplied by the shell, UCUM-aware) and the
clinical conversions in ``mappings/units.toml``; both are recorded on the value they changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fhiradapter.core import fhir_json
from fhiradapter.core.codes import CodeTable
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
# PROTOCOL.md §5: NCIt grade codes of the ae-grade extension, and the severity fallback (marked derived).
NCIT_GRADE = {"C41338": 1, "C41339": 2, "C41340": 3, "C41337": 4, "C48275": 5}
SEVERITY_GRADE = {"mild": 1, "moderate": 2, "severe": 3}
# PROTOCOL.md §4: only these Observation statuses count.
COUNTED_OBS_STATUS = frozenset({"final", "amended", "corrected"})
NUMERIC_CONCEPTS = frozenset(
    {"afp", "anc", "platelets", "creatinine", "bilirubin", "albumin", "inr", "pt", "pt_control"}
)
CODED_CONCEPTS = frozenset({"disease_status", "ascites", "pregnancy_status", "breastfeeding_status"})
UNITLESS = frozenset({"", "1", "{INR}", "{ratio}", "{score}"})
EXCLUDED_MED_STATUS = frozenset({"entered-in-error", "not-taken", "not-done", "cancelled", "draft", "intended"})


@dataclass(slots=True)
class MapContext:
    """What a mapper needs besides the resource: the mappings and a UCUM factor lookup."""

    mappings: Mappings
    ucum_factor: UcumFactor
    # FHIR base URLs this data came from (--fhir-base, a pull's server): absolute references under them are
    # local; any other absolute reference names another server's resource (PROTOCOL.md §1: not our patient).
    local_bases: tuple[str, ...] = ()
    _factor_cache: dict[tuple[str, str], float | None] = field(default_factory=dict)

    def factor(self, unit: str, target: str) -> float | None:
        key = (unit, target)
        if key not in self._factor_cache:
            self._factor_cache[key] = self.ucum_factor(unit, target)
        return self._factor_cache[key]


def _lookup(concept: Any, table: CodeTable) -> str | None:
    """The first coding of a CodeableConcept that ``table`` knows (hot path: no generator)."""
    if type(concept) is not dict:
        return None
    items = concept.get("coding")
    if type(items) is not list:
        return None
    for coding in items:
        if type(coding) is dict:
            hit = table.get(coding.get("system"), coding.get("code"))
            if hit is not None:
                return hit
    return None


def _round(value: float) -> float:
    """Drop binary noise from unit arithmetic so that 176.8 umol/L is exactly 2.0 mg/dL."""
    return float(f"{value:.12g}")


def _issue(ref: str, path: str, code: str, message: str) -> list[Issue]:
    return [Issue(ref, path, code, message)]


def _unmapped(ref: str, path: str, concept: Any, message: str) -> list[Issue]:
    """An ``unmapped-code`` issue naming the codes found (``system|code``), so a site knows what to map."""
    found = ", ".join(f"{system or ''}|{code or ''}" for system, code in fhir_json.codings(concept)) or "no coding"
    return [Issue(ref, path, "unmapped-code", message, found)]


def _patient_ref(
    res: dict[str, Any], key: str, ref: str, aliases: dict[str, str] | None, bases: tuple[str, ...] = ()
) -> tuple[str | None, list[Issue]]:
    element = res.get(key)
    if type(element) is dict:  # fast path: a plain relative reference
        target = element.get("reference")
        if (
            type(target) is str
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


def map_patient(
    res: dict[str, Any], ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    issues: list[Issue] = []
    birth = fhir_json.local_date(res.get("birthDate"))
    if res.get("birthDate") is not None and birth is None:
        issues += _issue(ref, "birthDate", "bad-date", "birthDate is not a FHIR date")
    deceased_date = fhir_json.local_date(res.get("deceasedDateTime"))
    flag = res.get("deceasedBoolean") is True or deceased_date is not None
    gender = res.get("gender") if isinstance(res.get("gender"), str) else None
    return Person(ref, birth, gender, deceased_date, flag, origin), issues


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


def _quantity(q: Any) -> tuple[float | None, str]:
    if type(q) is not dict:
        return None, ""
    code = q.get("code")  # the coded unit (UCUM or not) when there is one, else the human-readable unit
    unit = code if type(code) is str else q.get("unit")
    return fhir_json.number(q.get("value")), unit if type(unit) is str else ""


def _implausible_number(res: dict[str, Any]) -> str | None:
    """The path of the first number an Observation carries that no measurement can be (1e308, 30 digits)."""
    quantity = res.get("valueQuantity")
    if type(quantity) is dict and not fhir_json.plausible_number(quantity.get("value")):
        return "valueQuantity.value"
    if not fhir_json.plausible_number(res.get("valueInteger")):
        return "valueInteger"
    for n, item in enumerate(res.get("referenceRange") or ()):
        for key in ("low", "high"):
            bound = item.get(key) if type(item) is dict else None
            if type(bound) is dict and not fhir_json.plausible_number(bound.get("value")):
                return f"referenceRange[{n}].{key}.value"
    for n, component in enumerate(res.get("component") or ()):
        value = component.get("valueQuantity") if type(component) is dict else None
        if type(value) is dict and not fhir_json.plausible_number(value.get("value")):
            return f"component[{n}].valueQuantity.value"
    return None


def map_observation(
    res: dict[str, Any], ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    m = ctx.mappings
    written = _written(res, ref, origin, aliases)
    if written is not None:
        return written, []
    concept = _lookup(res.get("code"), m.observation)
    if concept is None:
        return None, _unmapped(
            ref, "code", res.get("code"), "Observation.code is not a protocol concept in mappings/codes.toml"
        )
    status = res.get("status")
    if status not in COUNTED_OBS_STATUS:
        return None, _issue(
            ref,
            "status",
            "status-not-counted",
            f"status {status!r} does not count (only final, amended, corrected)",
        )
    patient, issues = _patient_ref(res, "subject", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    implausible = _implausible_number(res)
    if implausible is not None:
        return None, _issue(
            ref, implausible, "bad-value", f"{implausible} is not a number a measurement can be (beyond 1e12)"
        )
    raw_date = (
        res.get("effectiveDateTime") or res.get("effectiveInstant") or (res.get("effectivePeriod") or {}).get("start")
    )
    date = fhir_json.local_date(raw_date)
    if date is None:
        return None, _issue(ref, "effective[x]", "no-date", "no usable effective date")
    if not fhir_json.is_full_date(date):
        return None, _issue(
            ref,
            "effective[x]",
            "partial-date",
            f"effective date {date!r} has no day; an observation needs one",
        )
    value = low = high = d1 = d2 = None
    unit = coded = focus = note = None
    if "dataAbsentReason" in res and not any(k.startswith("value") for k in res):
        return None, _issue(ref, "dataAbsentReason", "no-value", "no value (dataAbsentReason)")
    if concept in NUMERIC_CONCEPTS:
        value, unit_in = _quantity(res.get("valueQuantity"))
        if value is None:
            return None, _issue(
                ref, "valueQuantity.value", "no-value", "valueQuantity.value is missing or not a number"
            )
        value, note, bad = _convert(concept, value, unit_in, ctx, ref, "valueQuantity.code")
        if bad:
            return None, bad
        unit = m.canonical_unit[concept]
        rr = res.get("referenceRange")
        if isinstance(rr, list) and rr and isinstance(rr[0], dict):
            for key in ("low", "high"):
                v, u = _quantity(rr[0].get(key))
                if v is None:
                    continue
                conv, _n, bad = _convert(concept, v, u or unit_in, ctx, ref, f"referenceRange[0].{key}")
                if bad:
                    issues += bad
                elif key == "low":
                    low = conv
                else:
                    high = conv
    elif concept == "ecog":
        value = _ecog(res, m)
        if value is None:
            return None, _issue(
                ref, "value[x]", "bad-value", "ECOG needs valueInteger 0-5 or a mapped LOINC answer code"
            )
    elif concept == "encephalopathy":
        raw = res.get("valueInteger")
        if raw is None:
            raw = fhir_json.number((res.get("valueQuantity") or {}).get("value"))
        if not isinstance(raw, int | float) or isinstance(raw, bool) or raw not in (0, 1, 2, 3, 4):
            return None, _issue(
                ref,
                "valueInteger",
                "bad-value",
                "encephalopathy needs a West Haven grade 0-4 as valueInteger",
            )
        value = float(raw)
    elif concept in CODED_CONCEPTS:
        table = m.answer.get(concept)
        for system, code in fhir_json.codings(res.get("valueCodeableConcept")):
            coded = table.get(system, code) if table else None
            if coded:
                break
        if coded is None:
            return None, _issue(
                ref, "valueCodeableConcept", "unmapped-value", f"the {concept} answer is not a mapped code"
            )
    elif concept == "tumor_size":
        focus, d1, d2, tissues = _tumour(res, ref, ctx, aliases)
        if focus is None or d1 is None:
            return None, tissues
        issues += tissues
        unit = "mm"
    return Observed(
        ref, patient, concept, date, value, unit, coded, low, high, focus, d1, d2, str(status), note, origin
    ), issues


def _written(res: dict[str, Any], ref: str, origin: Origin, aliases: dict[str, str] | None) -> EarlierResult | None:
    """A result this adapter wrote earlier: kept as such (for the write-back plan), never read as input."""
    idents = res.get("identifier")
    if type(idents) is not list:
        return None
    for ident in idents:
        if type(ident) is dict and ident.get("system") == IDENTIFIER_SYSTEM and type(ident.get("value")) is str:
            patient = fhir_json.reference_of(res.get("subject"), aliases)
            if patient is None or not patient.startswith("Patient/"):
                return None
            meta: dict[str, Any] = res["meta"] if type(res.get("meta")) is dict else {}
            digest = next(
                (
                    t.get("code")
                    for t in meta.get("tag") or []
                    if type(t) is dict and t.get("system") == HASH_TAG_SYSTEM
                ),
                None,
            )
            version = meta.get("versionId") if type(meta.get("versionId")) is str else None
            return EarlierResult(ref, patient, ident["value"], digest, version, origin)
    return None


def _ecog(res: dict[str, Any], m: Mappings) -> float | None:
    raw = res.get("valueInteger")
    if raw is None and isinstance(res.get("valueQuantity"), dict):
        raw = fhir_json.number(res["valueQuantity"].get("value"))
    if raw is None and "valueCodeableConcept" in res:
        table = m.answer.get("ecog")
        for system, code in fhir_json.codings(res.get("valueCodeableConcept")):
            hit = table.get(system, code) if table else None
            if hit is not None:
                raw = int(hit)
                break
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw not in range(6):
        return None
    return float(raw)


def _tumour(
    res: dict[str, Any], ref: str, ctx: MapContext, aliases: dict[str, str] | None
) -> tuple[str | None, float | None, float | None, list[Issue]]:
    focus_list = res.get("focus")
    focus = None
    if isinstance(focus_list, list) and focus_list:
        focus = fhir_json.reference_of(focus_list[0], aliases)
        if focus and focus.startswith("#"):
            body = fhir_json.contained(res, focus)
            ident = (body or {}).get("identifier")
            if isinstance(ident, list) and ident and isinstance(ident[0], dict) and ident[0].get("value"):
                focus = f"BodyStructure?identifier={ident[0].get('system', '')}|{ident[0]['value']}"
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
    for i, comp in enumerate(res.get("component") or []):
        if not isinstance(comp, dict):
            continue
        kind = None
        for system, code in fhir_json.codings(comp.get("code")):
            kind = ctx.mappings.tumor_component.get(system, code)
            if kind:
                break
        if kind is None or kind in dims:
            continue
        v, u = _quantity(comp.get("valueQuantity"))
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


def _drug(concept: Any, m: Mappings) -> tuple[str | None, str | None]:
    first = None
    for system, code in fhir_json.codings(concept):
        first = first or code
        hit = m.medication.get(system, code)
        if hit:
            return hit, code
    return None, first


def medication_concept(res: dict[str, Any], m: Mappings) -> str | None:
    """The protocol drug a Medication resource is (by its code or an ingredient's code)."""
    drug, _ = _drug(res.get("code"), m)
    if drug:
        return drug
    for ing in res.get("ingredient") or []:
        if isinstance(ing, dict):
            drug, _ = _drug(ing.get("itemCodeableConcept"), m)
            if drug:
                return drug
    return None


def map_medication_use(
    res: dict[str, Any], ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    status = res.get("status")
    if status in EXCLUDED_MED_STATUS:
        return None, _issue(ref, "status", "status-not-counted", f"status {status!r} is not an exposure")
    patient, issues = _patient_ref(res, "subject", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    drug, code = _drug(res.get("medicationCodeableConcept"), ctx.mappings)
    med_ref = None
    if drug is None and "medicationReference" in res:
        target = fhir_json.reference_of(res.get("medicationReference"), aliases)
        if target and target.startswith("#"):
            med = fhir_json.contained(res, target)
            drug = medication_concept(med, ctx.mappings) if med else None
            if med is None:
                issues += _issue(
                    ref, "medicationReference", "bad-reference", f"contained Medication {target} not found"
                )
        elif target and target.startswith("Medication/"):
            med_ref = target
    if drug is None and med_ref is None:
        return None, issues + _unmapped(
            ref,
            "medication[x]",
            res.get("medicationCodeableConcept"),
            "the medication is not a protocol drug in mappings/codes.toml",
        )
    start, end = _exposure_dates(res)
    if start is None:
        return None, issues + _issue(ref, "effective[x]", "no-date", "no exposure start date")
    # A stop reason the record states wins over one derived from the data (PROTOCOL.md §7): one that no
    # mapping knows (a financial problem, say) is "other", never left for the rules to guess.
    reason = None
    raw_reasons = res.get("statusReason")
    stated = [c for c in raw_reasons if isinstance(c, dict) and c] if isinstance(raw_reasons, list) else []
    for concept in stated:
        for system, code in fhir_json.codings(concept):
            reason = reason or ctx.mappings.stop_reason.get(system, code)
    if reason is None and stated:
        reason = "other"
    return Exposure(ref, patient, drug, code, start, end, str(status), med_ref, reason, origin), issues


def _exposure_dates(res: dict[str, Any]) -> tuple[str | None, str | None]:
    if res.get("resourceType") == "MedicationRequest":
        for dose in res.get("dosageInstruction") or []:
            bounds = (((dose or {}).get("timing") or {}).get("repeat") or {}).get("boundsPeriod")
            if isinstance(bounds, dict) and bounds.get("start"):
                return fhir_json.local_date(bounds.get("start")), fhir_json.local_date(bounds.get("end"))
        return fhir_json.local_date(res.get("authoredOn")), None
    single = fhir_json.local_date(res.get("effectiveDateTime"))
    if single:
        return single, single
    period = res.get("effectivePeriod")
    if isinstance(period, dict):
        return fhir_json.local_date(period.get("start")), fhir_json.local_date(period.get("end"))
    return None, None


def map_adverse_event(
    res: dict[str, Any], ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    if res.get("actuality") == "potential":
        return None, _issue(ref, "actuality", "not-actual", "a potential event, not an actual one")
    patient, issues = _patient_ref(res, "subject", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    term = meddra = None
    for system, code in fhir_json.codings(res.get("event")):
        term = ctx.mappings.ae_term.get(system, code)
        if system in ("http://terminology.hl7.org/CodeSystem/mdr", "https://www.meddra.org"):
            meddra = meddra or code
        if term:
            break
    text = fhir_json.concept_text(res.get("event")) or (fhir_json.first_code(res.get("event")) or "(no term)")
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
    for ext in fhir_json.extension_values(res, AE_GRADE_URL):
        for _system, code in fhir_json.codings(ext.get("valueCodeableConcept")):
            grade = NCIT_GRADE.get(code or "")
            if grade:
                break
    if grade is None:
        sev = fhir_json.first_code(res.get("severity"))
        grade = SEVERITY_GRADE.get(sev or "")
        source = "derived"
    if grade is None:
        return None, issues + _issue(
            ref, "extension(ae-grade)", "no-grade", "neither an ae-grade extension nor a severity"
        )
    date = fhir_json.local_date(res.get("date") or res.get("detected") or res.get("recordedDate"))
    if date is None or not fhir_json.is_full_date(date):
        return None, issues + _issue(ref, "date", "no-date", "no full onset date (date/detected)")
    return AdverseEvent(ref, patient, term, text, meddra, grade, source, date, origin), issues


def map_condition(
    res: dict[str, Any], ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    concept = _lookup(res.get("code"), ctx.mappings.condition)
    if concept is None:
        return None, _unmapped(
            ref, "code", res.get("code"), "Condition.code is not a protocol condition in mappings/codes.toml"
        )
    patient, issues = _patient_ref(res, "subject", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    onset = fhir_json.local_date(res.get("onsetDateTime") or (res.get("onsetPeriod") or {}).get("start"))
    recorded = fhir_json.local_date(res.get("recordedDate"))
    return Condition(
        ref,
        patient,
        concept,
        fhir_json.first_code(res.get("verificationStatus")),
        fhir_json.first_code(res.get("clinicalStatus")),
        onset,
        recorded,
        origin,
        fhir_json.concept_text(res.get("code")) or fhir_json.first_code(res.get("code")),
    ), issues


def map_consent(
    res: dict[str, Any], ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    patient, issues = _patient_ref(res, "patient", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    research = any(ctx.mappings.consent_research.get(s, c) for s, c in fhir_json.codings(res.get("scope")))
    for cat in res.get("category") or []:
        research = research or any(ctx.mappings.consent_research.get(s, c) for s, c in fhir_json.codings(cat))
    if not research:
        return None, _issue(ref, "scope", "not-research", "not a research consent")
    return Consent(ref, patient, str(res.get("status")), fhir_json.local_date(res.get("dateTime")), origin), issues


def map_research_subject(
    res: dict[str, Any], ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None
) -> Result:
    patient, issues = _patient_ref(res, "individual", ref, aliases, ctx.local_bases)
    if patient is None:
        return None, issues
    period: dict[str, Any] = res["period"] if isinstance(res.get("period"), dict) else {}
    meta: dict[str, Any] = res["meta"] if isinstance(res.get("meta"), dict) else {}
    version = meta.get("versionId") if isinstance(meta.get("versionId"), str) else None
    consent = res.get("consent")
    return StudySubject(
        ref,
        patient,
        fhir_json.local_reference(res.get("study"), aliases, ctx.local_bases)[0],
        str(res.get("status")),
        fhir_json.local_date(period.get("start")),
        fhir_json.local_date(period.get("end")),
        isinstance(consent, dict) and bool(consent),
        version,
        origin,
        fhir_json.resolve_aliases(dict(res), aliases),
    ), issues


def map_other(res: dict[str, Any], ref: str, origin: Origin, ctx: MapContext, aliases: dict[str, str] | None) -> Result:
    kind = res.get("resourceType")
    if kind == "Medication":
        return SupportingResource(ref, None, medication_concept(res, ctx.mappings), origin), []
    if kind == "BodyStructure":
        patient, issues = _patient_ref(res, "patient", ref, aliases, ctx.local_bases)
        if patient is None:
            return None, issues
        return SupportingResource(ref, patient, None, origin), []
    return SupportingResource(ref, None, None, origin), []


Mapper = Callable[[dict[str, Any], str, Origin, MapContext, dict[str, str] | None], Result]
MAPPERS: dict[str, Mapper] = {
    "Patient": map_patient,
    "Observation": map_observation,
    "MedicationStatement": map_medication_use,
    "MedicationAdministration": map_medication_use,
    "MedicationRequest": map_medication_use,
    "AdverseEvent": map_adverse_event,
    "Condition": map_condition,
    "Consent": map_consent,
    "ResearchSubject": map_research_subject,
    "ResearchStudy": map_other,
    "BodyStructure": map_other,
    "Medication": map_other,
}


def map_resource(
    res: dict[str, Any],
    ref: str,
    origin: Origin,
    ctx: MapContext,
    aliases: dict[str, str] | None = None,
) -> Result:
    """Map any resource; types the protocol does not read give ``None`` and a ``type-not-used`` issue."""
    mapper = MAPPERS.get(str(res.get("resourceType")))
    if mapper is None:
        return None, _issue(
            ref, "resourceType", "type-not-used", f"{res.get('resourceType')} is not read by the protocol"
        )
    if not fhir_json.RESOURCE_ID.fullmatch(str(res.get("id"))):
        return None, _issue(ref, "id", "bad-id", "the id breaks FHIR R4's rule [A-Za-z0-9-.]{1,64}")
    bad_date = fhir_json.unreadable_date(res)
    if bad_date is not None:
        return None, _issue(ref, bad_date, "bad-date", f"{bad_date} is not a calendar date (e.g. 30 February)")
    try:
        return mapper(res, ref, origin, ctx, aliases)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        # An element of an unexpected JSON type deep in the resource: report it, never crash the run.
        return None, _issue(
            ref, "(structure)", "invalid-field", f"an element has an unexpected type ({type(exc).__name__})"
        )

"""What a write-back changes in the hospital's record, in data and in words, for a person to review.

Each plan entry (create / update / unchanged, one result resource or the ResearchSubject) is described by
the values its FHIR resource states, read back from the resource itself (:func:`stated`): the same reading
for the new resource and for the existing one it replaces, so an update lists exactly the elements whose
value changes, old and new. :func:`describe` adds a sentence a clinician reads ("Best overall response: PR,
confirmed") and the rule book's section that produced the result. Pure: no I/O; JSON in, typed values out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, TypedDict

import msgspec
from msgspec import UNSET, UnsetType

from fhiradapter.core.eligibility import explain
from fhiradapter.core.fhir_out import as_json_object
from fhiradapter.core.json_types import JsonObject, JsonValue
from fhiradapter.core.results import CriterionStatus, PatientResult
from fhiradapter.core.writeback import CODE_SYSTEM, GRADE_CODES, KINDS, RESPONSE_CODES, PlanEntry

Scalar = str | int | float | bool | None
Values = dict[str, Scalar | list[str]]

# Which section of docs/protocol.md decides each kind of result (the plan and the report cite it).
RULES = {
    "response": "docs/protocol.md §4",
    "best-response": "docs/protocol.md §4",
    "eligibility": "docs/protocol.md §2",
    "child-pugh": "docs/protocol.md §3",
    "toxicity": "docs/protocol.md §5",
    "research-subject": "docs/protocol.md §7",
}
BASIS_WORDS = {
    "tumour": "by tumour size",
    "afp": "by AFP",
    "both": "by tumour size and AFP",
    "new_lesion": "a new lesion",
}
_CATEGORY = {code: name for name, (code, _display) in RESPONSE_CODES.items()}
_GRADE = {code: grade for grade, (code, _display) in GRADE_CODES.items()}
_KIND_OF_CODE = {code: kind for kind, code in KINDS.items()}


class Change(msgspec.Struct, frozen=True):
    """One element of a resource whose value an update changes."""

    element: str
    old: Scalar | list[str]
    new: Scalar | list[str]


class Description(NamedTuple):
    """A plan entry for a reviewer: what the resource will say, in words and values, and what changes."""

    says: str
    rule: str
    new: Values
    old: Values | None  # update only: what the existing resource says now
    changes: tuple[Change, ...]  # update only: the elements whose value changes


class PlanLine(msgspec.Struct, frozen=True, omit_defaults=True, rename={"resource_type": "resourceType"}):
    """One line of writeback-plan.ndjson: a plan entry for the person who approves it (approve, sync, the
    report). ``existing``: the resource an update replaces (always written, null for a create); ``old`` and
    ``changes``: an update's only."""

    patient: str
    action: str  # create | update | unchanged
    kind: str
    resource_type: str | None
    identifier: str
    existing: str | None
    says: str
    rule: str
    new: Values
    old: Values | UnsetType = UNSET
    changes: tuple[Change, ...] | UnsetType = UNSET


def plan_line(patient: str, entry: PlanEntry, resource_type: str | None, described: Description) -> PlanLine:
    """The plan line of one entry of ``patient``'s write-back."""
    update = described.old is not None
    return PlanLine(
        patient,
        entry.action,
        entry.kind,
        resource_type,
        entry.identifier,
        entry.ref,
        described.says,
        described.rule,
        described.new,
        described.old if described.old is not None else UNSET,
        described.changes if update else UNSET,
    )


_plan_line = msgspec.json.Decoder(PlanLine)


def decode_plan_line(raw: bytes) -> PlanLine:
    """One line of writeback-plan.ndjson (msgspec.DecodeError when it is not one)."""
    return _plan_line.decode(raw)


def _code(concept: JsonValue) -> str | None:
    """The first coding's code of a CodeableConcept given as JSON."""
    if not isinstance(concept, dict):
        return None
    codings = concept.get("coding")
    if not isinstance(codings, list) or not codings or not isinstance(codings[0], dict):
        return None
    code = codings[0].get("code")
    return code if isinstance(code, str) else None


def _components(resource: JsonObject) -> dict[str, JsonObject]:
    out: dict[str, JsonObject] = {}
    found = resource.get("component")
    for comp in found if isinstance(found, list) else ():
        if isinstance(comp, dict) and (code := _code(comp.get("code"))) is not None:
            out[code] = comp
    return out


def _quantity(comp: JsonObject | None) -> float | int | None:
    quantity = (comp or {}).get("valueQuantity")
    value = quantity.get("value") if isinstance(quantity, dict) else None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: JsonValue) -> str | None:
    return value if isinstance(value, str) else None


def stated(kind: str, resource: JsonObject) -> Values:
    """The values a result resource (or the ResearchSubject) states, by element, as a reviewer compares them."""
    if kind == "research-subject":
        found = resource.get("period")
        period: JsonObject = found if isinstance(found, dict) else {}
        return {
            "status": _text(resource.get("status")),
            "period.start": _text(period.get("start")),
            "period.end": _text(period.get("end")),
        }
    comps = _components(resource)
    value = _code(resource.get("valueCodeableConcept"))
    return {**_result_values(kind, resource, comps, value), "status": _text(resource.get("status"))}


def _criteria(comps: dict[str, JsonObject]) -> dict[str, str | None]:
    """An eligibility result's criteria: id -> met / not_met / unknown."""
    return {
        code.removeprefix("criterion-"): _code(comp.get("valueCodeableConcept"))
        for code, comp in comps.items()
        if code.startswith("criterion-")
    }


class StatedResults(TypedDict, total=False):
    """One patient's results as the written resources state them (:func:`read_back`)."""

    assessments: list[Values]
    toxicities: dict[str, Scalar | list[str]]  # term -> worst grade
    best_response: Scalar | list[str]
    eligibility: Scalar | list[str]
    criteria: dict[str, str | None]
    child_pugh: Scalar | list[str]


def _by_date(assessment: Values) -> str:
    return str(assessment["date"])


def read_back(resources: Iterable[JsonObject]) -> StatedResults:
    """One patient's results as its written result Observations state them (the inverse of
    ``writeback.desired_resources``), read with :func:`stated`, the reading a reviewer's plan uses."""
    out: StatedResults = {"assessments": [], "toxicities": {}}
    for res in resources:
        kind = kind_of(res) if res.get("resourceType") == "Observation" else None
        if kind is None:
            continue
        v = stated(kind, res)
        if kind == "response":
            out["assessments"].append({k: v[k] for k in ("date", "response", "spd_mm2", "afp")})
        elif kind == "best-response":
            out["best_response"] = v["response"]
        elif kind == "eligibility":
            out["eligibility"] = v["eligibility"]
            out["criteria"] = _criteria(_components(res))
        elif kind == "child-pugh":
            out["child_pugh"] = v["score"]
        elif kind == "toxicity":
            out["toxicities"][str(v["term"])] = v["grade"]
    out["assessments"].sort(key=_by_date)
    return out


def _result_values(kind: str, resource: JsonObject, comps: dict[str, JsonObject], value: str | None) -> Values:
    if kind in ("response", "best-response"):
        confirmed = (comps.get("confirmed") or {}).get("valueBoolean")
        values: Values = {
            "response": _CATEGORY.get(value or "", value),
            "confirmed": confirmed if isinstance(confirmed, bool) else None,
            "basis": _text((comps.get("basis") or {}).get("valueString")),
        }
        if kind == "response":
            values = {
                "date": _text(resource.get("effectiveDateTime")),
                **values,
                "spd_mm2": _quantity(comps.get("spd")),
                "afp": _quantity(comps.get("1834-1")),
            }
        return values
    if kind == "eligibility":
        criteria = _criteria(comps)
        return {
            "eligibility": value,
            "not_met": sorted(c for c, s in criteria.items() if s == "not_met"),
            "unknown": sorted(c for c, s in criteria.items() if s == "unknown"),
        }
    if kind == "child-pugh":
        score = resource.get("valueInteger")
        cls = _text((comps.get("child-pugh-class") or {}).get("valueString"))
        return {"score": score if isinstance(score, int) and not isinstance(score, bool) else None, "class": cls}
    if kind == "toxicity":
        term = (comps.get("term") or {}).get("valueCodeableConcept")
        return {
            "term": _text(term.get("text")) if isinstance(term, dict) else None,
            "grade": _GRADE.get(value or ""),
            "source": _text((comps.get("source") or {}).get("valueString")),
            "first_date": _text(resource.get("effectiveDateTime")),
        }
    return {}


def kind_of(resource: JsonObject) -> str | None:
    """Which kind of result an adapter-written Observation is (by its local code), None for anything else."""
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    for coding in codings if isinstance(codings, list) else ():
        if isinstance(coding, dict) and coding.get("system") == CODE_SYSTEM:
            return _KIND_OF_CODE.get(str(coding.get("code")))
    return None


def _sentence(kind: str, v: Values, criteria_text: dict[str, str] | None) -> str:
    if kind == "research-subject":
        end = f", period end {v['period.end']}" if v.get("period.end") else ""
        return f"ResearchSubject status: {v.get('status')}{end}"
    if kind == "response":
        confirmed = ", confirmed" if v.get("confirmed") else ""
        basis = f" ({BASIS_WORDS.get(str(v['basis']), v['basis'])})" if v.get("basis") else ""
        sizes = [f"SPD {v['spd_mm2']} mm²" if v.get("spd_mm2") is not None else "", ""]
        sizes[1] = f"AFP {v['afp']} ng/mL" if v.get("afp") is not None else ""
        measured = "; ".join(s for s in sizes if s)
        return f"Response at the assessment of {v.get('date')}: {v.get('response')}{basis}{confirmed}" + (
            f"; {measured}" if measured else ""
        )
    if kind == "best-response":
        confirmed = ", confirmed" if v.get("confirmed") else ""
        return f"Best overall response: {v.get('response')}{confirmed}" + (f" ({v['basis']})" if v.get("basis") else "")
    if kind == "eligibility":
        texts = criteria_text or {}
        failed = [texts.get(str(c), str(c)) for c in v.get("not_met") or []]  # type: ignore[union-attr]
        missing = [texts.get(str(c), str(c)) for c in v.get("unknown") or []]  # type: ignore[union-attr]
        parts = [f"not met: {'; '.join(failed)}"] if failed else []
        parts += [f"unknown: {'; '.join(missing)}"] if missing else []
        return f"Eligibility: {v.get('eligibility')}" + (f" ({'. '.join(parts)})" if parts else "")
    if kind == "child-pugh":
        if v.get("score") is None:
            return "Child-Pugh score: unknown (a component is missing)"
        return f"Child-Pugh score {v.get('score')} (class {v.get('class')})"
    if kind == "toxicity":
        return f"Worst grade of {v.get('term')}: grade {v.get('grade')} (NCI CTC v2.0, {v.get('source')})"
    return kind


def describe(entry: PlanEntry, criteria_text: dict[str, str] | None = None) -> Description:
    """A plan entry for a reviewer. ``criteria_text``: for eligibility, each criterion in words with the
    patient's value (criterion id -> text); without it the criterion ids are named."""
    new = stated(entry.kind, as_json_object(entry.resource))
    says = _sentence(entry.kind, new, criteria_text)
    rule = RULES.get(entry.kind, "docs/protocol.md")
    if entry.kind == "research-subject" and entry.action == "create":
        rule = "docs/protocol.md §1, §7"  # a candidate enrolled (evaluate --enrol-candidates)
    if entry.action != "update":
        return Description(says, rule, new, None, ())
    old = stated(entry.kind, entry.old or {})
    changes = tuple(Change(k, old.get(k), value) for k, value in new.items() if old.get(k) != value)
    return Description(says, rule, new, old, changes)


def criteria_in_words(result: PatientResult) -> dict[str, str]:
    """Each criterion not met or unknown, as the report words it: the patient's value and the limit ("age 75;
    must be under 75"), or what is missing (``eligibility.explain``: one wording, one place for every limit)."""
    return {
        c.id: explain(c)
        for c in result.eligibility.criteria
        if c.status in (CriterionStatus.NOT_MET, CriterionStatus.UNKNOWN)
    }


def _shown(value: Scalar | list[str]) -> str:
    if value is None or value == []:
        return "none"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def in_words(line: PlanLine) -> str:
    """One writeback-plan.ndjson line as a reviewer reads it (sync --dry-run, approve, the report)."""
    action, says, rule = line.action, line.says or line.kind, line.rule
    if action == "update":
        found = line.changes if line.changes is not UNSET else ()
        changes = "; ".join(f"{c.element} {_shown(c.old)} → {_shown(c.new)}" for c in found)
        return f"update {line.existing}: {changes or 'content'} ({says}; {rule})"
    if action == "create":
        return f"create: {says} ({rule})"
    return f"unchanged: {says}"


def by_patient(lines: Iterable[PlanLine], include_unchanged: bool = False) -> dict[str, list[str]]:
    """Plan lines in words, grouped by patient, in the plan's order (patients sorted as in the plan)."""
    out: dict[str, list[str]] = {}
    for line in lines:
        if include_unchanged or line.action != "unchanged":
            out.setdefault(line.patient, []).append(in_words(line))
    return out

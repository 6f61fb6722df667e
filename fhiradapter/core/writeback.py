"""Write-back: one patient's results as FHIR R4 resources, and the plan to put them on a server.

For each patient: an Observation per response assessment (WHO + AFP category coded in NCIt, SPD and AFP as
components, ``derivedFrom`` the TumorSize and AFP Observations), the best overall response, eligibility (a
component per criterion), the Child-Pugh score, one Observation per toxicity's worst grade (CTC v2.0), and
the ResearchSubject status. Every created resource carries a deterministic identifier in the adapter's
system (a hash of protocol, kind, patient and key: no patient data) and a content hash tag, so a plan can
say for each: ``create`` (POST with If-None-Exist), ``update`` (PUT with If-Match on the version read) or
``unchanged`` (nothing sent). Resources are plain R4 JSON dicts (built here, fast); tests check each against
``fhir.resources.R4B`` and the HL7 R4 JSON Schema.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from fhiradapter.core.protocol import StudyKey
from fhiradapter.core.results import PatientResult

IDENTIFIER_SYSTEM = "urn:fhiradapter:result-id"
CODE_SYSTEM = "urn:fhiradapter:code"
HASH_TAG_SYSTEM = "urn:fhiradapter:content-hash"
RUN_TAG_SYSTEM = "urn:fhiradapter:run"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey", "display": "Survey"}
    ]
}
# NCIt response categories (reference/domain.md §4.5) and CTC grade codes (docs/protocol.md §5).
RESPONSE_CODES = {
    "CR": ("C4870", "Complete Response"),
    "PR": ("C18058", "Partial Response"),
    "SD": ("C18213", "Stable Disease"),
    "PD": ("C35571", "Progressive Disease"),
    "NE": ("C62222", "Not Evaluable"),
}
GRADE_CODES = {
    1: ("C41338", "Grade 1 Mild Adverse Event"),
    2: ("C41339", "Grade 2 Moderate Adverse Event"),
    3: ("C41340", "Grade 3 Severe Adverse Event"),
    4: ("C41337", "Grade 4 Life Threatening Adverse Event"),
    5: ("C48275", "Grade 5 Death Related to Adverse Event"),
}
RESPONSE_METHOD = "WHO bidimensional + serum AFP, protocol rule"
# Kinds of result resource and their local codes (CODE_SYSTEM).
KINDS = {
    "response": "who-afp-response",
    "best-response": "best-overall-response",
    "eligibility": "eligibility",
    "child-pugh": "child-pugh-score",
    "toxicity": "toxicity-worst-grade",
}


class Existing(NamedTuple):
    """A result resource the adapter wrote earlier, found in the input (by its identifier)."""

    ref: str
    identifier: str
    content_hash: str | None
    version: str | None
    content: dict[str, Any] | None = None  # what it says now (the fields read), for the plan's old values


class PlanEntry(NamedTuple):
    action: str  # create | update | unchanged
    kind: str
    resource: dict[str, Any]
    identifier: str
    ref: str | None  # the existing resource for update/unchanged
    version: str | None
    old: dict[str, Any] | None = None  # for update: what the existing resource says (the plan shows old -> new)


@dataclass(frozen=True, slots=True)
class WritebackContext:
    protocol_id: str
    study: StudyKey  # the study a new ResearchSubject references (literally by id, else by identifier)


def study_reference(study: StudyKey) -> dict[str, Any]:
    """A Reference to the study: literal when its id is known, else logical (docs/protocol.md §1)."""
    if study.id:
        return {"reference": f"ResearchStudy/{study.id}"}
    system, value = min(study.identifiers)
    return {"type": "ResearchStudy", "identifier": {"system": system, "value": value}}


def result_identifier(protocol_id: str, kind: str, patient: str, key: str = "") -> str:
    """Deterministic, PHI-free identifier value: a hash of what the resource is about."""
    return hashlib.sha256(f"{protocol_id}|{kind}|{patient}|{key}".encode()).hexdigest()[:32]


def content_hash(resource: dict[str, Any]) -> str:
    """Hash of a resource's content, ignoring ``meta`` and ``id`` (what a server adds or changes)."""
    if "meta" in resource or "id" in resource:
        resource = {k: v for k, v in resource.items() if k not in ("meta", "id")}
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)
def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    """A CodeableConcept (cached: the same few codes recur in every patient; never mutated)."""
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return {"coding": [c], **({"text": display} if display else {})}


def _local(code: str, display: str) -> dict[str, Any]:
    return _coding(CODE_SYSTEM, code, display)


def _refs(refs: Iterable[str], prefix: str = "Observation/") -> list[dict[str, str]]:
    return [{"reference": r} for r in sorted(set(refs)) if r.startswith(prefix)]


def _observation(
    ctx: WritebackContext, kind: str, patient: str, key: str, display: str, effective: str | None, **fields: Any
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": result_identifier(ctx.protocol_id, kind, patient, key)}],
        "status": "final",
        "category": [OBS_CATEGORY],
        "code": _local(KINDS[kind], display),
        "subject": {"reference": patient},
    }
    if effective:
        res["effectiveDateTime"] = effective
    for k, v in fields.items():
        if v is not None and v != [] and v != {}:
            res[k] = v
    return res


def _quantity(value: float | None, unit: str) -> dict[str, Any] | None:
    if value is None:
        return None
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def desired_resources(subject: PatientResult, ctx: WritebackContext) -> list[tuple[str, dict[str, Any]]]:
    """(kind, resource) for every result of one patient."""
    patient = subject.patient
    out: list[tuple[str, dict[str, Any]]] = []
    evidence_of_baseline = subject.baseline.evidence if subject.baseline else ()
    baseline_evidence = list(evidence_of_baseline) if isinstance(evidence_of_baseline, tuple) else []
    for a in subject.assessments:
        code, display = RESPONSE_CODES[a.response]
        day = a.date.isoformat()
        components = [
            {"code": _local("spd", "Sum of products of diameters"), "valueQuantity": _quantity(a.spd_mm2, "mm2")}
            if a.spd_mm2 is not None
            else None,
            {"code": _coding(LOINC, "1834-1", "Alpha-1-Fetoprotein"), "valueQuantity": _quantity(a.afp, "ng/mL")}
            if a.afp is not None
            else None,
            {"code": _local("basis", "Response basis"), "valueString": str(a.basis)} if a.basis else None,
            {"code": _local("confirmed", "Confirmed"), "valueBoolean": a.confirmed}
            if a.confirmed is not None
            else None,
        ]
        out.append(
            (
                "response",
                _observation(
                    ctx,
                    "response",
                    patient,
                    day + (":afp" if a.afp_only else ""),
                    "WHO + AFP response at assessment",
                    day,
                    valueCodeableConcept=_coding(NCIT, code, display),
                    method={"text": RESPONSE_METHOD},
                    component=[c for c in components if c],
                    derivedFrom=_refs([*a.evidence, *baseline_evidence]),
                    note=[{"text": "; ".join(a.reasons)}] if a.reasons else None,
                ),
            )
        )
    best = subject.best_response
    if subject.treated and best:
        code, display = RESPONSE_CODES[best]
        confirmed = any(a.confirmed for a in subject.assessments if a.response == best)
        evidence = [e for a in subject.assessments for e in a.evidence]
        out.append(
            (
                "best-response",
                _observation(
                    ctx,
                    "best-response",
                    patient,
                    "",
                    "Best overall response (WHO + AFP)",
                    subject.index_date.isoformat() if subject.index_date else None,
                    valueCodeableConcept=_coding(NCIT, code, display),
                    method={"text": RESPONSE_METHOD},
                    component=[
                        {"code": _local("confirmed", "Confirmed"), "valueBoolean": confirmed},
                        {"code": _local("basis", "Response basis"), "valueString": subject.best_response_reason or ""},
                    ],
                    derivedFrom=_refs(evidence),
                ),
            )
        )
    elig = subject.eligibility
    screening = elig.screening_date.isoformat()
    out.append(
        (
            "eligibility",
            _observation(
                ctx,
                "eligibility",
                patient,
                "",
                "Protocol eligibility",
                screening,
                valueCodeableConcept=_local(elig.status, elig.status),
                component=[
                    {
                        "code": _local(f"criterion-{c.id}", c.id),
                        "valueCodeableConcept": _local(c.status, c.status),
                        **({"interpretation": [{"text": c.detail}]} if c.detail else {}),
                    }
                    for c in elig.criteria
                ],
                derivedFrom=_refs([e for c in elig.criteria for e in c.evidence]),
            ),
        )
    )
    cp = subject.child_pugh
    cp_value: dict[str, Any] = (
        {"valueInteger": cp.score}
        if cp.score is not None
        else {
            "dataAbsentReason": _coding(
                "http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown", "Unknown"
            )
        }
    )
    out.append(
        (
            "child-pugh",
            _observation(
                ctx,
                "child-pugh",
                patient,
                "",
                "Child-Pugh score",
                screening,
                **cp_value,
                component=[{"code": _local("child-pugh-class", "Child-Pugh class"), "valueString": cp.cls}]
                if cp.cls
                else None,
                derivedFrom=_refs(cp.evidence),
            ),
        )
    )
    for t in subject.toxicities:
        code, display = GRADE_CODES[min(t.worst_grade, 5)]
        term = (
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/mdr", "code": t.meddra}], "text": t.display}
            if t.meddra
            else {"text": t.display}
        )
        out.append(
            (
                "toxicity",
                _observation(
                    ctx,
                    "toxicity",
                    patient,
                    t.term,
                    "Worst toxicity grade (NCI CTC v2.0)",
                    t.first_date.isoformat(),
                    valueCodeableConcept={**_coding(NCIT, code, display), "text": f"CTC v2.0 grade {t.worst_grade}"},
                    component=[
                        {"code": _local("term", "Toxicity term"), "valueCodeableConcept": term},
                        {"code": _local("criteria", "Grading criteria"), "valueString": t.criteria},
                        {"code": _local("source", "Grade source"), "valueString": t.source},
                    ],
                    derivedFrom=_refs(t.evidence),
                    # R4 derivedFrom cannot point at an AdverseEvent; the graded events are the focus instead.
                    focus=_refs(t.evidence, "AdverseEvent/"),
                ),
            )
        )
    return out


def research_subject_update(
    subject: PatientResult, raw: dict[str, Any] | None, ctx: WritebackContext
) -> dict[str, Any] | None:
    """The ResearchSubject as it should be: the existing one with status and period.end changed, or a new one.

    None when the existing resource already says what the rules decided.
    """
    status = str(subject.research_subject_status)
    end = subject.research_subject_period_end.isoformat() if subject.research_subject_period_end else None
    if raw is not None:
        period = dict(raw.get("period") or {})
        if raw.get("status") == status and period.get("end") == end:
            return None
        new = {k: v for k, v in raw.items() if k != "meta"}
        new["status"] = status
        if end:
            period["end"] = end
        else:
            period.pop("end", None)
        if period:
            new["period"] = period
        return new
    rs: dict[str, Any] = {
        "resourceType": "ResearchSubject",
        "identifier": [
            {
                "system": IDENTIFIER_SYSTEM,
                "value": result_identifier(ctx.protocol_id, "research-subject", subject.patient),
            }
        ],
        "status": status,
        "study": study_reference(ctx.study),
        "individual": {"reference": subject.patient},
    }
    start = subject.eligibility.screening_date.isoformat()
    rs["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    return rs


def plan_patient(
    subject: PatientResult,
    existing: list[Existing],
    research_subject: tuple[str, str | None, dict[str, Any]] | None,
    ctx: WritebackContext,
) -> list[PlanEntry]:
    """create / update / unchanged for each result resource of one patient."""
    known = {e.identifier: e for e in existing}
    plan: list[PlanEntry] = []
    for kind, res in desired_resources(subject, ctx):
        ident = res["identifier"][0]["value"]
        digest = content_hash(res)
        res["meta"] = {"tag": [{"system": HASH_TAG_SYSTEM, "code": digest}]}
        old = known.get(ident)
        if old is None:
            plan.append(PlanEntry("create", kind, res, ident, None, None))
        elif old.content_hash == digest:
            plan.append(PlanEntry("unchanged", kind, res, ident, old.ref, old.version))
        else:
            res["id"] = old.ref.split("/", 1)[1]
            plan.append(PlanEntry("update", kind, res, ident, old.ref, old.version, old.content))
    ref, version, raw = research_subject if research_subject else (None, None, None)
    rs = research_subject_update(subject, raw, ctx)
    if rs is None and ref is not None:
        plan.append(PlanEntry("unchanged", "research-subject", raw or {}, ref, ref, version))
    elif rs is not None and ref is not None:
        plan.append(PlanEntry("update", "research-subject", rs, ref, ref, version, raw))
    elif rs is not None:
        ident = rs["identifier"][0]["value"]
        old = known.get(ident)
        if old is None:
            plan.append(PlanEntry("create", "research-subject", rs, ident, None, None))
    return plan


def bundle_entry(entry: PlanEntry) -> dict[str, Any] | None:
    """The transaction entry for a create or update; None for unchanged."""
    res = entry.resource
    rtype = res["resourceType"]
    if entry.action == "create":
        system = IDENTIFIER_SYSTEM
        return {
            "fullUrl": full_url(entry.action, entry.identifier, entry.ref),
            "resource": res,
            "request": {"method": "POST", "url": rtype, "ifNoneExist": f"identifier={system}|{entry.identifier}"},
        }
    if entry.action == "update" and entry.ref:
        request: dict[str, Any] = {"method": "PUT", "url": entry.ref}
        if entry.version:
            request["ifMatch"] = f'W/"{entry.version}"'
        return {
            "fullUrl": full_url(entry.action, entry.identifier, entry.ref),
            "resource": {**res, "id": entry.ref.split("/", 1)[1]},
            "request": request,
        }
    return None


def full_url(action: str, identifier: str, existing: str | None) -> str:
    """A plan entry's fullUrl in the Bundle: a urn:uuid from the identifier of a create, else the resource it
    updates. The plan lines name both, so whatever cuts a Bundle by its plan finds each entry by this."""
    return f"urn:uuid:{uuid_of(identifier)}" if action == "create" else str(existing)


def uuid_of(identifier: str) -> str:
    """A Bundle entry's urn:uuid for a hex identifier (deterministic: the same result, the same fullUrl)."""
    h = identifier.ljust(32, "0")[:32]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def run_tag(targets_digest: str, as_of: str, mappings: dict[str, Any]) -> str:
    """The Provenance's run tag: a hash of what the run wrote (the targets' digest), as-of and mappings."""
    return hashlib.sha256(f"{targets_digest}|{as_of}|{mappings.get('sha256', '')}".encode()).hexdigest()[:32]


def assembler_agent(adapter_version: str) -> dict[str, Any]:
    """The Provenance agent that names fhiradapter, which assembled what was written."""
    return {
        "type": _coding("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "assembler", "Assembler"),
        "who": {"display": f"fhiradapter {adapter_version}"},
    }


def provenance_entry(
    targets: list[str],
    *,
    adapter_version: str,
    mappings: dict[str, Any],
    as_of: str,
    inputs: list[str],
    recorded: str,
    run: str,
) -> dict[str, Any]:
    """One Provenance for the run: adapter and version, mappings version, as-of date and inputs.

    Created conditionally on the run tag, so posting the Bundle twice adds nothing. ``target`` comes first
    so that a writer can stream a long target list into it.
    """
    res = {
        "resourceType": "Provenance",
        "target": [{"reference": t} for t in targets],
        "meta": {"tag": [{"system": RUN_TAG_SYSTEM, "code": run}]},
        "occurredPeriod": {"end": as_of},
        "recorded": recorded,
        "policy": [f"{CODE_SYSTEM}:protocol:{mappings.get('id')}:{mappings.get('version')}"],
        "reason": [{"text": f"Protocol evaluation as of {as_of}"}],
        "activity": _coding("http://terminology.hl7.org/CodeSystem/v3-DataOperation", "UPDATE", "revise"),
        "agent": [assembler_agent(adapter_version)],
        "entity": [
            {
                "role": "source",
                "what": {
                    "display": f"mappings {mappings.get('id')} {mappings.get('version')} "
                    f"sha256:{mappings.get('sha256', '')[:16]}"
                },
            }
        ]
        + [{"role": "source", "what": {"display": f"input {name}"}} for name in inputs],
    }
    return {
        "resource": res,
        "fullUrl": f"urn:uuid:{uuid_of(run)}",
        "request": {"method": "POST", "url": "Provenance", "ifNoneExist": f"_tag={RUN_TAG_SYSTEM}|{run}"},
    }


def entry_patient(entry: dict[str, Any]) -> str | None:
    """The patient a write-back entry is about (its resource's subject, individual or patient reference)."""
    resource = entry.get("resource") or {}
    for key in ("subject", "individual", "patient"):
        ref = (resource.get(key) or {}).get("reference") if isinstance(resource.get(key), dict) else None
        if isinstance(ref, str):
            return ref
    return None


def split_bundle(bundle: dict[str, Any], max_entries: int) -> list[dict[str, Any]]:
    """A write-back transaction as smaller transactions, for servers that limit a transaction's size.

    A patient's entries are never split (each patient's results stay atomic). The Provenance is copied into
    each part with only that part's targets, and tagged ``<run>-<hash of its targets>`` so that each copy is created
    conditionally on its own tag: pushing the parts twice still adds nothing.
    """
    entries = [e for e in bundle.get("entry") or () if isinstance(e, dict)]
    provenance = next((e for e in entries if (e.get("resource") or {}).get("resourceType") == "Provenance"), None)
    results = [e for e in entries if e is not provenance]
    if len(entries) <= max_entries:
        return [bundle] if entries else []
    groups: list[list[dict[str, Any]]] = []
    for entry in results:
        patient = entry_patient(entry)
        if groups and patient is not None and entry_patient(groups[-1][-1]) == patient:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    room = max(1, max_entries - (1 if provenance else 0))
    parts: list[list[dict[str, Any]]] = []
    for group in groups:
        if parts and len(parts[-1]) + len(group) <= room:
            parts[-1].extend(group)
        else:
            parts.append(list(group))
    out = []
    for part in parts:
        chunk = list(part)
        if provenance is not None:
            chunk.append(provenance_for(provenance, part))
        out.append({**bundle, "entry": chunk})
    return out


def provenance_for(provenance: dict[str, Any], part: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of the run's Provenance naming only ``part``'s entries, tagged by them (pushed twice: added once)."""
    resource = dict(provenance["resource"])
    run = next((t["code"] for t in resource.get("meta", {}).get("tag", []) if t.get("system") == RUN_TAG_SYSTEM), "")
    targets = [str(e["fullUrl"]) for e in part if e.get("fullUrl")]
    # Tagged by what the part holds, not by its number: the same part pushed again finds its Provenance, and
    # parts cut otherwise (another chunk, a limit learnt) get Provenances of their own.
    tag = f"{run}-{hashlib.sha256(' '.join(sorted(targets)).encode()).hexdigest()[:16]}"
    resource["target"] = [{"reference": t} for t in targets]
    resource["meta"] = {**resource.get("meta", {}), "tag": [{"system": RUN_TAG_SYSTEM, "code": tag}]}
    request = {**provenance["request"], "ifNoneExist": f"_tag={RUN_TAG_SYSTEM}|{tag}"}
    return {**provenance, "fullUrl": f"urn:uuid:{uuid_of(tag)}", "resource": resource, "request": request}

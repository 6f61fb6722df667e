"""Write-back: one patient's results as FHIR R4 resources, and the plan to put them on a server.

For each patient: an Observation per response assessment (WHO + AFP category coded in NCIt, SPD and AFP as
components, ``derivedFrom`` the TumorSize and AFP Observations), the best overall response, eligibility (a
component per criterion), the Child-Pugh score, one Observation per toxicity's worst grade (CTC v2.0), and
the ResearchSubject status. Every created resource carries a deterministic identifier in the adapter's
system (a hash of protocol, kind, patient and key: no patient data) and a content hash tag, so a plan can
say for each: ``create`` (POST with If-None-Exist), ``update`` (PUT with If-Match on the version read) or
``unchanged`` (nothing sent). Resources are typed (:mod:`fhir_out`: msgspec Structs of what is written);
tests check each against ``fhir.resources.R4B`` and the HL7 R4 JSON Schema. What a server holds (an existing
ResearchSubject, a written result read back, the Bundle read from writeback.json) is JSON: ``JsonObject``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import msgspec
import orjson

from fhiradapter.core.fhir_out import (
    Annotation,
    BundleEntry,
    BundleRequest,
    CodeableConcept,
    Coding,
    Identifier,
    Meta,
    Observation,
    ObservationComponent,
    Period,
    Provenance,
    ProvenanceAgent,
    ProvenanceEntity,
    ProvenanceEntry,
    Quantity,
    Reference,
    ResearchSubject,
    Written,
    encode_sorted,
)
from fhiradapter.core.json_types import JsonObject, JsonValue, as_object
from fhiradapter.core.protocol import StudyKey
from fhiradapter.core.results import Assessment, PatientResult, ProtocolIdentity, Toxicity

IDENTIFIER_SYSTEM = "urn:fhiradapter:result-id"
CODE_SYSTEM = "urn:fhiradapter:code"
HASH_TAG_SYSTEM = "urn:fhiradapter:content-hash"
RUN_TAG_SYSTEM = "urn:fhiradapter:run"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MEDDRA = "http://terminology.hl7.org/CodeSystem/mdr"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
OBS_CATEGORY = CodeableConcept(
    coding=[Coding("http://terminology.hl7.org/CodeSystem/observation-category", "survey", "Survey")]
)
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
    content: JsonObject | None = None  # what it says now (the fields read), for the plan's old values


class PlanEntry(NamedTuple):
    action: str  # create | update | unchanged
    kind: str
    resource: Written  # ours, typed; an existing ResearchSubject as the server's JSON with our changes
    identifier: str
    ref: str | None  # the existing resource for update/unchanged
    version: str | None
    old: JsonObject | None = None  # for update: what the existing resource says (the plan shows old -> new)


@dataclass(frozen=True, slots=True)
class WritebackContext:
    protocol_id: str
    study: StudyKey  # the study a new ResearchSubject references (literally by id, else by identifier)


def study_reference(study: StudyKey) -> Reference:
    """A Reference to the study: literal when its id is known, else logical (docs/protocol.md §1)."""
    if study.id:
        return Reference(reference=f"ResearchStudy/{study.id}")
    system, value = min(study.identifiers)
    return Reference(type="ResearchStudy", identifier=Identifier(system, value))


def result_identifier(protocol_id: str, kind: str, patient: str, key: str = "") -> str:
    """Deterministic, PHI-free identifier value: a hash of what the resource is about."""
    return hashlib.sha256(f"{protocol_id}|{kind}|{patient}|{key}".encode()).hexdigest()[:32]


def content_hash(resource: Observation | JsonObject) -> str:
    """Hash of a resource's content, ignoring ``meta`` and ``id`` (what a server adds or changes).

    The same digest for a resource of ours and for its JSON read back from a server (sorted keys, both)."""
    if isinstance(resource, Observation):
        if resource.meta is not None or resource.id is not None:
            resource = msgspec.structs.replace(resource, meta=None, id=None)
        return hashlib.sha256(encode_sorted(resource)).hexdigest()[:32]
    if "meta" in resource or "id" in resource:
        resource = {k: v for k, v in resource.items() if k not in ("meta", "id")}
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)
def _coding(system: str, code: str, display: str | None = None) -> CodeableConcept:
    """A CodeableConcept (cached: the same few codes recur in every patient; never mutated)."""
    return CodeableConcept(coding=[Coding(system, code, display or None)], text=display or None)


def _local(code: str, display: str) -> CodeableConcept:
    return _coding(CODE_SYSTEM, code, display)


def _refs(refs: Iterable[str], prefix: str = "Observation/") -> list[Reference]:
    return [Reference(reference=r) for r in sorted(set(refs)) if r.startswith(prefix)]


def _quantity(value: float, unit: str) -> Quantity:
    return Quantity(value, unit, UCUM, unit)


def _observation(
    ctx: WritebackContext, kind: str, patient: str, key: str, display: str, effective: str | None
) -> Observation:
    """A result Observation of ``kind`` about ``patient``, its value and components still to be set."""
    return Observation(
        identifier=[Identifier(IDENTIFIER_SYSTEM, result_identifier(ctx.protocol_id, kind, patient, key))],
        status="final",
        category=[OBS_CATEGORY],
        code=_local(KINDS[kind], display),
        subject=Reference(reference=patient),
        effective_date_time=effective or None,
    )


def desired_resources(subject: PatientResult, ctx: WritebackContext) -> list[tuple[str, Observation]]:
    """(kind, Observation) for every result of one patient, in the order they are written."""
    evidence_of_baseline = subject.baseline.evidence if subject.baseline else ()
    baseline_evidence = list(evidence_of_baseline) if isinstance(evidence_of_baseline, tuple) else []
    out = [("response", response_observation(subject, a, baseline_evidence, ctx)) for a in subject.assessments]
    best = best_response_observation(subject, ctx)
    if best is not None:
        out.append(("best-response", best))
    out.append(("eligibility", eligibility_observation(subject, ctx)))
    out.append(("child-pugh", child_pugh_observation(subject, ctx)))
    out.extend(("toxicity", toxicity_observation(subject.patient, t, ctx)) for t in subject.toxicities)
    return out


def response_observation(
    subject: PatientResult, assessment: Assessment, baseline_evidence: list[str], ctx: WritebackContext
) -> Observation:
    """The response at one assessment: the NCIt category, SPD and AFP, basis and confirmation as components."""
    code, display = RESPONSE_CODES[assessment.response]
    day = assessment.date.isoformat()
    key = day + (":afp" if assessment.afp_only else "")
    obs = _observation(ctx, "response", subject.patient, key, "WHO + AFP response at assessment", day)
    obs.value_codeable_concept = _coding(NCIT, code, display)
    obs.method = CodeableConcept(text=RESPONSE_METHOD)
    components = obs.component
    if assessment.spd_mm2 is not None:
        spd = _quantity(assessment.spd_mm2, "mm2")
        components.append(ObservationComponent(_local("spd", "Sum of products of diameters"), value_quantity=spd))
    if assessment.afp is not None:
        afp = _quantity(assessment.afp, "ng/mL")
        components.append(ObservationComponent(_coding(LOINC, "1834-1", "Alpha-1-Fetoprotein"), value_quantity=afp))
    if assessment.basis:
        components.append(ObservationComponent(_local("basis", "Response basis"), value_string=str(assessment.basis)))
    if assessment.confirmed is not None:
        components.append(ObservationComponent(_local("confirmed", "Confirmed"), value_boolean=assessment.confirmed))
    obs.derived_from = _refs([*assessment.evidence, *baseline_evidence])
    if assessment.reasons:
        obs.note = [Annotation("; ".join(assessment.reasons))]
    return obs


def best_response_observation(subject: PatientResult, ctx: WritebackContext) -> Observation | None:
    """The best overall response of a treated patient (None for a patient untreated or never assessed)."""
    best = subject.best_response
    if not (subject.treated and best):
        return None
    code, display = RESPONSE_CODES[best]
    confirmed = any(a.confirmed for a in subject.assessments if a.response == best)
    index = subject.index_date.isoformat() if subject.index_date else None
    obs = _observation(ctx, "best-response", subject.patient, "", "Best overall response (WHO + AFP)", index)
    obs.value_codeable_concept = _coding(NCIT, code, display)
    obs.method = CodeableConcept(text=RESPONSE_METHOD)
    obs.component = [
        ObservationComponent(_local("confirmed", "Confirmed"), value_boolean=confirmed),
        ObservationComponent(_local("basis", "Response basis"), value_string=subject.best_response_reason or ""),
    ]
    obs.derived_from = _refs([e for a in subject.assessments for e in a.evidence])
    return obs


def eligibility_observation(subject: PatientResult, ctx: WritebackContext) -> Observation:
    """Eligibility at screening: the status, and a component per criterion (its detail as interpretation)."""
    elig = subject.eligibility
    screening = elig.screening_date.isoformat()
    obs = _observation(ctx, "eligibility", subject.patient, "", "Protocol eligibility", screening)
    obs.value_codeable_concept = _local(elig.status, elig.status)
    obs.component = [
        ObservationComponent(
            _local(f"criterion-{c.id}", c.id),
            value_codeable_concept=_local(c.status, c.status),
            interpretation=[CodeableConcept(text=c.detail)] if c.detail else [],
        )
        for c in elig.criteria
    ]
    obs.derived_from = _refs([e for c in elig.criteria for e in c.evidence])
    return obs


def child_pugh_observation(subject: PatientResult, ctx: WritebackContext) -> Observation:
    """The Child-Pugh score at screening (data absent when a component is missing) and its class."""
    cp = subject.child_pugh
    screening = subject.eligibility.screening_date.isoformat()
    obs = _observation(ctx, "child-pugh", subject.patient, "", "Child-Pugh score", screening)
    if cp.score is not None:
        obs.value_integer = cp.score
    else:
        obs.data_absent_reason = _coding(DATA_ABSENT, "unknown", "Unknown")
    if cp.cls:
        obs.component = [ObservationComponent(_local("child-pugh-class", "Child-Pugh class"), value_string=cp.cls)]
    obs.derived_from = _refs(cp.evidence)
    return obs


def toxicity_observation(patient: str, toxicity: Toxicity, ctx: WritebackContext) -> Observation:
    """One toxicity's worst grade (CTC v2.0): the term, the criteria and where the grade came from."""
    code, display = GRADE_CODES[min(toxicity.worst_grade, 5)]
    term = CodeableConcept(
        coding=[Coding(MEDDRA, toxicity.meddra)] if toxicity.meddra else [],
        text=toxicity.display,
    )
    first = toxicity.first_date.isoformat()
    obs = _observation(ctx, "toxicity", patient, toxicity.term, "Worst toxicity grade (NCI CTC v2.0)", first)
    graded = _coding(NCIT, code, display)
    obs.value_codeable_concept = CodeableConcept(graded.coding, f"CTC v2.0 grade {toxicity.worst_grade}")
    obs.component = [
        ObservationComponent(_local("term", "Toxicity term"), value_codeable_concept=term),
        ObservationComponent(_local("criteria", "Grading criteria"), value_string=toxicity.criteria),
        ObservationComponent(_local("source", "Grade source"), value_string=toxicity.source),
    ]
    obs.derived_from = _refs(toxicity.evidence)
    # R4 derivedFrom cannot point at an AdverseEvent; the graded events are the focus instead.
    obs.focus = _refs(toxicity.evidence, "AdverseEvent/")
    return obs


def research_subject_update(
    subject: PatientResult, raw: JsonObject | None, ctx: WritebackContext
) -> ResearchSubject | JsonObject | None:
    """The ResearchSubject as it should be: the existing one (the server's JSON) with status and period.end
    changed, or a new one of ours. None when the existing resource already says what the rules decided."""
    status = str(subject.research_subject_status)
    end = subject.research_subject_period_end.isoformat() if subject.research_subject_period_end else None
    if raw is not None:
        found = raw.get("period")
        period: JsonObject = dict(found) if isinstance(found, dict) else {}
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
    start = subject.eligibility.screening_date.isoformat()
    return ResearchSubject(
        identifier=[
            Identifier(IDENTIFIER_SYSTEM, result_identifier(ctx.protocol_id, "research-subject", subject.patient))
        ],
        status=status,
        study=study_reference(ctx.study),
        individual=Reference(reference=subject.patient),
        period=Period(start or None, end or None),
    )


def plan_patient(
    subject: PatientResult,
    existing: list[Existing],
    research_subject: tuple[str, str | None, JsonObject] | None,
    ctx: WritebackContext,
) -> list[PlanEntry]:
    """create / update / unchanged for each result resource of one patient."""
    known = {e.identifier: e for e in existing}
    plan: list[PlanEntry] = []
    for kind, res in desired_resources(subject, ctx):
        ident = res.identifier[0].value
        digest = content_hash(res)
        res.meta = Meta([Coding(HASH_TAG_SYSTEM, digest)])
        old = known.get(ident)
        if old is None:
            plan.append(PlanEntry("create", kind, res, ident, None, None))
        elif old.content_hash == digest:
            plan.append(PlanEntry("unchanged", kind, res, ident, old.ref, old.version))
        else:
            res.id = old.ref.split("/", 1)[1]
            plan.append(PlanEntry("update", kind, res, ident, old.ref, old.version, old.content))
    ref, version, raw = research_subject if research_subject else (None, None, None)
    rs = research_subject_update(subject, raw, ctx)
    if rs is None and ref is not None:
        plan.append(PlanEntry("unchanged", "research-subject", raw or {}, ref, ref, version))
    elif rs is not None and ref is not None:
        plan.append(PlanEntry("update", "research-subject", rs, ref, ref, version, raw))
    elif isinstance(rs, ResearchSubject):
        ident = rs.identifier[0].value
        if ident not in known:
            plan.append(PlanEntry("create", "research-subject", rs, ident, None, None))
    return plan


def bundle_entry(entry: PlanEntry) -> BundleEntry | None:
    """The transaction entry for a create or update; None for unchanged."""
    res = entry.resource
    if entry.action == "create":
        rtype = resource_type(res)
        condition = f"identifier={IDENTIFIER_SYSTEM}|{entry.identifier}"
        request = BundleRequest("POST", str(rtype), if_none_exist=condition)
        return BundleEntry(full_url(entry.action, entry.identifier, entry.ref), res, request)
    if entry.action == "update" and entry.ref:
        rid = entry.ref.split("/", 1)[1]
        if isinstance(res, dict):
            res = {**res, "id": rid}
        elif isinstance(res, Observation) and res.id != rid:
            res = msgspec.structs.replace(res, id=rid)
        ifmatch = f'W/"{entry.version}"' if entry.version else None
        request = BundleRequest("PUT", entry.ref, if_match=ifmatch)
        return BundleEntry(full_url(entry.action, entry.identifier, entry.ref), res, request)
    return None


def resource_type(resource: Written) -> str | None:
    """A written resource's ``resourceType``."""
    if isinstance(resource, dict):
        found = resource.get("resourceType")
        return found if isinstance(found, str) else None
    return type(resource).__name__


def full_url(action: str, identifier: str, existing: str | None) -> str:
    """A plan entry's fullUrl in the Bundle: a urn:uuid from the identifier of a create, else the resource it
    updates. The plan lines name both, so whatever cuts a Bundle by its plan finds each entry by this."""
    return f"urn:uuid:{uuid_of(identifier)}" if action == "create" else str(existing)


def uuid_of(identifier: str) -> str:
    """A Bundle entry's urn:uuid for a hex identifier (deterministic: the same result, the same fullUrl)."""
    h = identifier.ljust(32, "0")[:32]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def run_tag(targets_digest: str, as_of: str, mappings: ProtocolIdentity) -> str:
    """The Provenance's run tag: a hash of what the run wrote (the targets' digest), as-of and mappings."""
    return hashlib.sha256(f"{targets_digest}|{as_of}|{mappings.sha256}".encode()).hexdigest()[:32]


def assembler_agent(adapter_version: str) -> ProvenanceAgent:
    """The Provenance agent that names fhiradapter, which assembled what was written."""
    return ProvenanceAgent(
        type=_coding("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "assembler", "Assembler"),
        who=Reference(display=f"fhiradapter {adapter_version}"),
    )


def provenance_entry(
    targets: list[str],
    *,
    adapter_version: str,
    mappings: ProtocolIdentity,  # the run header's protocol stamp: id, version, sha256
    as_of: str,
    inputs: list[str],
    recorded: str,
    run: str,
) -> ProvenanceEntry:
    """One Provenance for the run: adapter and version, mappings version, as-of date and inputs.

    Created conditionally on the run tag, so posting the Bundle twice adds nothing. ``target`` comes first
    so that a writer can stream a long target list into it.
    """
    pid, version, sha256 = mappings.id, mappings.version, mappings.sha256
    mapped = Reference(display=f"mappings {pid} {version} sha256:{sha256[:16]}")
    res = Provenance(
        target=[Reference(reference=t) for t in targets],
        meta=Meta([Coding(RUN_TAG_SYSTEM, run)]),
        occurred_period=Period(end=as_of),
        recorded=recorded,
        policy=[f"{CODE_SYSTEM}:protocol:{pid}:{version}"],
        reason=[CodeableConcept(text=f"Protocol evaluation as of {as_of}")],
        activity=_coding("http://terminology.hl7.org/CodeSystem/v3-DataOperation", "UPDATE", "revise"),
        agent=[assembler_agent(adapter_version)],
        entity=[ProvenanceEntity("source", mapped)]
        + [ProvenanceEntity("source", Reference(display=f"input {name}")) for name in inputs],
    )
    request = BundleRequest("POST", "Provenance", if_none_exist=f"_tag={RUN_TAG_SYSTEM}|{run}")
    return ProvenanceEntry(res, f"urn:uuid:{uuid_of(run)}", request)


# ------------------------------------------------------------------------------------------------------------
# The Bundle as read back from writeback.json (or handed over in memory by sync): JSON, cut and filtered as is.


def entries_of(bundle: JsonObject) -> list[JsonObject]:
    """A Bundle's entries that are JSON objects."""
    found = bundle.get("entry")
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


class Outgoing(NamedTuple):
    """An entry of a write-back Bundle read back (writeback.json, or handed over by sync), its request read
    once from the JSON: what push sends, approve filters and undo takes back."""

    full_url: str | None
    method: str
    url: str
    if_none_exist: str | None
    if_match: str | None
    resource: JsonObject  # what is sent: the Bundle's JSON, as read
    entry: JsonObject  # the whole entry as read: what a transaction or batch sends

    @classmethod
    def of(cls, entry: JsonObject) -> Outgoing:
        request, full_url = as_object(entry.get("request")), entry.get("fullUrl")
        condition, version = request.get("ifNoneExist"), request.get("ifMatch")
        return cls(
            full_url if isinstance(full_url, str) else None,
            str(request.get("method", "")),
            str(request.get("url", "")),
            str(condition) if condition else None,
            str(version) if version else None,
            as_object(entry.get("resource")),
            entry,
        )

    @property
    def is_provenance(self) -> bool:
        return self.resource.get("resourceType") == "Provenance"


def outgoing(bundle: JsonObject) -> list[Outgoing]:
    """A write-back Bundle's entries, each with its request read."""
    return [Outgoing.of(e) for e in entries_of(bundle)]


def entry_patient(entry: JsonObject) -> str | None:
    """The patient a write-back entry is about (its resource's subject, individual or patient reference)."""
    resource = as_object(entry.get("resource"))
    for key in ("subject", "individual", "patient"):
        ref = as_object(resource.get(key)).get("reference")
        if isinstance(ref, str):
            return ref
    return None


def is_provenance(entry: JsonObject) -> bool:
    """Whether a Bundle entry holds a Provenance."""
    return as_object(entry.get("resource")).get("resourceType") == "Provenance"


def split_bundle(bundle: JsonObject, max_entries: int) -> list[JsonObject]:
    """A write-back transaction as smaller transactions, for servers that limit a transaction's size.

    A patient's entries are never split (each patient's results stay atomic). The Provenance is copied into
    each part with only that part's targets, and tagged ``<run>-<hash of its targets>`` so that each copy is created
    conditionally on its own tag: pushing the parts twice still adds nothing.
    """
    entries = entries_of(bundle)
    provenance = next((e for e in entries if is_provenance(e)), None)
    results = [e for e in entries if e is not provenance]
    if len(entries) <= max_entries:
        return [bundle] if entries else []
    groups: list[list[JsonObject]] = []
    for entry in results:
        patient = entry_patient(entry)
        if groups and patient is not None and entry_patient(groups[-1][-1]) == patient:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    room = max(1, max_entries - (1 if provenance else 0))
    parts: list[list[JsonObject]] = []
    for group in groups:
        if parts and len(parts[-1]) + len(group) <= room:
            parts[-1].extend(group)
        else:
            parts.append(list(group))
    out: list[JsonObject] = []
    for part in parts:
        chunk: list[JsonValue] = list(part)
        if provenance is not None:
            chunk.append(provenance_for(provenance, part))
        out.append({**bundle, "entry": chunk})
    return out


def provenance_for(provenance: JsonObject, part: list[JsonObject]) -> JsonObject:
    """A copy of the run's Provenance naming only ``part``'s entries, tagged by them (pushed twice: added once)."""
    resource = dict(as_object(provenance.get("resource")))
    meta = as_object(resource.get("meta"))
    tags = meta.get("tag")
    listed = tags if isinstance(tags, list) else []
    run = next((str(t["code"]) for t in listed if isinstance(t, dict) and t.get("system") == RUN_TAG_SYSTEM), "")
    targets = [str(e["fullUrl"]) for e in part if e.get("fullUrl")]
    # Tagged by what the part holds, not by its number: the same part pushed again finds its Provenance, and
    # parts cut otherwise (another chunk, a limit learnt) get Provenances of their own.
    tag = f"{run}-{hashlib.sha256(' '.join(sorted(targets)).encode()).hexdigest()[:16]}"
    resource["target"] = [{"reference": t} for t in targets]
    resource["meta"] = {**meta, "tag": [{"system": RUN_TAG_SYSTEM, "code": tag}]}
    request = {**as_object(provenance.get("request")), "ifNoneExist": f"_tag={RUN_TAG_SYSTEM}|{tag}"}
    return {**provenance, "fullUrl": f"urn:uuid:{uuid_of(tag)}", "resource": resource, "request": request}

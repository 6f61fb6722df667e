"""The study itself as FHIR R4: ResearchStudy, the eligibility Group, the PlanDefinition and the ValueSets.

Built from what the rules run on, so that what the hospital's other systems read is what the adapter applies:
the parsed mappings (``codes.toml``: one ValueSet per code list, the site's local codes included; the
configurable values of ``protocol.toml``) and the rule book's fixed limits (``core/limits.py``). The shapes
follow the HL7 Vulcan Schedule of Activities IG (ResearchStudy -> PlanDefinition -> ActivityDefinition) and, in
R4, a ResearchStudy's ``enrollment`` Group whose characteristics say who may enrol (EBM-on-FHIR's
StudyEligibilityCriteria): one characteristic per criterion of docs/protocol.md §2, its ``id`` the criterion's
id, exclusions with ``exclude = true``.

Every resource has an id derived from the study's (the ResearchStudy's is the study's own id, the one the
results' ResearchSubjects reference), an identifier in the adapter's system and, for the canonical ones, a url.
``plan_study`` compares them with what a server holds (a content-hash tag, as the results' write-back does):
create, update (If-Match the version read) or unchanged. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from fhiradapter.core.eligibility import CRITERIA, CRITERION_LABELS, THRESHOLDS
from fhiradapter.core.limits import CHILD_PUGH_MIN_SCORE, CLASS_B_MAX, FIXED_LIMITS, LAB_WINDOW_DAYS, Limit
from fhiradapter.core.protocol import RULE_BOOK, Mappings
from fhiradapter.core.study_resources import (
    CodeableConcept,
    Coding,
    Designation,
    Extension,
    Group,
    GroupCharacteristic,
    Identifier,
    Period,
    Quantity,
    Range,
    Reference,
    RelatedArtifact,
    ResearchStudy,
    ValueSet,
    ValueSetCompose,
    ValueSetConcept,
    ValueSetFilter,
    ValueSetInclude,
)

UCUM = "http://unitsofmeasure.org"
RESOURCE_IDENTIFIER_SYSTEM = "urn:fhiradapter:study-resource"
STUDY_IDENTIFIER_SYSTEM = "urn:fhiradapter:study"
CRITERION_SYSTEM = "urn:fhiradapter:criterion"
VALUE_SET_EXTENSION = "urn:fhiradapter:extension:criterion-value-set"  # a code list a criterion reads
PHASE_SYSTEM = "http://terminology.hl7.org/CodeSystem/research-study-phase"
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
PRINTED_UNITS = {"10*9/L": "10^9/L", "a": "years"}  # UCUM codes whose unit text differs from the code

StudyStatus = Literal[
    "active",
    "administratively-completed",
    "approved",
    "closed-to-accrual",
    "closed-to-accrual-and-intervention",
    "completed",
    "disapproved",
    "in-review",
    "temporarily-closed-to-accrual",
    "temporarily-closed-to-accrual-and-intervention",
    "withdrawn",
]
StudyPhase = Literal[
    "n-a", "early-phase-1", "phase-1", "phase-1-phase-2", "phase-2", "phase-2-phase-3", "phase-3", "phase-4"
]
PHASES: dict[str, str] = {  # the research-study-phase code system's displays
    "n-a": "N/A",
    "early-phase-1": "Early Phase 1",
    "phase-1": "Phase 1",
    "phase-1-phase-2": "Phase 1/Phase 2",
    "phase-2": "Phase 2",
    "phase-2-phase-3": "Phase 2/Phase 3",
    "phase-3": "Phase 3",
    "phase-4": "Phase 4",
}


class StudyPublication(BaseModel):
    """``study.toml [research_study]`` (optional file): what the published ResearchStudy says beyond the mappings
    the rules read (id, identifiers and title from ``protocol.toml``, condition from ``codes.toml`` hcc, the
    paper from ``published.toml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: StudyStatus = "active"
    phase: StudyPhase | None = None
    period_start: str | None = Field(default=None, pattern=r"^\d{4}(-\d{2}(-\d{2})?)?$")
    period_end: str | None = Field(default=None, pattern=r"^\d{4}(-\d{2}(-\d{2})?)?$")
    canonical_base: str | None = Field(default=None, pattern=r"^\S+$")  # default urn:fhiradapter:study:<id>
    description: str | None = None


class StudyDrug(msgspec.Struct, frozen=True, kw_only=True):
    """The study drug as ``export.toml [[ex]]`` gives it (one place for the protocol's dose)."""

    concept: str  # the codes.toml medication concept
    dose: float
    unit: str  # UCUM
    frequency: str  # CDISC: QD, BID, ...
    route: str  # CDISC: ORAL, ...


class StudyInputs(msgspec.Struct, frozen=True, kw_only=True):
    """What the published study is built from, besides the mappings the rules read."""

    publication: StudyPublication
    citation: str | None  # published.toml ``source``: the paper
    drug: StudyDrug
    study_id: str | None = None  # the id a server holds the study under (found by its identifier), if any


class ValueSetSpec(msgspec.Struct, frozen=True):
    """One code list of codes.toml, named as its ValueSet is: ``observation-anc``, ``condition-hcc``, ..."""

    name: str
    title: str
    source: str  # where the list is, in codes.toml
    codes: tuple[tuple[str, str, str | None], ...]  # (system, code, display)


class StudyIds(msgspec.Struct, frozen=True):
    """The ids of the published resources, derived from the study's, and their canonical base."""

    study: str
    base: str
    version: str

    def of(self, suffix: str) -> str:
        joined = f"{self.study}-{suffix}"
        if len(joined) <= 64:
            return joined
        return f"{self.study[:40]}-{hashlib.sha256(joined.encode()).hexdigest()[:23]}"

    def url(self, rtype: str, rid: str) -> str:
        return f"{self.base}/{rtype}/{rid}"

    def identifier(self, rid: str) -> tuple[Identifier, ...]:
        return (Identifier(system=RESOURCE_IDENTIFIER_SYSTEM, value=rid),)


def study_ids(mappings: Mappings, publication: StudyPublication, found_id: str | None = None) -> StudyIds:
    """The study's id: the one ResearchSubjects reference (configured), else the one a server holds the study's
    identifier under (``found_id``), else derived from its identifier."""
    key = mappings.study
    if key.id or found_id:
        sid = key.id or str(found_id)
    else:
        system, value = min(key.identifiers)
        sid = "study-" + hashlib.sha256(f"{system}|{value}".encode()).hexdigest()[:24]
    base = publication.canonical_base or f"urn:fhiradapter:study:{sid}"
    return StudyIds(sid, base.rstrip("/"), mappings.protocol.protocol.version)


# ---------------------------------------------------------------------------------------------- ValueSets


def _name_of(text: str) -> str:
    """A ValueSet's computable name: ``ThalHccPilotObservationAnc``."""
    parts = re.split(r"[^A-Za-z0-9]+", text)
    name = "".join(p[:1].upper() + p[1:] for p in parts if p)
    return name if name[:1].isalpha() else f"V{name}"


def value_set_specs(mappings: Mappings) -> list[ValueSetSpec]:
    """Every code list of codes.toml, resolved to ``(system, code)``; answers grouped by concept, each code's
    display the answer it means."""
    codes = mappings.codes
    systems = codes.systems

    def resolved(entries: Iterable[str], display: str | None = None) -> tuple[tuple[str, str, str | None], ...]:
        out = []
        for entry in entries:
            system, _bar, code = entry.rpartition("|")
            out.append((systems.get(system, system), code, display))
        return tuple(out)

    def slug(text: str) -> str:
        return text.replace("_", "-")

    def words(text: str) -> str:
        return text.replace("_", " ")

    specs = [
        ValueSetSpec(
            f"observation-{slug(o.concept)}",
            f"{words(o.concept)} Observation codes",
            "[[observation]]",
            resolved(o.codes),
        )
        for o in codes.observation
    ]
    answers: dict[str, list[tuple[str, str, str | None]]] = {}
    for answer in codes.answer:
        answers.setdefault(answer.concept, []).extend(resolved(answer.codes, answer.value))
    specs += [
        ValueSetSpec(f"answer-{slug(concept)}", f"{words(concept)} answer codes", "[[answer]]", tuple(found))
        for concept, found in answers.items()
    ]
    specs += [
        ValueSetSpec("tumor-longest", "tumour longest diameter", "[tumor] longest", resolved(codes.tumor.longest)),
        ValueSetSpec(
            "tumor-perpendicular",
            "tumour perpendicular diameter",
            "[tumor] perpendicular",
            resolved(codes.tumor.perpendicular),
        ),
    ]
    specs += [
        ValueSetSpec(
            f"condition-{slug(c.concept)}", f"{words(c.concept)} Condition codes", "[[condition]]", resolved(c.codes)
        )
        for c in codes.condition
    ]
    specs += [
        ValueSetSpec(
            f"medication-{slug(m.concept)}", f"{words(m.concept)} medication codes", "[[medication]]", resolved(m.codes)
        )
        for m in codes.medication
    ]
    specs.append(
        ValueSetSpec(
            "consent-research", "research consent codes", "[consent] research", resolved(codes.consent.research)
        )
    )
    specs += [
        ValueSetSpec(f"ae-term-{slug(t.term)}", f"{t.display} (CTC v2.0 term)", "[[ae_term]]", resolved(t.codes))
        for t in codes.ae_term
    ]
    specs += [
        ValueSetSpec(
            f"stop-reason-{slug(s.concept)}",
            f"{words(s.concept)} (reason to stop)",
            "[[stop_reason]]",
            resolved(s.codes),
        )
        for s in codes.stop_reason
    ]
    return specs


def build_value_set(spec: ValueSetSpec, ids: StudyIds, protocol_id: str) -> ValueSet:
    """A ValueSet of one code list: exact codes as concepts, ``C77*`` prefixes as an is-a filter, by system."""
    by_system: dict[str, tuple[list[ValueSetConcept], list[ValueSetFilter]]] = {}
    for system, code, meaning in spec.codes:
        concepts, filters = by_system.setdefault(system, ([], []))
        if code.endswith("*"):
            filters.append(ValueSetFilter(property="concept", op="is-a", value=code[:-1]))
        elif all(c.code != code for c in concepts):
            designation = (Designation(value=meaning),) if meaning else ()
            concepts.append(ValueSetConcept(code=code, designation=designation))
    rid = ids.of(spec.name)
    includes: list[ValueSetInclude] = []
    for system, (concepts, filters) in by_system.items():
        if concepts:
            includes.append(ValueSetInclude(system=system, concept=tuple(concepts)))
        includes += [ValueSetInclude(system=system, filter=(f,)) for f in filters]
    return ValueSet(
        id=rid,
        url=ids.url("ValueSet", rid),
        identifier=ids.identifier(rid),
        version=ids.version,
        status="active",
        name=_name_of(f"{protocol_id} {spec.name}"),
        title=f"{spec.title} ({protocol_id})",
        description=f"{spec.title}: the codes the rules read, from mappings codes.toml {spec.source} (the site's "
        "local codes and its ConceptMaps' included).",
        compose=ValueSetCompose(include=tuple(includes)),
    )


# ---------------------------------------------------------------------------------------------- the Group

# The code lists each criterion of docs/protocol.md §2 reads, by ValueSet name (those a site's codes.toml has).
CRITERION_VALUE_SETS: dict[str, tuple[str, ...]] = {
    "histology": ("condition-hcc",),
    "metastatic_measurable": ("condition-metastasis", "observation-tumor-size", "tumor-longest", "tumor-perpendicular"),
    "prior_anthracycline_progression": (
        "medication-anthracycline",
        "observation-disease-status",
        "answer-disease-status",
    ),
    "age": (),
    "ecog": ("observation-ecog", "answer-ecog"),
    "anc": ("observation-anc",),
    "platelets": ("observation-platelets",),
    "creatinine": ("observation-creatinine",),
    "child_pugh": (
        "observation-bilirubin",
        "observation-albumin",
        "observation-inr",
        "observation-pt",
        "observation-pt-control",
        "observation-ascites",
        "answer-ascites",
        "observation-encephalopathy",
    ),
    "not_pregnant_or_breastfeeding": (
        "condition-pregnancy",
        "condition-breastfeeding",
        "observation-pregnancy-status",
        "answer-pregnancy-status",
        "observation-breastfeeding-status",
        "answer-breastfeeding-status",
    ),
    "no_peripheral_neuropathy": ("condition-peripheral-neuropathy",),
    "no_prior_thalidomide": ("medication-thalidomide",),
    "no_uncontrolled_infection": ("condition-infection",),
    "consent": ("consent-research",),
}


def limit_quantity(limit: Limit) -> Quantity:
    """A fixed limit as a Quantity with its comparator: ``>= 1.0 10*9/L``, ``< 75 a``, ``<= 2`` (a score)."""
    if not limit.unit:
        return Quantity(value=limit.value, comparator=limit.comparator)
    return Quantity(
        value=limit.value,
        comparator=limit.comparator,
        unit=PRINTED_UNITS.get(limit.unit, limit.unit),
        system=UCUM,
        code=limit.unit,
    )


def _excludes(cid: str) -> bool:
    return cid.startswith(("not_", "no_"))


# What a coded criterion looks for, in words a data manager reads beside the codes (docs/protocol.md §2). The
# windows are the rule book's (core/limits.py); the codes are the site's (codes.toml, as ValueSets).
CODED_CRITERIA: dict[str, tuple[tuple[str, ...], str]] = {  # id -> (the lists whose codes are the value, words)
    "histology": (("condition-hcc",), "hepatocellular carcinoma, a Condition with verificationStatus confirmed"),
    "metastatic_measurable": (
        ("condition-metastasis",),
        "a secondary-malignancy Condition, and at least one lesion with both diameters measured within "
        f"{LAB_WINDOW_DAYS} days before the first dose (or screening)",
    ),
    "prior_anthracycline_progression": (
        ("medication-anthracycline",),
        "an anthracycline started before screening, and a later disease-status record of progression",
    ),
    "not_pregnant_or_breastfeeding": (
        ("condition-pregnancy", "condition-breastfeeding"),
        "pregnant or breastfeeding (a Condition, or a pregnancy or breastfeeding status Observation) on or before "
        "screening",
    ),
    "no_peripheral_neuropathy": (("condition-peripheral-neuropathy",), "active peripheral neuropathy (a Condition)"),
    "no_prior_thalidomide": (("medication-thalidomide",), "any thalidomide started before screening"),
    "no_uncontrolled_infection": (("condition-infection",), "an active infection (a Condition)"),
    "consent": (("consent-research",), "an active research Consent, or ResearchSubject.consent set"),
}
# The Observation codes a measured criterion compares (the characteristic's code names what is measured).
MEASURED_CRITERIA = {t.cid: f"observation-{t.cid}" for t in THRESHOLDS}


def _criterion_text(cid: str) -> str:
    """What the characteristic states: the criterion's label (for an exclusion, what excludes)."""
    label = CRITERION_LABELS[cid]
    threshold = next((t for t in THRESHOLDS if t.cid == cid), None)
    if threshold is not None:
        return f"{label}, {threshold.window}"
    return label.removeprefix("not ").removeprefix("no ") if _excludes(cid) else label


def _exact_codings(specs: dict[str, ValueSetSpec], names: Iterable[str]) -> tuple[Coding, ...]:
    """The exact codes of some code lists, each once (the prefixes, ``C77*``, are in the lists' ValueSets)."""
    found = [
        (system, code)
        for name in names
        for system, code, _meaning in (specs[name].codes if name in specs else ())
        if not code.endswith("*")
    ]
    return tuple(Coding(system=system, code=code) for system, code in dict.fromkeys(found))


def characteristic(cid: str, specs: dict[str, ValueSetSpec], value_sets: dict[str, ValueSet]) -> GroupCharacteristic:
    """One criterion as a Group characteristic: its id, what it looks at, and its limit or its codes.

    ``code`` names the criterion (``urn:fhiradapter:criterion``), and for a measured one also the Observation
    codes compared; ``value`` is the limit (a Quantity with its comparator, the Child-Pugh score as a Range) or,
    for a coded criterion, the codes that meet (or, with ``exclude``, exclude) with their meaning in words. Every
    code list the criterion reads is named in an extension by its ValueSet's canonical url.
    """
    label = CRITERION_LABELS[cid]
    extension = tuple(
        Extension(url=VALUE_SET_EXTENSION, value_canonical=value_sets[name].url)
        for name in CRITERION_VALUE_SETS.get(cid, ())
        if name in value_sets
    )
    measured = _exact_codings(specs, (MEASURED_CRITERIA[cid],)) if cid in MEASURED_CRITERIA else ()
    code = CodeableConcept(
        coding=(Coding(system=CRITERION_SYSTEM, code=cid, display=label), *measured), text=_criterion_text(cid)
    )
    excluded = _excludes(cid)
    limit = FIXED_LIMITS.get(cid)
    if limit is not None:
        quantity = limit_quantity(limit)
        return GroupCharacteristic(id=cid, extension=extension, code=code, value_quantity=quantity, exclude=excluded)
    if cid == "child_pugh":
        score = Range(low=Quantity(value=CHILD_PUGH_MIN_SCORE), high=Quantity(value=CLASS_B_MAX))
        return GroupCharacteristic(id=cid, extension=extension, code=code, value_range=score, exclude=excluded)
    names, words = CODED_CRITERIA[cid]
    prefixes = dict.fromkeys(code for n in names if n in specs for _s, code, _m in specs[n].codes if code.endswith("*"))
    if prefixes:  # a CodeableConcept holds exact codes only: say the ranges in words
        words += f"; also every code under {', '.join(p.removesuffix('*') for p in prefixes)} (in the ValueSets)"
    value = CodeableConcept(coding=_exact_codings(specs, names), text=words)
    return GroupCharacteristic(id=cid, extension=extension, code=code, value_codeable_concept=value, exclude=excluded)


def build_group(
    ids: StudyIds, mappings: Mappings, specs: Sequence[ValueSetSpec], value_sets: dict[str, ValueSet]
) -> Group:
    """The eligibility Group: one characteristic per criterion of docs/protocol.md §2, in its order."""
    by_name = {spec.name: spec for spec in specs}
    rid = ids.of("eligibility")
    return Group(
        id=rid,
        identifier=ids.identifier(rid),
        active=True,
        type="person",
        actual=False,
        name=f"Eligibility: {mappings.protocol.protocol.title} ({RULE_BOOK} §2)",
        characteristic=tuple(characteristic(cid, by_name, value_sets) for cid in CRITERIA),
    )


# ---------------------------------------------------------------------------------------------- ResearchStudy


def concept_of(specs: Sequence[ValueSetSpec], name: str, text: str) -> CodeableConcept:
    """A code list's exact codes as one CodeableConcept (the prefixes are left to its ValueSet)."""
    spec = next((s for s in specs if s.name == name), None)
    codings = tuple(
        Coding(system=system, code=code) for system, code, _d in (spec.codes if spec else ()) if not code.endswith("*")
    )
    return CodeableConcept(coding=codings, text=text)


def build_research_study(
    ids: StudyIds, mappings: Mappings, inputs: StudyInputs, specs: Sequence[ValueSetSpec], plan_id: str, group_id: str
) -> ResearchStudy:
    info = mappings.protocol.protocol
    publication = inputs.publication
    configured = sorted(mappings.study.identifiers)
    identifiers = (
        *(Identifier(system=system, value=value) for system, value in configured),
        Identifier(system=STUDY_IDENTIFIER_SYSTEM, value=ids.study),
    )
    period = (
        Period(start=publication.period_start, end=publication.period_end)
        if publication.period_start or publication.period_end
        else None
    )
    phase = (
        CodeableConcept(
            coding=(Coding(system=PHASE_SYSTEM, code=publication.phase, display=PHASES[publication.phase]),),
            text=PHASES[publication.phase],
        )
        if publication.phase
        else None
    )
    artifacts = (RelatedArtifact(type="citation", citation=inputs.citation),) if inputs.citation else ()
    return ResearchStudy(
        id=ids.study,
        identifier=identifiers,
        title=info.title,
        protocol=(Reference(reference=f"PlanDefinition/{plan_id}", display="treatment plan and assessments"),),
        status=publication.status,
        phase=phase,
        condition=(concept_of(specs, "condition-hcc", "hepatocellular carcinoma"),),
        focus=(concept_of(specs, f"medication-{inputs.drug.concept}", inputs.drug.concept),),
        related_artifact=artifacts,
        description=publication.description
        or f"{info.title}. Protocol {info.id} {info.version}; the rules: {RULE_BOOK} (fhiradapter).",
        enrollment=(Reference(reference=f"Group/{group_id}", display="eligibility criteria"),),
        period=period,
    )

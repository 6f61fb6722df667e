"""FHIR R4 definitional resources the published study is made of, as typed values (msgspec Structs).

ResearchStudy, Group (the eligibility criteria), PlanDefinition, ActivityDefinition and ValueSet, with only the
elements ``study_fhir`` fills. Each encodes straight to R4 JSON (camelCase names, ``resourceType`` first, absent
elements left out) and decodes back to the same value (``decode_resource``). Pure: no I/O.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class _Element(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel", kw_only=True):
    """A FHIR element: camelCase in JSON, absent when empty."""


class Coding(_Element, frozen=True, kw_only=True):
    system: str
    code: str
    display: str | None = None


class CodeableConcept(_Element, frozen=True, kw_only=True):
    coding: tuple[Coding, ...] = ()
    text: str | None = None


class Quantity(_Element, frozen=True, kw_only=True):
    value: float
    comparator: Literal["<", "<=", ">=", ">"] | None = None
    unit: str | None = None
    system: str | None = None
    code: str | None = None


class Range(_Element, frozen=True, kw_only=True):
    low: Quantity | None = None
    high: Quantity | None = None


class Reference(_Element, frozen=True, kw_only=True):
    reference: str | None = None
    display: str | None = None


class Identifier(_Element, frozen=True, kw_only=True):
    system: str
    value: str


class Period(_Element, frozen=True, kw_only=True):
    start: str | None = None
    end: str | None = None


class Extension(_Element, frozen=True, kw_only=True):
    url: str
    value_canonical: str | None = None
    value_coding: Coding | None = None


class Meta(_Element, frozen=True, kw_only=True):
    tag: tuple[Coding, ...] = ()


class Expression(_Element, frozen=True, kw_only=True):
    language: str
    description: str | None = None
    expression: str | None = None


class RelatedArtifact(_Element, frozen=True, kw_only=True):
    type: str
    display: str | None = None
    citation: str | None = None
    url: str | None = None


# ---------------------------------------------------------------------------------------------- ValueSet


class Designation(_Element, frozen=True, kw_only=True):
    value: str


class ValueSetConcept(_Element, frozen=True, kw_only=True):
    code: str
    designation: tuple[Designation, ...] = ()  # what the rules read the code as (an answer's meaning)


class ValueSetFilter(_Element, frozen=True, kw_only=True):
    property: str
    op: str
    value: str


class ValueSetInclude(_Element, frozen=True, kw_only=True):
    system: str
    concept: tuple[ValueSetConcept, ...] = ()
    filter: tuple[ValueSetFilter, ...] = ()


class ValueSetCompose(_Element, frozen=True, kw_only=True):
    include: tuple[ValueSetInclude, ...]


class ValueSet(_Element, frozen=True, kw_only=True, tag_field="resourceType", tag="ValueSet"):
    id: str
    meta: Meta | None = None
    url: str
    identifier: tuple[Identifier, ...] = ()
    version: str
    name: str
    title: str
    status: str
    description: str
    compose: ValueSetCompose


# ---------------------------------------------------------------------------------------------- Group


class GroupCharacteristic(_Element, frozen=True, kw_only=True):
    id: str  # the criterion id (docs/protocol.md §2): the rule that applies this characteristic
    extension: tuple[Extension, ...] = ()
    code: CodeableConcept
    value_codeable_concept: CodeableConcept | None = None
    value_boolean: bool | None = None
    value_quantity: Quantity | None = None
    value_range: Range | None = None
    value_reference: Reference | None = None
    exclude: bool


class Group(_Element, frozen=True, kw_only=True, tag_field="resourceType", tag="Group"):
    id: str
    meta: Meta | None = None
    identifier: tuple[Identifier, ...] = ()
    active: bool
    type: str
    actual: bool
    name: str
    characteristic: tuple[GroupCharacteristic, ...]


# ---------------------------------------------------------------------------------------------- plans


class TimingRepeat(_Element, frozen=True, kw_only=True):
    frequency: int | None = None
    period: float | None = None
    period_unit: str | None = None
    when: tuple[str, ...] = ()


class Timing(_Element, frozen=True, kw_only=True):
    repeat: TimingRepeat


class DoseAndRate(_Element, frozen=True, kw_only=True):
    dose_quantity: Quantity


class Dosage(_Element, frozen=True, kw_only=True):
    text: str
    timing: Timing | None = None
    route: CodeableConcept | None = None
    dose_and_rate: tuple[DoseAndRate, ...] = ()


class ActivityDefinition(_Element, frozen=True, kw_only=True, tag_field="resourceType", tag="ActivityDefinition"):
    id: str
    meta: Meta | None = None
    url: str
    identifier: tuple[Identifier, ...] = ()
    version: str
    name: str
    title: str
    status: str
    description: str
    kind: str
    intent: str
    product_codeable_concept: CodeableConcept | None = None
    dosage: tuple[Dosage, ...] = ()


class RelatedAction(_Element, frozen=True, kw_only=True):
    action_id: str
    relationship: str
    offset_range: Range | None = None


class ActionCondition(_Element, frozen=True, kw_only=True):
    kind: Literal["applicability", "start", "stop"]
    expression: Expression


class PlanAction(_Element, frozen=True, kw_only=True):
    id: str
    title: str
    description: str
    code: tuple[CodeableConcept, ...] = ()
    reason: tuple[CodeableConcept, ...] = ()
    documentation: tuple[RelatedArtifact, ...] = ()
    condition: tuple[ActionCondition, ...] = ()
    related_action: tuple[RelatedAction, ...] = ()
    timing_timing: Timing | None = None
    definition_canonical: str | None = None


class PlanDefinition(_Element, frozen=True, kw_only=True, tag_field="resourceType", tag="PlanDefinition"):
    id: str
    meta: Meta | None = None
    url: str
    identifier: tuple[Identifier, ...] = ()
    version: str
    name: str
    title: str
    type: CodeableConcept
    status: str
    description: str
    action: tuple[PlanAction, ...]


# ---------------------------------------------------------------------------------------------- ResearchStudy


class ResearchStudy(_Element, frozen=True, kw_only=True, tag_field="resourceType", tag="ResearchStudy"):
    id: str
    meta: Meta | None = None
    identifier: tuple[Identifier, ...] = ()
    title: str
    protocol: tuple[Reference, ...] = ()
    status: str
    phase: CodeableConcept | None = None
    condition: tuple[CodeableConcept, ...] = ()
    focus: tuple[CodeableConcept, ...] = ()
    related_artifact: tuple[RelatedArtifact, ...] = ()
    description: str | None = None
    enrollment: tuple[Reference, ...] = ()
    period: Period | None = None


StudyResource = ResearchStudy | Group | PlanDefinition | ActivityDefinition | ValueSet


def encode_resource(resource: StudyResource) -> bytes:
    return msgspec.json.encode(resource)


def decode_resource(data: bytes) -> StudyResource:
    """R4 JSON of one of the study's resources, typed again (raises msgspec.ValidationError when it is not)."""
    return msgspec.json.decode(data, type=StudyResource)

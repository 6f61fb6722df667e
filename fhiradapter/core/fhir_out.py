"""The FHIR R4 resources the adapter writes, as msgspec Structs: only the elements it writes.

Observation (a result), ResearchSubject (a new one; an existing one is updated as the server's JSON, see
``writeback.research_subject_update``), Provenance, and the transaction Bundle's entry and request. Every
Struct omits what is unset (``omit_defaults``) and names its fields as FHIR does (``rename="camel"``), in the
order writeback.json has always had them: :func:`encode` gives byte for byte the JSON the adapter wrote as
dicts before (docs/performance.md, *Write-back*: why Structs and not ``fhir.resources`` models). Tests
validate every encoded resource with ``fhir.resources.R4B``.
"""

from __future__ import annotations

import msgspec

from fhiradapter.core.json_types import JsonObject


class _Element(msgspec.Struct, omit_defaults=True, rename="camel"):
    """An element: unset fields are not written, names are FHIR's."""


class Coding(_Element):
    system: str
    code: str
    display: str | None = None


class CodeableConcept(_Element):
    coding: list[Coding] = msgspec.field(default_factory=list)
    text: str | None = None


class Identifier(_Element):
    system: str
    value: str


class Reference(_Element):
    reference: str | None = None
    type: str | None = None
    identifier: Identifier | None = None
    display: str | None = None


class Quantity(_Element):
    value: float
    unit: str
    system: str
    code: str


class Period(_Element):
    start: str | None = None
    end: str | None = None


class Annotation(_Element):
    text: str


class Meta(_Element):
    tag: list[Coding] = msgspec.field(default_factory=list)


class ObservationComponent(_Element):
    code: CodeableConcept
    value_quantity: Quantity | None = None
    value_codeable_concept: CodeableConcept | None = None
    value_string: str | None = None
    value_boolean: bool | None = None
    interpretation: list[CodeableConcept] = msgspec.field(default_factory=list)


class _Resource(_Element, tag_field="resourceType"):
    """A resource: its ``resourceType`` is written first (the Struct's tag)."""


class Observation(_Resource, tag=True, kw_only=True):
    identifier: list[Identifier]
    status: str
    category: list[CodeableConcept]
    code: CodeableConcept
    subject: Reference
    effective_date_time: str | None = None
    value_codeable_concept: CodeableConcept | None = None
    value_integer: int | None = None
    data_absent_reason: CodeableConcept | None = None
    method: CodeableConcept | None = None
    component: list[ObservationComponent] = msgspec.field(default_factory=list)
    derived_from: list[Reference] = msgspec.field(default_factory=list)
    note: list[Annotation] = msgspec.field(default_factory=list)
    focus: list[Reference] = msgspec.field(default_factory=list)
    meta: Meta | None = None  # the content-hash tag, set once the content is hashed
    id: str | None = None  # set for an update: the server's id


class ResearchSubject(_Resource, tag=True, kw_only=True):
    identifier: list[Identifier]
    status: str
    study: Reference
    individual: Reference
    period: Period


class ProvenanceAgent(_Element, kw_only=True):
    type: CodeableConcept
    role: list[CodeableConcept] = msgspec.field(default_factory=list)
    who: Reference


class ProvenanceEntity(_Element):
    role: str
    what: Reference


class Provenance(_Resource, tag=True, kw_only=True):
    target: list[Reference]
    meta: Meta
    occurred_period: Period | None = None  # the run's as-of (an undo has none)
    recorded: str
    policy: list[str]
    reason: list[CodeableConcept]
    activity: CodeableConcept
    agent: list[ProvenanceAgent]
    entity: list[ProvenanceEntity]


class BundleRequest(_Element):
    method: str
    url: str
    if_none_exist: str | None = None
    if_match: str | None = None


# What a result plan entry writes: a resource of ours, or a server's ResearchSubject as JSON with the adapter's
# changes (its other elements are the server's, kept as they are).
Written = Observation | ResearchSubject | JsonObject


class BundleEntry(_Element):
    """A create or update in the write-back transaction."""

    full_url: str
    resource: Observation | ResearchSubject | JsonObject
    request: BundleRequest


class ProvenanceEntry(_Element):
    """The run's Provenance in the write-back transaction (written resource first, as it always was)."""

    resource: Provenance
    full_url: str
    request: BundleRequest


_ENCODER = msgspec.json.Encoder()
_SORTED = msgspec.json.Encoder(order="sorted")


def encode(value: msgspec.Struct | JsonObject) -> bytes:
    """JSON of a written value, its elements in FHIR's order as the Struct lists them."""
    return _ENCODER.encode(value)


def encode_sorted(value: msgspec.Struct | JsonObject) -> bytes:
    """JSON of a written value with every key sorted (what its content hash is taken of)."""
    return _SORTED.encode(value)


def as_json_object(value: msgspec.Struct | JsonObject) -> JsonObject:
    """A written value as plain JSON (for what reads or sends resources as JSON: the review, a diff, a POST)."""
    if isinstance(value, dict):
        return value
    built = msgspec.to_builtins(value)
    if not isinstance(built, dict):
        raise TypeError(f"{type(value).__name__} is not encoded as a JSON object")
    return built

"""The FHIR R4 elements the protocol reads, as msgspec Structs that JSON decodes straight into.

Each Struct names only the fields a mapper reads: the decoder skips every other field without building it,
which is what makes reading fast. Names are snake_case here and FHIR's camelCase in JSON (``rename="camel"``).
Every field is optional; a field of the wrong JSON type (a string where FHIR has a number) fails decoding,
and the error names its path (``$.valueQuantity.value``): the record is then reported as ``invalid-field``.

Resources are a tagged union on ``resourceType``. ``ResearchSubject`` is decoded too, but the pipeline also
keeps its whole JSON (write-back updates it), so the NDJSON reader leaves it out of :data:`FAST_DECODER`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

import msgspec


class Element(msgspec.Struct, frozen=True, rename="camel", gc=False):
    """A FHIR element: frozen, camelCase in JSON. ``gc=False``: decoded trees hold no cycles."""


class Coding(Element, frozen=True):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class CodeableConcept(Element, frozen=True):
    coding: list[Coding] | None = None
    text: str | None = None


class Identifier(Element, frozen=True):
    system: str | None = None
    value: str | None = None


class Reference(Element, frozen=True):
    reference: str | None = None
    type: str | None = None
    identifier: Identifier | None = None
    display: str | None = None

    def given(self) -> bool:
        """Whether the reference says anything at all (an empty ``{}`` does not)."""
        return any(v is not None for v in (self.reference, self.type, self.identifier, self.display))


class Quantity(Element, frozen=True):
    value: float | None = None
    unit: str | None = None
    code: str | None = None


class Period(Element, frozen=True):
    start: str | None = None
    end: str | None = None


class Meta(Element, frozen=True):
    version_id: str | None = None
    last_updated: str | None = None
    tag: list[Coding] | None = None


class Extension(Element, frozen=True):
    url: str | None = None
    value_codeable_concept: CodeableConcept | None = None


class ReferenceRange(Element, frozen=True):
    low: Quantity | None = None
    high: Quantity | None = None


class Component(Element, frozen=True):
    code: CodeableConcept | None = None
    value_quantity: Quantity | None = None
    # Read only from the adapter's own earlier results (what a write-back update changes): kept as JSON, any type.
    value_codeable_concept: object = None
    value_string: object = None
    value_boolean: object = None


class Repeat(Element, frozen=True):
    bounds_period: Period | None = None


class Timing(Element, frozen=True):
    repeat: Repeat | None = None


class Dosage(Element, frozen=True):
    timing: Timing | None = None


class Ingredient(Element, frozen=True):
    item_codeable_concept: CodeableConcept | None = None


class Resource(Element, frozen=True, tag_field="resourceType", tag=True):
    """Any resource the protocol reads; its class name is its ``resourceType``."""

    # Dates the mappers read, as FHIR paths: one present but no calendar date makes the record a reject.
    DATES: ClassVar[tuple[str, ...]] = ()

    id: str | None = None
    meta: Meta | None = None


class Patient(Resource, frozen=True):
    DATES: ClassVar[tuple[str, ...]] = ("birthDate", "deceasedDateTime")

    birth_date: str | None = None
    gender: str | None = None
    deceased_boolean: bool | None = None
    deceased_date_time: str | None = None


class Observation(Resource, frozen=True):
    DATES: ClassVar[tuple[str, ...]] = ("effectiveDateTime", "effectivePeriod.start", "effectivePeriod.end")

    identifier: list[Identifier] | None = None
    status: str | None = None
    code: CodeableConcept | None = None
    subject: Reference | None = None
    focus: list[Reference] | None = None
    effective_date_time: str | None = None
    effective_instant: str | None = None
    effective_period: Period | None = None
    value_quantity: Quantity | None = None
    value_integer: int | float | None = None
    value_codeable_concept: CodeableConcept | None = None
    # The other value[x] are never read, only noticed: a dataAbsentReason stands only where no value is.
    value_string: object = None
    value_boolean: object = None
    value_range: object = None
    value_ratio: object = None
    value_sampled_data: object = None
    value_time: object = None
    value_date_time: object = None
    value_period: object = None
    data_absent_reason: CodeableConcept | None = None
    reference_range: list[ReferenceRange] | None = None
    component: list[Component] | None = None
    contained: list[dict[str, Any]] | None = None  # JSON edge: read as JSON, by fhir_json.contained

    def has_value(self) -> bool:
        return any(
            v is not None
            for v in (
                self.value_quantity,
                self.value_integer,
                self.value_codeable_concept,
                self.value_string,
                self.value_boolean,
                self.value_range,
                self.value_ratio,
                self.value_sampled_data,
                self.value_time,
                self.value_date_time,
                self.value_period,
            )
        )


class MedicationUse(Resource, frozen=True):
    """What MedicationStatement, MedicationAdministration and MedicationRequest share."""

    DATES: ClassVar[tuple[str, ...]] = ("effectiveDateTime", "effectivePeriod.start", "effectivePeriod.end")

    status: str | None = None
    subject: Reference | None = None
    medication_codeable_concept: CodeableConcept | None = None
    medication_reference: Reference | None = None
    effective_date_time: str | None = None
    effective_period: Period | None = None
    contained: list[dict[str, Any]] | None = None  # JSON edge: read as JSON, by fhir_json.contained

    def stop_reasons(self) -> list[CodeableConcept]:
        return []


class MedicationStatement(MedicationUse, frozen=True):
    status_reason: list[CodeableConcept] | None = None

    def stop_reasons(self) -> list[CodeableConcept]:
        return self.status_reason or []


class MedicationAdministration(MedicationUse, frozen=True):
    status_reason: list[CodeableConcept] | None = None

    def stop_reasons(self) -> list[CodeableConcept]:
        return self.status_reason or []


class MedicationRequest(MedicationUse, frozen=True):
    DATES: ClassVar[tuple[str, ...]] = ("authoredOn",)

    authored_on: str | None = None
    dosage_instruction: list[Dosage] | None = None
    status_reason: CodeableConcept | None = None  # one, where the others have a list

    def stop_reasons(self) -> list[CodeableConcept]:
        return [self.status_reason] if self.status_reason is not None else []


class AdverseEvent(Resource, frozen=True):
    DATES: ClassVar[tuple[str, ...]] = ("date", "detected", "recordedDate")

    actuality: str | None = None
    subject: Reference | None = None
    event: CodeableConcept | None = None
    extension: list[Extension] | None = None
    severity: CodeableConcept | None = None
    date: str | None = None
    detected: str | None = None
    recorded_date: str | None = None


class Condition(Resource, frozen=True):
    DATES: ClassVar[tuple[str, ...]] = ("onsetDateTime", "onsetPeriod.start", "recordedDate")

    code: CodeableConcept | None = None
    subject: Reference | None = None
    clinical_status: CodeableConcept | None = None
    verification_status: CodeableConcept | None = None
    onset_date_time: str | None = None
    onset_period: Period | None = None
    recorded_date: str | None = None


class Consent(Resource, frozen=True):
    DATES: ClassVar[tuple[str, ...]] = ("dateTime",)

    status: str | None = None
    patient: Reference | None = None
    scope: CodeableConcept | None = None
    category: list[CodeableConcept] | None = None
    date_time: str | None = None


class ResearchSubject(Resource, frozen=True):
    DATES: ClassVar[tuple[str, ...]] = ("period.start", "period.end")

    status: str | None = None
    individual: Reference | None = None
    study: Reference | None = None
    period: Period | None = None
    consent: Reference | None = None


class ResearchStudy(Resource, frozen=True):
    identifier: list[Identifier] | None = None  # docs/protocol.md §1: a study may be referenced by identifier


class Medication(Resource, frozen=True):
    code: CodeableConcept | None = None
    ingredient: list[Ingredient] | None = None


class BodyStructure(Resource, frozen=True):
    patient: Reference | None = None
    identifier: list[Identifier] | None = None


class ContainedBodyStructure(Element, frozen=True):
    """A contained BodyStructure: only its identifier, which names the lesion, is read."""

    identifier: list[Identifier] | None = None


class ContainedMedication(Element, frozen=True):
    """A contained Medication: only what says which drug it is."""

    code: CodeableConcept | None = None
    ingredient: list[Ingredient] | None = None


TYPES: dict[str, type[Resource]] = {
    cls.__name__: cls
    for cls in (
        Patient,
        Observation,
        MedicationStatement,
        MedicationAdministration,
        MedicationRequest,
        AdverseEvent,
        Condition,
        Consent,
        ResearchSubject,
        ResearchStudy,
        Medication,
        BodyStructure,
    )
}

# One NDJSON line straight to a typed resource. Any other line (another resourceType, a Bundle, a mistyped
# field, broken JSON, a ResearchSubject whose whole JSON is kept) fails here and is read as a dict instead.
FAST_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(  # Any: the union below (mypy cannot take it)
    Patient
    | Observation
    | MedicationStatement
    | MedicationAdministration
    | MedicationRequest
    | AdverseEvent
    | Condition
    | Consent
    | ResearchStudy
    | Medication
    | BodyStructure
)


def resource_type(resource: Resource) -> str:
    return type(resource).__name__


def as_typed(resource: dict[str, Any], kind: type[Resource]) -> Resource:  # JSON edge: a resource read as a dict
    """A resource's JSON dict as its Struct; raises ``msgspec.ValidationError`` naming the path of a bad field."""
    return msgspec.convert(resource, kind)


def error_path(exc: msgspec.ValidationError) -> tuple[str, str]:
    """``(path, reason)`` of a decoding error: ``Expected `str`, got `int` - at `$.subject.reference```."""
    reason, _, where = str(exc).partition(" - at `$")
    return (where.rstrip("`").lstrip(".") or "(resource)"), reason


@lru_cache(maxsize=256)
def _attributes(path: str) -> tuple[str, ...]:
    return tuple("".join(f"_{c.lower()}" if c.isupper() else c for c in part) for part in path.split("."))


def get_path(resource: Resource, path: str) -> object:
    """The value at a FHIR path of camelCase names (``effectivePeriod.start``), or None."""
    value: object = resource
    for name in _attributes(path):
        value = getattr(value, name, None)
        if value is None:
            return None
    return value

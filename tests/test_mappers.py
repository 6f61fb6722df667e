"""Mappers: units (UCUM and clinical factors), coded answers, tumour sizes, AE grades, medications, odd input."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import msgspec
import pytest
from builders import observation

from fhiradapter.core.fhir_types import FAST_DECODER
from fhiradapter.core.mappers import MapContext, map_resource
from fhiradapter.core.model import AdverseEvent, Exposure, Observed

UCUM = "http://unitsofmeasure.org"


def q(value: Any, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def mapped(ctx: MapContext, res: dict[str, Any], aliases: dict[str, str] | None = None) -> Any:
    """Map a resource as a Bundle entry (a dict) and, where the typed decoder takes it, as an NDJSON line:
    both paths must give the same record and issues."""
    ref = f"{res['resourceType']}/{res.get('id')}"
    record, issues = map_resource(res, ref, ("f", "line 1"), ctx, aliases)
    try:
        typed = FAST_DECODER.decode(json.dumps(res))
    except msgspec.ValidationError:  # another type, or a mistyped field: the reader reads it as a dict
        typed = None
    if typed is not None:
        assert map_resource(typed, ref, ("f", "line 1"), ctx, aliases) == (record, issues)
    return record, [i.code for i in issues]


@pytest.mark.parametrize(
    ("code", "value", "unit", "expected"),
    [
        ("2160-0", 2.0, "mg/dL", 2.0),
        ("14682-9", 176.8, "umol/L", 2.0),
        ("2160-0", 17.68, "mg/L", 1.768),
        ("751-8", 1000, "/uL", 1.0),
        ("751-8", 1.0, "10*3/uL", 1.0),
        ("777-3", 40000, "/mm3", 40.0),
        ("1751-7", 28, "g/L", 2.8),
        ("1975-2", 51.3, "umol/L", 3.0),
        ("1834-1", 100, "ug/L", 100.0),
        ("19176-7", 100, "[IU]/mL", 121.0),
    ],
)
def test_units_are_converted_to_the_canonical_unit(
    ctx: MapContext, code: str, value: float, unit: str, expected: float
) -> None:
    obs, issues = mapped(ctx, observation(code, valueQuantity=q(value, unit)))
    assert isinstance(obs, Observed) and not issues
    assert obs.value == expected
    if unit != ctx.mappings.canonical_unit[obs.concept]:
        assert obs.conversion and unit in obs.conversion


def test_reference_range_is_converted_too(ctx: MapContext) -> None:
    res = observation(
        "14682-9",
        valueQuantity=q(159.12, "umol/L"),
        referenceRange=[{"low": q(53.04, "umol/L"), "high": q(106.08, "umol/L")}],
    )
    obs, _ = mapped(ctx, res)
    assert (obs.value, obs.low, obs.high) == (1.8, 0.6, 1.2)


def test_unknown_unit_is_a_reject_naming_the_unit(ctx: MapContext) -> None:
    obs, issues = mapped(ctx, observation("1834-1", valueQuantity=q(1, "mmHg")))
    assert obs is None and issues == ["bad-unit"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"valueInteger": 2}, 2.0),
        ({"valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA9624-3"}]}}, 2.0),
        ({"valueInteger": 6}, None),
        ({"valueString": "1"}, None),
    ],
)
def test_ecog_integer_or_loinc_answer(ctx: MapContext, value: dict[str, Any], expected: float | None) -> None:
    obs, _ = mapped(ctx, observation("89247-1", **value))
    assert (obs.value if obs else None) == expected


def test_tumour_size_in_cm_with_focus(ctx: MapContext) -> None:
    res = observation(
        "21889-1",
        focus=[{"reference": "BodyStructure/l1"}],
        component=[
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "33728-7"}]},
                "valueQuantity": q(2.5, "cm"),
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "33729-5"}]},
                "valueQuantity": q(1.9, "cm"),
            },
        ],
    )
    obs, issues = mapped(ctx, res)
    assert (obs.focus, obs.longest_mm, obs.perpendicular_mm) == ("BodyStructure/l1", 25.0, 19.0) and not issues


def test_tumour_contained_focus_uses_body_structure_identifier(ctx: MapContext) -> None:
    res = observation(
        "21889-1",
        focus=[{"reference": "#les"}],
        contained=[{"resourceType": "BodyStructure", "id": "les", "identifier": [{"system": "urn:x", "value": "L7"}]}],
        component=[
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "33728-7"}]},
                "valueQuantity": q(12, "mm"),
            }
        ],
    )
    obs, issues = mapped(ctx, res)
    assert obs.focus == "BodyStructure?identifier=urn:x|L7"
    assert issues == ["one-diameter"] and obs.perpendicular_mm is None


@pytest.mark.parametrize("status", ["preliminary", "entered-in-error", "cancelled", "registered"])
def test_only_final_amended_corrected_count(ctx: MapContext, status: str) -> None:
    obs, issues = mapped(ctx, observation("1834-1", status=status, valueQuantity=q(1, "ng/mL")))
    assert obs is None and issues == ["status-not-counted"]


def test_absolute_and_versioned_subject_references_under_a_declared_base(ctx: MapContext) -> None:
    res = observation(
        "1834-1",
        valueQuantity=q(1, "ng/mL"),
        subject={"reference": "https://ehr.example/fhir/Patient/p9/_history/3"},
    )
    declared = MapContext(ctx.mappings, ctx.ucum_factor, ("https://ehr.example/fhir",))
    obs, _ = mapped(declared, res)
    assert obs.patient == "Patient/p9"


@pytest.mark.parametrize(
    ("reference", "why"),
    [
        ("http://other-server/fhir/Patient/x", "another server (http://other-server)"),
        ("https://ehr.example/fhirx/Patient/x", "another server (https://ehr.example)"),
        ("../../Patient/x", "not a Type/id reference"),
        ("Patient/../../etc/passwd", "not a Type/id reference"),
        ("Patient/" + "x" * 65, "the id breaks FHIR R4's rule"),
        ("Patient/a b", "the id breaks FHIR R4's rule"),
    ],
)
def test_foreign_or_path_walking_subject_references_are_rejected(ctx: MapContext, reference: str, why: str) -> None:
    """An absolute reference to a server the user did not declare names another hospital's patient, and a
    path that walks names nothing: neither is taken as the local Patient/x (bad-reference)."""
    declared = MapContext(ctx.mappings, ctx.ucum_factor, ("https://ehr.example/fhir",))
    res = observation("1834-1", valueQuantity=q(1, "ng/mL"), subject={"reference": reference})
    record, issues = map_resource(res, "Observation/o1", ("f", "line 1"), declared, None)
    assert record is None and [i.code for i in issues] == ["bad-reference"]
    assert why in issues[0].message


@pytest.mark.parametrize("rid", ["../../etc/passwd", "a/b", "x" * 65, "a b", "ü"])
def test_an_id_that_breaks_r4s_rule_is_rejected(ctx: MapContext, rid: str) -> None:
    res = {**observation("1834-1", valueQuantity=q(1, "ng/mL")), "id": rid}
    record, issues = mapped(ctx, res)
    assert record is None and issues == ["bad-id"]


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("effectiveDateTime", "2005-02-30", False),
        ("effectiveDateTime", "2003-02-29", False),
        ("effectiveDateTime", "2004-02-29", True),  # a leap year
        ("effectiveDateTime", "2005-02-28T23:00:00+09:00", True),
        ("effectiveDateTime", "2005-13", False),
        ("effectiveDateTime", "2005-04-31T08:00:00Z", False),
    ],
)
def test_an_impossible_date_is_a_bad_date(ctx: MapContext, field: str, value: str, ok: bool) -> None:
    res = {**observation("1834-1", valueQuantity=q(1, "ng/mL")), field: value}
    record, issues = mapped(ctx, res)
    assert (record is not None) is ok and (issues == [] if ok else issues == ["bad-date"])


def test_an_impossible_birth_date_rejects_the_patient_without_echoing_it(ctx: MapContext) -> None:
    record, issues = map_resource(
        {"resourceType": "Patient", "id": "p", "birthDate": "1950-02-30"}, "Patient/p", ("f", "l"), ctx, None
    )
    assert record is None and [i.code for i in issues] == ["bad-date"]
    assert "1950" not in issues[0].message  # a birth date is personal data: the path, not the value


@pytest.mark.parametrize(
    ("quantity", "ok"),
    [
        ({"value": 1e308}, False),
        ({"value": 123456789012345678901234567890}, False),
        ({"value": -1e13}, False),
        ({"value": 1e12}, True),
        ({"value": 5.5}, True),
    ],
)
def test_a_number_no_measurement_can_be_is_a_bad_value(ctx: MapContext, quantity: dict[str, Any], ok: bool) -> None:
    res = observation("1834-1", valueQuantity={**q(1, "ng/mL"), **quantity})
    record, issues = mapped(ctx, res)
    assert (record is not None) is ok and (issues == [] if ok else issues == ["bad-value"])
    ranged = observation("1834-1", valueQuantity=q(1, "ng/mL"), referenceRange=[{"high": {"value": 1e308}}])
    assert mapped(ctx, ranged)[1] == ["bad-value"]


def test_bundle_urn_uuid_subject(ctx: MapContext) -> None:
    res = observation("1834-1", valueQuantity=q(1, "ng/mL"), subject={"reference": "urn:uuid:abc"})
    obs, _ = mapped(ctx, res, {"urn:uuid:abc": "Patient/p3"})
    assert obs.patient == "Patient/p3"


def ae(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "AdverseEvent",
        "id": "a",
        "actuality": "actual",
        "subject": {"reference": "Patient/p"},
        "date": "2004-02-01T22:00:00+09:00",
        "event": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/mdr", "code": "10041349"}]},
        **extra,
    }


def test_ae_grade_extension_wins_over_severity(ctx: MapContext) -> None:
    ext = [
        {
            "url": "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade",
            "valueCodeableConcept": {"coding": [{"system": "x", "code": "C41340"}]},
        }
    ]
    record, _ = mapped(ctx, ae(extension=ext, severity={"coding": [{"code": "mild"}]}))
    assert isinstance(record, AdverseEvent)
    assert (record.term, record.grade, record.grade_source, record.date) == (
        "somnolence",
        3,
        "reported",
        date(2004, 2, 1),
    )


@pytest.mark.parametrize(("severity", "grade"), [("mild", 1), ("moderate", 2), ("severe", 3)])
def test_ae_severity_fallback_is_marked_derived(ctx: MapContext, severity: str, grade: int) -> None:
    record, _ = mapped(ctx, ae(severity={"coding": [{"code": severity}]}))
    assert (record.grade, record.grade_source) == (grade, "derived")


def test_unmapped_ae_term_is_kept_and_reported(ctx: MapContext) -> None:
    record, issues = mapped(ctx, ae(event={"text": "Hiccups"}, severity={"coding": [{"code": "mild"}]}))
    assert record.term is None and record.term_text == "Hiccups" and issues == ["unmapped-term"]


def test_potential_ae_is_not_an_event(ctx: MapContext) -> None:
    record, issues = mapped(ctx, ae(actuality="potential"))
    assert record is None and issues == ["not-actual"]


@pytest.mark.parametrize(
    ("rtype", "extra"),
    [
        (
            "MedicationStatement",
            {
                "medicationCodeableConcept": {
                    "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "10432"}]
                },
                "effectivePeriod": {"start": "2004-01-10", "end": "2004-02-10"},
            },
        ),
        (
            "MedicationAdministration",
            {
                "contained": [
                    {
                        "resourceType": "Medication",
                        "id": "m",
                        "code": {
                            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "10432"}]
                        },
                    }
                ],
                "medicationReference": {"reference": "#m"},
                "effectivePeriod": {"start": "2004-01-10", "end": "2004-02-10"},
            },
        ),
        (
            "MedicationRequest",
            {
                "medicationCodeableConcept": {
                    "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "10432"}]
                },
                "authoredOn": "2004-01-09",
                "dosageInstruction": [
                    {"timing": {"repeat": {"boundsPeriod": {"start": "2004-01-10", "end": "2004-02-10"}}}}
                ],
            },
        ),
    ],
)
def test_medication_exposures_of_three_types(ctx: MapContext, rtype: str, extra: dict[str, Any]) -> None:
    res = {
        "resourceType": rtype,
        "id": "m1",
        "status": "completed",
        "subject": {"reference": "Patient/p"},
        **extra,
    }
    record, issues = mapped(ctx, res)
    assert isinstance(record, Exposure) and not issues
    assert (record.drug, str(record.start), str(record.end)) == ("thalidomide", "2004-01-10", "2004-02-10")


def test_separate_medication_reference_is_left_for_the_pipeline(ctx: MapContext) -> None:
    res = {
        "resourceType": "MedicationStatement",
        "id": "m1",
        "status": "active",
        "subject": {"reference": "Patient/p"},
        "medicationReference": {"reference": "Medication/thal"},
        "effectiveDateTime": "2004-01-10",
    }
    record, _ = mapped(ctx, res)
    assert record.drug is None and record.med_ref == "Medication/thal"


@pytest.mark.parametrize(
    "bad",
    [
        {"code": "not a concept"},
        {"code": {"coding": "nope"}},
        {"subject": ["Patient/p"]},
        {"valueQuantity": {"value": True, "unit": "ng/mL"}},
        {"effectiveDateTime": 20040101},
        {"referenceRange": "high"},
        {"component": [None, 3]},
    ],
)
def test_odd_element_types_never_raise(ctx: MapContext, bad: dict[str, Any]) -> None:
    res = observation("1834-1", valueQuantity=q(5, "ng/mL"))
    res.update(bad)
    record, issues = mapped(ctx, res)  # must not raise
    assert record is None or isinstance(record, Observed)
    assert record is not None or issues  # a record set aside always says why


@pytest.mark.parametrize(("umol", "over"), [(176.8, False), (176.9, True)])
def test_s2_creatinine_boundary_in_umol_per_litre(ctx: MapContext, umol: float, over: bool) -> None:
    """docs/protocol.md §2: 2.0 mg/dL is 176.8 µmol/L exactly; 176.9 is over the limit."""
    obs, _ = mapped(ctx, observation("14682-9", valueQuantity=q(umol, "umol/L")))
    assert (obs.value > 2.0) is over
    assert obs.value >= 2.0

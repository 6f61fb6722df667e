"""Typed decoding (fhir_types): an NDJSON line decoded straight into its Struct reads as its JSON dict does;
a field of the wrong JSON type is an ``invalid-field`` reject naming its path; unknown fields are skipped."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from fhiradapter.core import fhir_types as fhir
from fhiradapter.core.mappers import MapContext, map_resource
from fhiradapter.core.model import Exposure, Observed, StudySubject
from fhiradapter.shell.run.readers import RawRecord, Reject, read_file, read_lines

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def _lines(folder: Path) -> list[bytes]:
    return [line for path in sorted(folder.rglob("*.ndjson")) for line in path.read_bytes().splitlines() if line]


def test_every_fixture_line_reads_the_same_typed_and_as_a_dict(ctx: MapContext) -> None:
    lines = _lines(ROOT / "fixtures")
    typed_count = 0
    for line in lines:
        try:
            typed = fhir.FAST_DECODER.decode(line)
        except msgspec.ValidationError:
            continue
        except msgspec.DecodeError:
            continue  # the bad-inputs fixture's broken lines
        document = orjson.loads(line)
        ref = f"{document['resourceType']}/{document.get('id')}"
        assert map_resource(typed, ref, ("f", "l"), ctx) == map_resource(document, ref, ("f", "l"), ctx), ref
        typed_count += 1
    assert typed_count >= len(lines) // 2  # the paper cohort's records, not a handful


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (third-party FHIR examples) is not beside")
def test_third_party_resources_read_the_same_typed_and_as_a_dict(ctx: MapContext) -> None:
    """Real third-party examples: the Structs accept what FHIR R4 allows in every field they name, and a
    resource read from its NDJSON line maps as the same resource read from a Bundle does."""
    typed_count = 0
    for path in sorted(SHARED_DATA.rglob("*.json")):
        for record in read_file(path):
            if isinstance(record, Reject) or not isinstance(record.resource, dict):
                continue
            document = record.resource
            ref = f"{document['resourceType']}/{document['id']}"
            expected = map_resource(document, ref, record.origin, ctx, record.aliases)
            assert all(i.code != "invalid-field" for i in expected[1]), (path.name, ref, expected[1])
            if document["resourceType"] not in fhir.TYPES or document["resourceType"] == "ResearchSubject":
                continue
            typed = fhir.FAST_DECODER.decode(orjson.dumps(document))
            assert map_resource(typed, ref, record.origin, ctx, record.aliases) == expected, ref
            typed_count += 1
    assert typed_count > 0, "no resource of a protocol type in ../shared/data"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"subject": {"reference": 3}}, "subject.reference"),
        ({"valueQuantity": {"value": "5", "code": "ng/mL"}}, "valueQuantity.value"),
        ({"valueQuantity": {"value": True, "code": "ng/mL"}}, "valueQuantity.value"),
        ({"component": [None]}, "component[0]"),
        ({"code": {"coding": "1834-1"}}, "code.coding"),
    ],
)
def test_a_field_of_the_wrong_json_type_is_an_invalid_field_naming_its_path(
    ctx: MapContext, change: dict[str, Any], path: str
) -> None:
    res = {
        "resourceType": "Observation",
        "id": "o",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1834-1"}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": "2004-01-10",
        "valueQuantity": {"value": 5, "code": "ng/mL"},
        **change,
    }
    record, issues = map_resource(res, "Observation/o", ("f", "l"), ctx)
    assert record is None and [(i.code, i.path) for i in issues] == [("invalid-field", path)]
    assert "5" not in issues[0].message.replace(path, "")  # the path and the types, never the value


def test_unknown_fields_are_skipped_and_known_ones_read(ctx: MapContext) -> None:
    line = orjson.dumps(
        {
            "text": {"status": "generated", "div": "<div>Jane Doe, 1950</div>"},
            "resourceType": "Observation",  # not the first key
            "id": "o",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1834-1", "userSelected": True}]},
            "subject": {"reference": "Patient/p", "display": "Jane Doe"},
            "effectiveDateTime": "2004-01-10T08:00:00+09:00",
            "valueQuantity": {"value": 5, "unit": "ng/mL", "code": "ng/mL", "comparator": "<"},
            "performer": [{"reference": "Practitioner/x"}],
            "interpretation": [{"coding": [{"code": "H"}]}],
        }
    )
    typed = fhir.FAST_DECODER.decode(line)
    assert isinstance(typed, fhir.Observation)
    record, issues = map_resource(typed, "Observation/o", ("f", "l"), ctx)
    assert isinstance(record, Observed) and issues == []
    assert (record.patient, record.date, record.value, record.unit) == ("Patient/p", date(2004, 1, 10), 5.0, "ng/mL")


def test_the_reader_decodes_lines_typed_and_falls_back_to_a_dict(tmp_path: Path) -> None:
    good = {"resourceType": "Patient", "id": "p", "birthDate": "1950-01-01"}
    mistyped = {"resourceType": "Patient", "id": "q", "birthDate": 1950}
    other = {"resourceType": "Encounter", "id": "e"}
    subject = {"resourceType": "ResearchSubject", "id": "s", "individual": {"reference": "Patient/p"}}
    lines = [orjson.dumps(x) for x in (good, mistyped, other, subject)] + [b"{broken"]
    records = list(read_lines(lines, "f.ndjson"))
    assert isinstance(records[0], RawRecord) and isinstance(records[0].resource, fhir.Patient)
    assert [type(r.resource) for r in records[1:4] if isinstance(r, RawRecord)] == [dict, dict, dict]
    assert isinstance(records[4], Reject) and records[4].code == "malformed-json"


def test_a_medication_request_states_its_one_stop_reason(ctx: MapContext) -> None:
    """docs/protocol.md §7: a stated stop reason wins; MedicationRequest has one statusReason, not a list."""
    res = {
        "resourceType": "MedicationRequest",
        "id": "r",
        "status": "stopped",
        "statusReason": {"coding": [{"system": "http://snomed.info/sct", "code": "224187001"}]},
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "10432"}]
        },
        "subject": {"reference": "Patient/p"},
        "authoredOn": "2004-01-10",
    }
    typed = fhir.FAST_DECODER.decode(orjson.dumps(res))
    record, _ = map_resource(typed, "MedicationRequest/r", ("f", "l"), ctx)
    assert isinstance(record, Exposure) and record.stop_reason == "other"
    assert map_resource(res, "MedicationRequest/r", ("f", "l"), ctx) == (record, _)


def test_a_research_subject_keeps_its_whole_json_for_write_back(ctx: MapContext) -> None:
    res = {
        "resourceType": "ResearchSubject",
        "id": "s",
        "status": "on-study",
        "individual": {"reference": "urn:uuid:1"},
        "study": {"reference": "ResearchStudy/t"},
        "assignedArm": "thalidomide",
    }
    record, issues = map_resource(res, "ResearchSubject/s", ("f", "l"), ctx, {"urn:uuid:1": "Patient/p"})
    assert isinstance(record, StudySubject) and issues == []
    assert record.raw == {**res, "individual": {"reference": "Patient/p"}}


def test_a_line_nested_too_deeply_or_not_utf8_is_reported_and_the_next_line_read() -> None:
    deep = b'{"resourceType":"Patient","id":"p1","x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    deeper = b'{"resourceType":"Patient","id":"p2","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    bad_text = b'{"resourceType":"Patient","id":"p3","name":[{"text":"\xff"}]}'
    good = b'{"resourceType":"Patient","id":"p4"}'
    records = list(read_lines([deep, deeper, bad_text, good], "f.ndjson"))
    assert [(r.code, r.locator) for r in records if isinstance(r, Reject)] == [
        ("malformed-json", "line 2"),
        ("malformed-json", "line 3"),
    ]
    kept = [r for r in records if isinstance(r, RawRecord)]
    assert [r.origin[1] for r in kept] == ["line 1", "line 4"]


def test_a_contained_resource_is_read_for_what_the_mapper_needs_only(ctx: MapContext) -> None:
    """A contained BodyStructure with another field of the wrong type still names its lesion (a lesion key
    that changed from one assessment to the next would look like a new lesion: progression)."""
    res = {
        "resourceType": "Observation",
        "id": "ts",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "21889-1"}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": "2004-01-10",
        "focus": [{"reference": "#bs1"}],
        "contained": [
            {
                "resourceType": "BodyStructure",
                "id": "bs1",
                "patient": "Patient/p",  # a string where R4 has a Reference: not read here
                "identifier": [{"system": "urn:lesions", "value": "liver-1"}],
            }
        ],
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "33728-7"}]},
                "valueQuantity": {"value": 30, "code": "mm"},
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "33729-5"}]},
                "valueQuantity": {"value": 20, "code": "mm"},
            },
        ],
    }
    record, issues = map_resource(res, "Observation/ts", ("f", "l"), ctx)
    assert isinstance(record, Observed) and issues == []
    assert record.focus == "BodyStructure?identifier=urn:lesions|liver-1"

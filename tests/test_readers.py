"""Readers and deduplication: odd-but-valid input (Bundles of every type, urn:uuid, versions) reads right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from builders import AS_OF

from fhiradapter.shell.mappings_io import load_mappings
from fhiradapter.shell.pipeline import run_evaluate
from fhiradapter.shell.readers import RawRecord, Reject, read_file


def patient(pid: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": "1960-01-01", **extra}


def afp(oid: str, value: float, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1834-1"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2004-01-05",
        "valueQuantity": {"value": value, "unit": "ng/mL", "system": "http://unitsofmeasure.org", "code": "ng/mL"},
        **extra,
    }


def write_ndjson(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    return path


@pytest.mark.parametrize("bundle_type", ["collection", "searchset", "transaction", "batch", "transaction-response"])
def test_bundle_entries_of_any_type(tmp_path: Path, bundle_type: str) -> None:
    doc = {
        "resourceType": "Bundle",
        "type": bundle_type,
        "entry": [
            {"fullUrl": "Patient/p1", "resource": patient("p1"), "search": {"mode": "match"}},
            {"resource": afp("o1", 5)},
        ],
    }
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    records = list(read_file(path))
    assert [r.origin[1] for r in records if isinstance(r, RawRecord)] == ["entry 0", "entry 1"]


def test_ndjson_line_with_a_bundle_is_expanded(tmp_path: Path) -> None:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": patient("p1")}]}
    path = write_ndjson(tmp_path / "x.ndjson", [patient("p0"), bundle])
    locators = [r.origin[1] for r in read_file(path) if isinstance(r, RawRecord)]
    assert locators == ["line 1", "entry 0 (Bundle in line 2)"]


def test_single_resource_json_and_array(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_text(json.dumps(patient("p1")))
    (tmp_path / "many.json").write_text(json.dumps([patient("p2"), 7]))
    one = list(read_file(tmp_path / "one.json"))
    many = list(read_file(tmp_path / "many.json"))
    assert isinstance(one[0], RawRecord) and one[0].origin[1] == "file"
    assert isinstance(many[0], RawRecord) and isinstance(many[1], Reject) and many[1].locator == "item 1"


STUDY_SUBJECT = {
    "resourceType": "ResearchSubject",
    "id": "rs-p1",
    "status": "on-study",
    "study": {"reference": "ResearchStudy/thal-hcc-pilot"},
    "individual": {"reference": "Patient/p1"},
}


def evaluate(tmp_path: Path, resources: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate ``resources``, with p1 a subject of the study (its ResearchSubject on the last line)."""
    src = tmp_path / "in"
    src.mkdir()
    write_ndjson(src / "data.ndjson", [*resources, STUDY_SUBJECT])
    mappings, identity = load_mappings()
    run_evaluate([src], tmp_path / "out", AS_OF, mappings, identity)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.ndjson").read_text().splitlines()]
    return results, rejects


@pytest.mark.parametrize(
    ("first", "second", "kept_line"),
    [
        ({"meta": {"versionId": "3"}}, {"meta": {"versionId": "2"}}, "line 2"),  # highest versionId wins
        ({"meta": {"versionId": "2"}}, {"meta": {"versionId": "10"}}, "line 3"),  # numerically, not as text
        (
            {"meta": {"lastUpdated": "2004-02-01T00:00:00Z"}},
            {"meta": {"lastUpdated": "2004-01-01T00:00:00Z"}},
            "line 2",
        ),
        ({}, {}, "line 3"),  # no version information: the last one seen wins
    ],
)
def test_duplicate_resource_counts_once(
    tmp_path: Path, first: dict[str, Any], second: dict[str, Any], kept_line: str
) -> None:
    _results, rejects = evaluate(tmp_path, [patient("p1"), afp("o1", 100, **first), afp("o1", 200, **second)])
    superseded = [r for r in rejects if r["code"] == "duplicate-superseded"]
    assert len(superseded) == 1
    assert superseded[0]["locator"] != kept_line and superseded[0]["id"] == "o1"


def test_newest_version_entered_in_error_withdraws_the_resource(tmp_path: Path) -> None:
    _results, rejects = evaluate(
        tmp_path,
        [
            patient("p1"),
            afp("o1", 100, meta={"versionId": "1"}),
            afp("o1", 100, meta={"versionId": "2"}, status="entered-in-error"),
        ],
    )
    codes = sorted(r["code"] for r in rejects)
    assert codes == ["duplicate-superseded", "status-not-counted"]


@pytest.mark.parametrize("where", [".", "out", "out/deeper"])
def test_an_output_folder_inside_an_input_is_refused(tmp_path: Path, where: str) -> None:
    """The next run would read the outputs as input (issue: --out equal to the input read nothing, exit 0)."""
    from fhiradapter.errors import ConfigError

    src = tmp_path / "data"
    src.mkdir()
    write_ndjson(src / "p.ndjson", [patient("p1")])
    mappings, identity = load_mappings()
    with pytest.raises(ConfigError, match="lies inside the input folder"):
        run_evaluate([src], src / where, AS_OF, mappings, identity, report=False)
    assert sorted(p.name for p in src.rglob("*")) == ["p.ndjson"]  # nothing written


@pytest.mark.parametrize(
    ("first", "second", "kept_line", "rule"),
    [
        (
            {"meta": {"versionId": "3"}},
            {"meta": {"versionId": "2"}},
            "line 2",
            "kept: the higher meta.versionId (3), ",
        ),
        (
            {"meta": {"lastUpdated": "2005-02-01T00:30:00+02:00"}},  # 2005-01-31T22:30Z: the older moment
            {"meta": {"lastUpdated": "2005-01-31T23:00:00Z"}},
            "line 3",
            "kept: the later meta.lastUpdated (2005-01-31T23:00:00Z UTC), ",
        ),
        (
            {"meta": {"lastUpdated": "2005-01-31T23:00:00Z"}},
            {"meta": {"lastUpdated": "2005-02-01T00:30:00+02:00"}},
            "line 2",
            "kept: the later meta.lastUpdated (2005-01-31T23:00:00Z UTC), ",
        ),
        ({}, {}, "line 3", "kept: the copy seen last, as neither copy's meta tells which is newer, "),
    ],
)
def test_duplicates_are_ordered_by_instants_and_the_reject_says_which_rule_decided(
    tmp_path: Path, first: dict[str, Any], second: dict[str, Any], kept_line: str, rule: str
) -> None:
    """PROTOCOL.md §4: the newest copy by meta.versionId, then meta.lastUpdated as a moment (not as text)."""
    _results, rejects = evaluate(tmp_path, [patient("p1"), afp("o1", 100, **first), afp("o1", 200, **second)])
    (superseded,) = [r for r in rejects if r["code"] == "duplicate-superseded"]
    assert superseded["locator"] != kept_line
    assert rule in superseded["reason"] and superseded["reason"].endswith(f"data.ndjson {kept_line})")

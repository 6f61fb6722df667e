"""Readers and deduplication: odd-but-valid input (Bundles of every type, urn:uuid, versions) reads right."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from builders import AS_OF

from fhiradapter.core.results import TimedRunSummary
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.pipeline import run_evaluate
from fhiradapter.shell.run.readers import RawRecord, Reject, read_file


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
    run_evaluate(
        RunRequest(inputs=(src,), out=tmp_path / "out", as_of=AS_OF, mappings=mappings, mappings_identity=identity)
    )
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
        # Opaque versionIds (a server's etags) do not order: the last one seen wins, whatever they spell.
        ({"meta": {"versionId": "zz"}}, {"meta": {"versionId": "aa"}}, "line 3"),
        ({"meta": {"versionId": "aa"}}, {"meta": {"versionId": "zz"}}, "line 3"),
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
        run_evaluate(
            RunRequest(
                inputs=(src,), out=src / where, as_of=AS_OF, mappings=mappings, mappings_identity=identity, report=False
            )
        )
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
    """docs/protocol.md §4: the newest copy by meta.versionId, then meta.lastUpdated as a moment (not as text)."""
    _results, rejects = evaluate(tmp_path, [patient("p1"), afp("o1", 100, **first), afp("o1", 200, **second)])
    (superseded,) = [r for r in rejects if r["code"] == "duplicate-superseded"]
    assert superseded["locator"] != kept_line
    assert rule in superseded["reason"] and superseded["reason"].endswith(f"data.ndjson {kept_line})")


# ---------------------------------------------------------------------------------------------- files and formats

STUDY_LINES = [patient("p1"), afp("o1", 100), STUDY_SUBJECT]


def ndjson_bytes(resources: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in resources)


def run_folder(tmp_path: Path, files: dict[str, bytes]) -> tuple[TimedRunSummary, list[dict[str, Any]]]:
    src = tmp_path / "in"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    mappings, identity = load_mappings()
    summary = run_evaluate(
        RunRequest(
            inputs=(src,),
            out=tmp_path / "out",
            as_of=AS_OF,
            mappings=mappings,
            mappings_identity=identity,
            report=False,
        )
    )
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.ndjson").read_text().splitlines()]
    return summary, rejects


@pytest.mark.parametrize(
    ("name", "pack"),
    [
        ("X.NDJSON", lambda b: b),
        ("x.Ndjson.GZ", lambda b: __import__("gzip").compress(b)),
        ("x.ndjson.bz2", lambda b: __import__("bz2").compress(b)),
        ("x.ndjson.xz", lambda b: __import__("lzma").compress(b)),
        ("x.ndjson.zst", lambda b: __import__("zstandard").ZstdCompressor().compress(b)),
        ("x.jsonl", lambda b: b),
        ("x.json.gz", lambda b: __import__("gzip").compress(b)),  # NDJSON in a .json.gz: read as NDJSON
        ("bom.ndjson", lambda b: b"\xef\xbb\xbf" + b),  # a byte order mark at the start
    ],
)
def test_every_common_name_and_compression_is_read(tmp_path: Path, name: str, pack: Callable[[bytes], bytes]) -> None:
    summary, rejects = run_folder(tmp_path, {name: pack(ndjson_bytes(STUDY_LINES))})
    assert summary.records_read == 3 and summary.records_used == 3, rejects
    assert summary.patients == 1


def test_a_bundle_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in STUDY_LINES]}
    summary, rejects = run_folder(tmp_path, {"b.json": b"\xef\xbb\xbf" + orjson.dumps(bundle)})
    assert summary.records_used == 3, rejects


def test_files_not_read_are_listed_with_the_reason(tmp_path: Path) -> None:
    summary, rejects = run_folder(
        tmp_path,
        {"x.ndjson": ndjson_bytes(STUDY_LINES), "notes.txt": b"hello", "labs.csv": b"a,b\n", "y.ndjson.bz2x": b"?"},
    )
    not_read = {Path(r["file"]).name: r["reason"] for r in rejects if r["code"] == "not-read"}
    assert set(not_read) == {"notes.txt", "labs.csv", "y.ndjson.bz2x"}
    assert "suffix .txt" in not_read["notes.txt"] and "read are .ndjson, .jsonl and .json" in not_read["notes.txt"]
    # Files, not records (issue 28): counted apart, never as records read or rejected.
    assert sorted(Path(f).name for f in summary.files_not_read) == ["labs.csv", "notes.txt", "y.ndjson.bz2x"]
    assert summary.records_read == len(STUDY_LINES) and "(file not read)" not in summary.by_type
    assert summary.records_used + summary.records_rejected == summary.records_read


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "zst"])
def test_a_compressed_file_that_breaks_off_says_how_much_was_read(tmp_path: Path, kind: str) -> None:
    import bz2
    import gzip
    import lzma

    import zstandard

    count = 40_000 if kind == "bz2" else 2_000  # bz2 decompresses by blocks of 900 kB: more than one
    lines = [patient(f"p{i}", name=[{"text": os.urandom(24).hex()}]) for i in range(count)]
    zstd = zstandard.ZstdCompressor().compress  # zstandard's own reader ends quietly at such a cut
    packers: dict[str, Callable[[bytes], bytes]] = {
        "gz": gzip.compress,
        "bz2": bz2.compress,
        "xz": lzma.compress,
        "zst": zstd,
    }
    packed = packers[kind](ndjson_bytes(lines))
    summary, rejects = run_folder(tmp_path, {f"x.ndjson.{kind}": packed[: len(packed) // 2]})
    (broken,) = [r for r in rejects if r["code"] == "unreadable"]
    read = int(broken["reason"].split("the file breaks off: ", 1)[1].split(" ", 1)[0])
    assert 0 < read < count and "read before the break, the rest of the file is lost" in broken["reason"]
    assert summary.records_read == read + 1  # the records read, and the break


def test_a_large_bundle_is_streamed_with_the_results_of_the_same_data_as_ndjson(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The paper cohort as one single-line Bundle (references by urn:uuid) read entry by entry."""
    from builders import ROOT

    paper = ROOT / "fixtures" / "paper-cohort" / "input"
    mappings, identity = load_mappings()
    run_evaluate(
        RunRequest(
            inputs=(paper,),
            out=tmp_path / "ndjson",
            as_of=AS_OF,
            mappings=mappings,
            mappings_identity=identity,
            report=False,
        )
    )
    resources = [json.loads(line) for f in sorted(paper.glob("*.ndjson")) for line in f.read_text().splitlines()]
    urls = {
        f"{r['resourceType']}/{r['id']}": f"urn:uuid:00000000-0000-4000-8000-{n:012d}" for n, r in enumerate(resources)
    }
    text = json.dumps(resources)
    for ref, urn in urls.items():
        text = text.replace(f'"reference": "{ref}"', f'"reference": "{urn}"')
    entries = [{"fullUrl": urls[f"{r['resourceType']}/{r['id']}"], "resource": r} for r in json.loads(text)]
    src = tmp_path / "bundle"
    src.mkdir()
    (src / "cohort.json").write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}))
    (src / "screening.json").write_bytes((paper / "screening-candidates.json").read_bytes())
    monkeypatch.setattr("fhiradapter.shell.run.readers.STREAM_BYTES", 1024)  # every Bundle file here is streamed
    run_evaluate(
        RunRequest(
            inputs=(src,),
            out=tmp_path / "streamed",
            as_of=AS_OF,
            mappings=mappings,
            mappings_identity=identity,
            report=False,
        )
    )
    a = json.loads((tmp_path / "ndjson" / "results.json").read_text())
    b = json.loads((tmp_path / "streamed" / "results.json").read_text())
    assert a["subjects"] == b["subjects"] and a["cohort"] == b["cohort"]


def test_reading_a_large_bundle_holds_one_entry_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory while reading a 10 MB single-line Bundle: under the file's own size (held whole, its parsed
    objects take several times the file). benchmarks/bench_bundle_memory.py measures whole runs."""
    import tracemalloc

    monkeypatch.setattr("fhiradapter.shell.run.readers.STREAM_BYTES", 1 << 20)
    entries = [
        {
            "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
            "resource": afp(f"o{n}", n, note=[{"text": "x" * 120}]),
        }
        for n in range(20_000)
    ]
    path = tmp_path / "big.json"
    path.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}))
    del entries
    size = path.stat().st_size
    assert size > 1 << 20
    tracemalloc.start()
    try:
        count = sum(1 for r in read_file(path) if isinstance(r, RawRecord))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Held whole, the file's bytes alone are its size, and the parsed entries several times more.
    assert count == 20_000 and peak < size, (peak, size)


def test_a_large_bundle_that_breaks_off_is_one_reject_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fhiradapter.shell.run.readers.STREAM_BYTES", 1024)
    entries = [{"resource": r} for r in STUDY_LINES] + [{"resource": afp(f"x{n}", n)} for n in range(200)]
    blob = orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})
    _summary, rejects = run_folder(tmp_path, {"b.json": blob[: len(blob) - 300]})
    (broken,) = [r for r in rejects if r["code"] == "unreadable"]
    assert "the file breaks off" in broken["reason"] and "IncompleteJSONError" in broken["reason"]
    assert '"resourceType"' not in broken["reason"]  # the file's bytes are not quoted


def test_a_corrupt_zstd_file_is_one_reject_not_a_crash(tmp_path: Path) -> None:
    import zstandard

    packed = bytearray(zstandard.ZstdCompressor().compress(ndjson_bytes(STUDY_LINES * 50)))
    packed[20:40] = b"\x00" * 20
    _summary, rejects = run_folder(tmp_path, {"x.ndjson.zst": bytes(packed)})
    assert [r["code"] for r in rejects if r["code"] == "unreadable"] == ["unreadable"]

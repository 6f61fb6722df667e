"""One malformed field never stops a run: any field of a real record given another JSON type, or removed.

Property test over one treated patient of the paper cohort (every resource type the protocol reads): the run
completes, and every input record is used or in rejects.ndjson: a wrong JSON type is caught where the typed
decoding reads it (an invalid-field reject naming its path), never deeper in the rules.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from builders import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.local_engine import LocalEngine
from fhiradapter.shell.run.pipeline import run_evaluate

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
PATIENT = b'"Patient/thal-01"'
DELETE = object()


def _slice() -> list[dict[str, Any]]:
    """Patient thal-01's resources, the study and its Medications, as they appear in the fixtures."""
    out = []
    for path in sorted(PAPER.glob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            res = orjson.loads(line)
            if (
                PATIENT in line
                or res["resourceType"] in ("ResearchStudy", "Medication")
                or (res["resourceType"] == "Patient" and res["id"] == "thal-01")
            ):
                out.append(res)
    return out


SLICE = _slice()
MAPPINGS, IDENTITY = load_mappings()
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "2005-01-01", "Patient/thal-01", "mg/dL", "1834-1", "final"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _change(res: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    parent: Any = res
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


def test_the_slice_covers_every_type_the_protocol_reads() -> None:
    types = {r["resourceType"] for r in SLICE}
    assert {"Patient", "Observation", "MedicationStatement", "AdverseEvent", "Condition", "Consent"} <= types
    assert {"ResearchSubject", "ResearchStudy"} <= types


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_field_of_any_type_is_used_or_rejected_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    records = copy.deepcopy(SLICE)
    target = records[data.draw(st.integers(0, len(records) - 1), label="record")]
    path = data.draw(st.sampled_from(list(_paths(target))), label="path")
    _change(target, path, data.draw(st.just(DELETE) | JSON_VALUES, label="value"))
    folder: Path = tmp_path_factory.mktemp("fuzz")
    (folder / "in").mkdir()
    (folder / "in" / "all.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    summary = run_evaluate(
        RunRequest(
            inputs=(folder / "in",),
            out=folder / "out",
            as_of=date(2005, 3, 31),
            mappings=MAPPINGS,
            mappings_identity=IDENTITY,
            engine=LocalEngine(1),
            report=False,
        )
    )
    assert summary.records_read == len(records)
    assert summary.records_used + summary.records_rejected == len(records)
    rejects = (folder / "out" / "rejects.ndjson").read_bytes().splitlines()
    assert len(rejects) == summary.records_rejected

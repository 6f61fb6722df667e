"""Builders of small domain records and FHIR snippets for the tests, and shared paths."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

from fhiradapter.core.dates import PartialDate, partial_date
from fhiradapter.core.model import Observed

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
AS_OF = date(2005, 3, 31)


def lab(
    concept: str,
    day: str,
    value: float | None,
    *,
    unit: str = "",
    low: float | None = None,
    high: float | None = None,
    ref: str | None = None,
    coded: str | None = None,
) -> Observed:
    return Observed(
        ref or f"Observation/{concept}-{day}",
        "Patient/p",
        concept,
        date.fromisoformat(day),
        value,
        unit,
        coded,
        low,
        high,
        None,
        None,
        None,
        "final",
        None,
        ("test", "line 1"),
    )


def lesion(day: str, focus: str, d1: float | None, d2: float | None) -> Observed:
    return Observed(
        f"Observation/ts-{day}-{focus}",
        "Patient/p",
        "tumor_size",
        date.fromisoformat(day),
        None,
        "mm",
        None,
        None,
        None,
        focus,
        d1,
        d2,
        "final",
        None,
        ("test", "line 1"),
    )


def observation(code: str, system: str = "http://loinc.org", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": "2004-01-05",
        **extra,
    }


def raise_thal03_afp(folder: Path) -> None:
    """In a copy of the paper cohort: patient 3's day-57 AFP rises to 2100 ng/mL (+30 %), so that assessment,
    and with it the best response, becomes PD."""
    path = folder / "Observation.ndjson"
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        res = json.loads(line)
        if res["id"] == "thal-03-afp-a1":
            res["valueQuantity"]["value"] = 2100
            lines[i] = json.dumps(res)
    path.write_text("\n".join(lines) + "\n")


def heart_rates(patient: str, count: int) -> list[dict[str, Any]]:
    """``count`` heart-rate Observations of ``patient`` (an unmapped code, as a hospital's vital signs are)."""
    return [
        {
            "resourceType": "Observation",
            "id": f"{patient}-hr-{n}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": f"2004-{1 + n % 12:02d}-{1 + n % 28:02d}",
            "valueQuantity": {"value": 60 + n % 40, "unit": "/min", "system": "http://unitsofmeasure.org"},
        }
        for n in range(count)
    ]


def is_result(resource: dict[str, Any]) -> bool:
    """One of the adapter's result Observations (it carries the adapter's identifier)."""
    from fhiradapter.core.writeback import IDENTIFIER_SYSTEM

    return any(i.get("system") == IDENTIFIER_SYSTEM for i in resource.get("identifier", []))


def partial(text: str | None) -> PartialDate | None:
    """A (possibly partial) FHIR date as the mappers give it: ``"2004-07"`` -> ``PartialDate(2004, 7)``."""
    return partial_date(text) if text is not None else None


# Four eyes (docs/review-and-approve.md): tests that push approve first, as a person would; tests that sync
# run under a standing rule that lets every change out.
TEST_APPROVER = "Test Runner"
APPROVE_ALL = (
    '[standing_rule]\nsigned_by = "Test Runner"\nrole = "test suite"\nsigned_on = "2026-12-07"\nallow = ["*:*"]\n'
)


def approve(folder: Path, *extra: str) -> str:
    """``fhiradapter approve FOLDER --by "Test Runner" --yes``: the write-back an evaluate wrote there, approved.
    Returns what approve showed."""
    from click.testing import CliRunner

    from fhiradapter.cli import main

    result = CliRunner().invoke(main, ["approve", str(folder), "--by", TEST_APPROVER, "--yes", *extra])
    assert result.exit_code == 0, result.output
    return result.output


def approve_bundle(path: Path) -> Path:
    """Approve a hand-made Bundle file for push: put it at ``writeback.json`` with an (empty, if none) plan beside
    it, and record an approval of both. Returns the writeback.json path."""
    from fhiradapter.core.approval import Approval
    from fhiradapter.shell.server.approvals import digests, write_approval

    target = path.parent / "writeback.json"
    if path != target:
        target.write_bytes(path.read_bytes())
    plan = path.parent / "writeback-plan.ndjson"
    if not plan.exists():
        plan.write_bytes(b"")
    wb, pl = digests(path.parent)
    write_approval(
        path.parent,
        Approval(approved_by=TEST_APPROVER, role="test suite", approved_at="2026-12-07T00:00:00+00:00",
                 writeback_sha256=wb, plan_sha256=pl),
    )  # fmt: skip
    return target


def trusting_mappings(folder: Path) -> Path:
    """A copy of the shipped mappings with a standing rule that lets every change out (for sync tests)."""
    import shutil

    from fhiradapter.shell.common.mappings_io import default_mappings_dir

    shutil.copytree(default_mappings_dir(), folder, dirs_exist_ok=True)
    (folder / "approval.toml").write_text(APPROVE_ALL)
    return folder


def standing_rule_all() -> Any:
    from fhiradapter.core.approval import StandingRule

    return StandingRule(signed_by=TEST_APPROVER, role="test suite", signed_on="2026-12-07", allow=("*:*",))

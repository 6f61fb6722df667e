"""Real third-party FHIR examples (HL7 AE Clinical Research IG, in ../shared/data) read without a crash.

Read in place; skipped with a reason where ../shared/data is absent.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from builders import SHARED_DATA

from fhiradapter.shell.mappings_io import load_mappings
from fhiradapter.shell.pipeline import run_evaluate

EXAMPLES = SHARED_DATA / "hl7-ae-research-examples"
AS_OF = date(2026, 1, 1)  # the IG examples are dated up to 2025
pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} is not present (shared/data)")


def test_hl7_ae_examples_are_read_and_every_file_accounted_for(tmp_path: Path) -> None:
    mappings, identity = load_mappings()
    summary = run_evaluate([EXAMPLES], tmp_path, AS_OF, mappings, identity)
    files = sorted(EXAMPLES.glob("*.json"))
    assert summary["files"] == len(files)
    assert summary["records_read"] == len(files)  # one resource per file
    rejects = (tmp_path / "rejects.ndjson").read_text().splitlines()
    assert summary["records_rejected"] == len(rejects)
    assert summary["records_used"] + summary["records_rejected"] == summary["records_read"]
    results = json.loads((tmp_path / "results.json").read_text())
    patients = {s["patient"] for s in results["subjects"]}
    assert "Patient/patient-example-kaitlyn-b" in patients
    # Their AdverseEvents carry the backport ae-grade extension: the graded ones are used, not rejected.
    rejected_ids = {json.loads(line)["id"] for line in rejects}
    assert {"adverse-event-compass-ex1", "adverse-event-compass-ex2"}.isdisjoint(rejected_ids)


def test_hl7_research_subject_and_consent_display(tmp_path: Path) -> None:
    mappings, identity = load_mappings()
    run_evaluate([EXAMPLES], tmp_path, AS_OF, mappings, identity)
    results = json.loads((tmp_path / "results.json").read_text())
    kaitlyn = next(s for s in results["subjects"] if s["patient"] == "Patient/patient-example-kaitlyn-b")
    assert kaitlyn["research_subject"] is not None
    consent = next(c for c in kaitlyn["eligibility"]["criteria"] if c["id"] == "consent")
    assert consent["status"] == "met"  # ResearchSubject.consent is set (display only)

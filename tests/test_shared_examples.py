"""Real third-party FHIR examples (HL7 AE Clinical Research IG, in ../shared/data) read without a crash.

Read in place; skipped with a reason where ../shared/data is absent.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from builders import SHARED_DATA, is_result, standing_rule_all

from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.pipeline import run_evaluate

EXAMPLES = SHARED_DATA / "hl7-ae-research-examples"
AS_OF = date(2026, 1, 1)  # the IG examples are dated up to 2025
COMPASS = "clinical-trial-example-compass"  # the IG's study with Kaitlyn's ResearchSubjects
pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} is not present (shared/data)")


def test_hl7_ae_examples_are_read_and_every_file_accounted_for(tmp_path: Path) -> None:
    mappings, identity = load_mappings()
    summary = run_evaluate(
        RunRequest(
            inputs=(EXAMPLES,), out=tmp_path, as_of=AS_OF, mappings=mappings, mappings_identity=identity, study=COMPASS
        )
    )
    files = sorted(EXAMPLES.glob("*.json"))
    assert summary.files == len(files)
    assert summary.records_read == len(files)  # one resource per file
    rejects = (tmp_path / "rejects.ndjson").read_text().splitlines()
    assert summary.records_rejected == len(rejects)
    assert summary.records_used + summary.records_rejected == summary.records_read
    results = json.loads((tmp_path / "results.json").read_text())
    patients = {s["patient"] for s in results["subjects"]}
    assert "Patient/patient-example-kaitlyn-b" in patients
    # Their AdverseEvents carry the backport ae-grade extension: the graded ones are used, not rejected.
    rejected_ids = {json.loads(line)["id"] for line in rejects}
    assert {"adverse-event-compass-ex1", "adverse-event-compass-ex2"}.isdisjoint(rejected_ids)
    # The other study's subject is not read as this study's, and her patient is not evaluated.
    reasons = {json.loads(line)["id"]: json.loads(line)["code"] for line in rejects}
    assert reasons["clinical-trial-acme-subject"] == "other-study" and reasons["patient-slp"] == "not-in-study"


def test_hl7_research_subject_and_consent_display(tmp_path: Path) -> None:
    mappings, identity = load_mappings()
    run_evaluate(
        RunRequest(
            inputs=(EXAMPLES,), out=tmp_path, as_of=AS_OF, mappings=mappings, mappings_identity=identity, study=COMPASS
        )
    )
    results = json.loads((tmp_path / "results.json").read_text())
    kaitlyn = next(s for s in results["subjects"] if s["patient"] == "Patient/patient-example-kaitlyn-b")
    assert kaitlyn["research_subject"] is not None
    consent = next(c for c in kaitlyn["eligibility"]["criteria"] if c["id"] == "consent")
    assert consent["status"] == "met"  # ResearchSubject.consent is set (display only)


@pytest.mark.parametrize("server", ["sekmet", "medplum"])
def test_hl7_studies_synced_from_a_server_evaluate_as_the_files_and_the_results_are_accepted(
    server: str, tmp_path: Path
) -> None:
    """Every IG example on a real server; each study with subjects synced from it.

    Per patient, the same results as evaluating the files; the written results accepted (Medplum validates
    each write, required bindings included), each once; a second sync writes nothing.
    """
    import httpx
    from fhir_server import SERVERS, server_resources

    from fhiradapter.core.writeback import IDENTIFIER_SYSTEM, RUN_TAG_SYSTEM
    from fhiradapter.shell.server.fhir_client import FhirClient
    from fhiradapter.shell.server.store import SyncStore
    from fhiradapter.shell.server.sync import SyncOptions, run_sync

    mappings, identity = load_mappings()
    examples = [json.loads(f.read_text()) for f in sorted(EXAMPLES.glob("*.json"))]
    studies: dict[str, set[str]] = {}  # each study's patients, from the example ResearchSubjects
    for r in examples:
        if r["resourceType"] == "ResearchSubject":
            study = r["study"]["reference"].removeprefix("ResearchStudy/")
            studies.setdefault(study, set()).add(r["individual"]["reference"])
    assert len(studies) >= 2
    # Medplum in batches (it refuses larger conditional transactions); sekmet entry by entry, the path for a
    # server that offers neither transaction nor batch.
    write = {"mode": "batch", "chunk": 30} if server == "medplum" else {"mode": "single"}
    store = SyncStore(data_dir=tmp_path / "data")
    try:
        with SERVERS[server](tmp_path) as base:
            for r in examples:
                if r["resourceType"] not in ("StructureDefinition", "ValueSet"):  # conformance, not data
                    body = {k: v for k, v in r.items() if k != "meta"}
                    url = f"{base}/{r['resourceType']}/{r['id']}"
                    response = httpx.put(url, json=body, headers={"Content-Type": "application/fhir+json"}, timeout=30)
                    assert response.status_code in (200, 201), (r["id"], response.text[:300])
            updated: set[str] = set()  # the ResearchSubjects the runs updated
            for study, patients in sorted(studies.items()):
                files = tmp_path / f"files-{study}"
                run_evaluate(
                    RunRequest(
                        inputs=(EXAMPLES,),
                        out=files,
                        as_of=AS_OF,
                        mappings=mappings,
                        mappings_identity=identity,
                        report=False,
                        study=study,
                    )
                )
                from_files = {s["patient"]: s for s in json.loads((files / "results.json").read_text())["subjects"]}
                assert set(from_files) == patients
                opts = SyncOptions(
                    study=study,
                    work_dir=tmp_path / "runs",
                    as_of=AS_OF,
                    mappings=mappings,
                    mappings_identity=identity,
                    standing_rule=standing_rule_all(),
                    **write,
                )
                first = run_sync(FhirClient(base), store, opts)
                assert first.errors == [] and first.conflicts == [] and first.patients == len(patients), study
                assert first.pushed["created"] > 0 and first.out is not None
                plan = [json.loads(x) for x in (first.out / "writeback-plan.ndjson").read_text().splitlines()]
                updated |= {p["existing"] for p in plan if p["action"] == "update"}
                synced = json.loads((first.out / "results.json").read_text())["subjects"]
                assert {s["patient"] for s in synced} == patients
                for subject in synced:
                    assert subject == from_files[subject["patient"]], (study, subject["patient"])
                second = run_sync(FhirClient(base), store, opts)
                assert set(second.plan) == {"unchanged"} and not second.pushed, (study, second.plan)
            results = [r for r in server_resources(base, "Observation") if is_result(r)]
            written = [i["value"] for r in results for i in r["identifier"] if i["system"] == IDENTIFIER_SYSTEM]
            assert written and len(written) == len(set(written))  # each result once
            # The runs' Provenance records name what was written by its ids on the server, never urn:uuid.
            ours = [
                p
                for p in server_resources(base, "Provenance")
                if any(t.get("system") == RUN_TAG_SYSTEM for t in p.get("meta", {}).get("tag", []))
            ]  # not the IG's own Provenance examples
            named = sorted(t["reference"] for p in ours for t in p["target"])
            assert updated and named == sorted([f"Observation/{r['id']}" for r in results] + sorted(updated))
    finally:
        store.close()

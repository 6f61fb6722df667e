"""A person reviews and approves every change to the hospital record, and can take a run back (four eyes).

- The plan says what changes: every line of the paper cohort's writeback-plan.ndjson is checked, its old values
  against the input and its new values against results.json, both derived here from those files.
- On a real FHIR server (sekmet-fhir, 127.0.0.1, stopped by PID): push without approval is refused and the
  server is unchanged; approve (one patient excluded) then push applies, every Provenance names the approver,
  nothing is sent for the excluded patient; a write-back edited after approval is refused; undo gives every
  ResearchSubject its previous status and period and marks every created result entered-in-error; undo again
  changes nothing.
- A scheduled sync with a standing rule writes what the rule covers and holds the rest for a person.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from builders import ROOT
from click.testing import CliRunner, Result
from fhir_server import load_input, sekmet_server, server_resources
from json_at import at, obj, objs

from fhiradapter.cli import main
from fhiradapter.core.approval import Approval, StandingRule, approved_bundle, parse_standing_rule, split_by_rule
from fhiradapter.core.review import decode_plan_line, in_words
from fhiradapter.core.writeback import IDENTIFIER_SYSTEM
from fhiradapter.errors import ConfigError, ExitCode

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
RULES = {
    "response": "§4",
    "best-response": "§4",
    "eligibility": "§2",
    "child-pugh": "§3",
    "toxicity": "§5",
    "research-subject": "§7",
}


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def evaluate(src: Path, out: Path) -> None:
    result = cli("evaluate", str(src), "--as-of", "2005-03-31", "--out", str(out), "--no-report")
    assert result.exit_code == 0, result.output


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def input_subjects(folder: Path) -> dict[str, dict[str, Any]]:
    """Every ResearchSubject of the input (NDJSON files and the Bundle), by reference, as the hospital holds it."""
    found: dict[str, dict[str, Any]] = {}
    for path in folder.glob("*.ndjson"):
        for res in lines(path):
            if res["resourceType"] == "ResearchSubject":
                found[f"ResearchSubject/{res['id']}"] = res
    for path in folder.glob("*.json"):
        for entry in json.loads(path.read_text()).get("entry", []):
            res = entry["resource"]
            if res["resourceType"] == "ResearchSubject":
                found[f"ResearchSubject/{res['id']}"] = res
    return found


def expected_new(kind: str, subject: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What results.json says a result resource of ``kind`` states (the line's own key picks the assessment/term)."""
    if kind == "research-subject":
        return {"status": subject["research_subject_status"], "period.end": subject["research_subject_period_end"]}
    if kind == "eligibility":
        criteria = subject["eligibility"]["criteria"]
        return {
            "eligibility": subject["eligibility"]["status"],
            "not_met": sorted(c["id"] for c in criteria if c["status"] == "not_met"),
            "unknown": sorted(c["id"] for c in criteria if c["status"] == "unknown"),
        }
    if kind == "child-pugh":
        return {"score": subject["child_pugh"]["score"], "class": subject["child_pugh"]["class"]}
    if kind == "best-response":
        return {"response": subject["best_response"]}
    if kind == "response":
        (a,) = [a for a in subject["assessments"] if a["date"] == new["date"]]
        return {k: a[k] for k in ("response", "spd_mm2", "afp", "basis", "confirmed")}
    if kind == "toxicity":
        (t,) = [t for t in subject["toxicities"] if t["display"] == new["term"]]
        return {"grade": t["worst_grade"], "source": t["source"], "first_date": t["first_date"]}
    raise AssertionError(kind)


def test_every_plan_line_says_what_changes_old_from_the_input_new_from_the_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    evaluate(PAPER, out)
    results = json.loads((out / "results.json").read_text())
    subjects = {s["patient"]: s for s in results["subjects"]}
    inputs = input_subjects(PAPER)
    plan = lines(out / "writeback-plan.ndjson")
    assert {p["action"] for p in plan} == {"create", "update", "unchanged"}
    for p in plan:
        subject = subjects[p["patient"]]
        assert p["rule"] == f"docs/protocol.md {RULES[p['kind']]}" and p["says"]
        expected = expected_new(p["kind"], subject, p["new"])
        assert {k: p["new"][k] for k in expected} == expected, p
        if p["kind"] == "research-subject":
            held = inputs[p["existing"]]
            old = {
                "status": held["status"],
                "period.start": held["period"].get("start"),
                "period.end": held["period"].get("end"),
            }
            if p["action"] == "update":
                assert p["old"] == old
                assert p["changes"] == [
                    {"element": k, "old": old[k], "new": p["new"][k]} for k in p["new"] if old[k] != p["new"][k]
                ]
                assert p["changes"] and f"status {old['status']} → {p['new']['status']}" in in_words(
                    decode_plan_line(orjson.dumps(p))
                )
            else:
                assert p["action"] == "unchanged" and "old" not in p
                assert old["status"] == p["new"]["status"] and old["period.end"] == p["new"]["period.end"]
        else:
            assert p["action"] == "create" and "old" not in p  # the paper cohort holds no earlier result
    # The eligibility sentence shows the patient's value and the limit (scr-01 is 75, scr-02's ANC 0.9).
    says = {(p["patient"], p["kind"]): p["says"] for p in plan}
    assert "age 75; must be under 75" in says[("Patient/scr-01", "eligibility")]
    assert "neutrophils 0.9 × 10⁹/L; must be ≥ 1.0 × 10⁹/L" in says[("Patient/scr-02", "eligibility")]


def versions(base: str, rtype: str) -> dict[str, str]:
    return {r["id"]: r["meta"]["versionId"] for r in server_resources(base, rtype)}


def snapshot(base: str) -> dict[str, dict[str, str]]:
    return {t: versions(base, t) for t in ("Observation", "ResearchSubject", "Provenance")}


def test_review_approve_push_and_undo_on_a_real_server(tmp_path: Path) -> None:
    with sekmet_server(tmp_path) as base:
        load_input(base, PAPER)
        pulled, out = tmp_path / "pulled", tmp_path / "out"
        assert cli("pull", "--server", base, "--study", "thal-hcc-pilot", "--out", str(pulled)).exit_code == 0
        evaluate(pulled, out)
        before = snapshot(base)
        subjects_before = {r["id"]: r for r in server_resources(base, "ResearchSubject")}
        # 1. Not approved: refused before any request, the server unchanged.
        refused = cli("push", "--server", base, str(out / "writeback.json"))
        assert refused.exit_code == ExitCode.NOT_APPROVED and "is not approved" in refused.output
        assert f"fhiradapter approve {out}" in refused.output
        assert snapshot(base) == before
        # 2. Approved, thal-04 excluded: applied; every Provenance names the approver; nothing of thal-04 sent.
        approved = cli(
            "approve",
            str(out),
            "--by",
            "A. Kim",
            "--role",
            "study data manager",
            "--exclude",
            "Patient/thal-04",
            "--yes",
        )
        assert approved.exit_code == 0, approved.output
        assert "Patient/thal-04  (excluded: not sent):" in approved.output
        assert (
            "update ResearchSubject/thal-01-rs: status on-study → off-study; period.end none → 2004-06-30"
            in approved.output
        )
        pushed = cli("push", "--server", base, str(out / "writeback.json"))
        assert pushed.exit_code == 0, pushed.output
        assert "Approved by A. Kim (study data manager)" in pushed.output and "entries not sent" in pushed.output
        provenances = list(server_resources(base, "Provenance"))
        assert provenances
        for prov in provenances:
            verifiers = [a for a in prov["agent"] if a["type"]["coding"][0]["code"] == "verifier"]
            assert [(a["who"]["display"], a["role"][0]["text"]) for a in verifiers] == [
                ("A. Kim", "study data manager")
            ]
        results = [r for r in server_resources(base, "Observation") if _ours(r)]
        assert results and not [r for r in results if r["subject"]["reference"] == "Patient/thal-04"]
        assert versions(base, "ResearchSubject")["thal-04-rs"] == before["ResearchSubject"]["thal-04-rs"]
        after_push = snapshot(base)
        # 3. The write-back edited after its approval: refused, nothing sent.
        bundle = json.loads((out / "writeback.json").read_text())
        bundle["entry"] = bundle["entry"][1:]
        (out / "writeback.json").write_text(json.dumps(bundle))
        edited = cli("push", "--server", base, str(out / "writeback.json"))
        assert edited.exit_code == ExitCode.NOT_APPROVED and "changed after A. Kim approved it" in edited.output
        assert snapshot(base) == after_push
        evaluate(pulled, out)  # the write-back as evaluate writes it again (the approval is dropped with it)
        assert not (out / "approval.json").exists()
        assert cli("approve", str(out), "--by", "A. Kim", "--exclude", "Patient/thal-04", "--yes").exit_code == 0
        # 4. Undo: a dry run changes nothing; then every ResearchSubject is as before, every result entered-in-error.
        dry = cli("undo", "--server", base, str(out), "--by", "B. Lee", "--dry-run")
        assert dry.exit_code == 0 and "would be marked entered-in-error" in dry.output
        assert snapshot(base) == after_push
        undone = cli("undo", "--server", base, str(out), "--by", "B. Lee", "--role", "investigator")
        assert undone.exit_code == 0, undone.output
        for rid, res in ((r["id"], r) for r in server_resources(base, "ResearchSubject")):
            old = subjects_before[rid]
            assert (res["status"], res.get("period")) == (old["status"], old.get("period")), rid
        results = [r for r in server_resources(base, "Observation") if _ours(r)]
        assert results and {r["status"] for r in results} == {"entered-in-error"}
        undo_prov = [p for p in server_resources(base, "Provenance") if p["meta"]["tag"][0]["code"].startswith("undo-")]
        assert len(undo_prov) == 1
        assert any(a.get("who", {}).get("display") == "B. Lee" for a in undo_prov[0]["agent"])
        # 5. Undo again: nothing changes.
        settled = snapshot(base)
        again = cli("undo", "--server", base, str(out), "--by", "B. Lee")
        assert again.exit_code == 0 and "nothing to take back" in again.output
        assert snapshot(base) == settled


def _ours(resource: dict[str, Any]) -> bool:
    return any(i.get("system") == IDENTIFIER_SYSTEM for i in resource.get("identifier", []))


def test_a_standing_rule_lets_a_sync_write_what_it_covers_and_holds_the_rest(tmp_path: Path) -> None:
    site = tmp_path / "site"
    assert cli("mappings", "init", str(site)).exit_code == 0
    (site / "approval.toml").write_text(
        '[standing_rule]\nsigned_by = "Dr. P. Investigator"\nrole = "principal investigator"\n'
        'signed_on = "2026-12-01"\nallow = ["create:*"]\n'
    )
    # What the rule should let out and hold, derived from the files' own plan (the server holds the same data).
    evaluate(PAPER, tmp_path / "files")
    planned = Counter(p["action"] for p in lines(tmp_path / "files" / "writeback-plan.ndjson"))
    creates, updates = planned["create"], planned["update"]
    with sekmet_server(tmp_path) as base:
        load_input(base, PAPER)
        subjects_before = versions(base, "ResearchSubject")
        args = ["sync", "--server", base, "--study", "thal-hcc-pilot", "--as-of", "2005-03-31"]
        run = cli(*args, "--data-dir", str(tmp_path / "data"), "--mappings", str(site))
        assert run.exit_code == 0, run.output
        assert (
            "written under the standing rule signed by Dr. P. Investigator (principal investigator) on 2026-12-01"
            in run.output
        )
        assert f"held for a person's approval: {updates} change(s) (outside the standing rule" in run.output
        # Every create was written under the rule; no ResearchSubject was touched.
        assert versions(base, "ResearchSubject") == subjects_before
        assert len([r for r in server_resources(base, "Observation") if _ours(r)]) == creates
        for prov in server_resources(base, "Provenance"):
            roles = [
                a.get("role", [{}])[0].get("text", "")
                for a in prov["agent"]
                if a["type"]["coding"][0]["code"] == "verifier"
            ]
            assert roles and "standing rule signed by Dr. P. Investigator" in roles[0]
        held = tmp_path / "data" / "runs" / "run-1" / "out" / "held"
        held_plan = lines(held / "writeback-plan.ndjson")
        assert {(p["action"], p["kind"]) for p in held_plan} == {("update", "research-subject")}
        assert len(held_plan) == updates
        listed = cli("runs", "--data-dir", str(tmp_path / "data"))
        assert f"held for a person's approval: {updates} change(s) in {held}" in listed.output
        assert "written under the standing rule signed by Dr. P. Investigator" in listed.output
        # A person approves the held changes, and pushes them.
        assert cli("approve", str(held), "--by", "A. Kim", "--yes").exit_code == 0
        pushed = cli("push", "--server", base, str(held / "writeback.json"))
        assert pushed.exit_code == 0 and f"updated {updates}" in pushed.output, pushed.output
        assert sum(versions(base, "ResearchSubject")[k] != v for k, v in subjects_before.items()) == updates
        # Without a standing rule, a sync holds every change: one AFP value changes, its results wait.
        obs = httpx.get(f"{base}/Observation/thal-03-afp-a1", timeout=10).json()
        obs["valueQuantity"]["value"] = 2100
        assert httpx.put(f"{base}/Observation/thal-03-afp-a1", json=obs, timeout=10).status_code == 200
        written = snapshot(base)
        again = cli(*args, "--data-dir", str(tmp_path / "data2"))
        assert again.exit_code == 0 and "no standing rule in the mappings" in again.output
        assert "pushed: nothing to send" in again.output
        assert "held for a person's approval: 2 change(s)" in again.output and snapshot(base) == written


def test_approve_refuses_what_it_cannot_bind(tmp_path: Path) -> None:
    out = tmp_path / "out"
    evaluate(PAPER, out)
    unknown = cli("approve", str(out), "--by", "A. Kim", "--exclude", "Patient/nobody", "--yes")
    assert unknown.exit_code == ExitCode.CONFIG and "Patient/nobody: not in this write-back's plan" in unknown.output
    unasked = CliRunner().invoke(main, ["approve", str(out), "--by", "A. Kim"], input="")
    assert unasked.exit_code != 0 and not (out / "approval.json").exists()
    assert cli("approve", str(tmp_path / "nowhere"), "--by", "A. Kim", "--yes").exit_code == ExitCode.INPUT
    ok = cli("approve", str(out), "--by", "A. Kim", "--yes")
    assert ok.exit_code == 0 and (out / "approval.json").stat().st_mode & 0o777 == 0o600
    approval = json.loads((out / "approval.json").read_text())
    assert approval["approved_by"] == "A. Kim" and len(approval["writeback_sha256"]) == 64


def test_standing_rules_name_known_actions_and_kinds() -> None:
    rule = StandingRule(signed_by="X", role="PI", signed_on="2026-12-01", allow=("create:response", "*:toxicity"))
    assert rule.covers("create", "response") and rule.covers("update", "toxicity")
    assert not rule.covers("update", "response") and not rule.covers("update", "research-subject")
    with pytest.raises(ConfigError, match="allow"):
        parse_standing_rule(
            {
                "standing_rule": {
                    "signed_by": "X",
                    "role": "PI",
                    "signed_on": "2026-12-01",
                    "allow": ["delete:response"],
                }
            },
            "approval.toml",
        )
    with pytest.raises(ConfigError, match="unknown section"):
        parse_standing_rule({"rule": {}}, "approval.toml")


def test_an_approval_leaves_excluded_patients_out_and_names_the_approver(tmp_path: Path) -> None:
    out = tmp_path / "out"
    evaluate(PAPER, out)
    bundle = json.loads((out / "writeback.json").read_text())
    plan = lines(out / "writeback-plan.ndjson")
    approval = Approval(
        approved_by="A",
        role="dm",
        approved_at="2026-12-07T00:00:00+00:00",
        writeback_sha256="x",
        plan_sha256="y",
        excluded=("Patient/thal-01",),
    )
    sent, left_out = approved_bundle(bundle, approval)
    sent_entries = objs(sent, "entry")
    resources = [obj(e, "resource") for e in sent_entries]
    patients = {obj(r.get("subject", r.get("individual", {}))).get("reference") for r in resources}
    assert "Patient/thal-01" not in patients and left_out
    (prov,) = [e for e in sent_entries if at(e, "resource", "resourceType") == "Provenance"]
    assert {at(t, "reference") for t in objs(prov, "resource", "target")} == {
        at(e, "fullUrl") for e in sent_entries if e is not prov
    }
    typed_plan = [decode_plan_line(orjson.dumps(p)) for p in plan]
    allowed, held, allowed_lines, held_lines = split_by_rule(bundle, typed_plan, None)
    assert [p for p in allowed_lines if p.action != "unchanged"] == []
    assert allowed["entry"] == [] and len(held_lines) == sum(p["action"] != "unchanged" for p in plan)
    assert len(objs(held, "entry")) == len(bundle["entry"])  # every entry and a Provenance of its own


def test_approve_says_what_a_folder_is_when_it_is_no_write_back(tmp_path: Path) -> None:
    """A newcomer's tries: a folder that does not exist, an input folder, a run made with --no-writeback."""
    missing = cli("approve", str(tmp_path / "nowhere"), "--by", "A. Kim", "--yes")
    assert missing.exit_code == ExitCode.INPUT and "does not exist" in missing.output
    inputs = cli("approve", str(PAPER), "--by", "A. Kim", "--yes")
    assert (
        inputs.exit_code == ExitCode.INPUT
        and "is not the --out folder of an `fhiradapter evaluate` run" in inputs.output
    )
    quiet = tmp_path / "quiet"
    assert (
        cli(
            "evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(quiet), "--no-report", "--no-writeback"
        ).exit_code
        == 0
    )
    nothing = cli("approve", str(quiet), "--by", "A. Kim", "--yes")
    assert (
        nothing.exit_code == ExitCode.INPUT
        and "made with --no-writeback: there is nothing to approve" in nothing.output
    )


def test_exclude_takes_a_patient_id_without_its_prefix(tmp_path: Path) -> None:
    out = tmp_path / "out"
    evaluate(PAPER, out)
    result = cli("approve", str(out), "--by", "A. Kim", "--exclude", "thal-04", "--yes")
    assert result.exit_code == 0, result.output
    assert "(1 excluded: not sent)" in result.output
    assert json.loads((out / "approval.json").read_text())["excluded"] == ["Patient/thal-04"]

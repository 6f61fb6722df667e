"""docs/protocol.md §1 study population and §7 period: only the study's subjects are evaluated and written back.

A mixed input (the paper cohort plus patients in no study, a subject of another study, and one of ours who also
has another study's ResearchSubject) gives the paper cohort's results unchanged, writes nothing for anyone
else, and never touches the other study. Candidates are screened only when asked, and enrolled only when asked
again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from builders import AS_OF, ROOT
from click.testing import CliRunner

from fhiradapter.cli import main
from fhiradapter.core.results import PopulationCounts, TimedRunSummary
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.pipeline import run_evaluate

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
OTHER = "ResearchStudy/some-other-trial"


def patient(pid: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": "1950-05-01", "gender": "female", **extra}


def subject(rid: str, pid: str, study: str, start: str = "2004-03-01", status: str = "on-study") -> dict[str, Any]:
    return {
        "resourceType": "ResearchSubject",
        "id": rid,
        "status": status,
        "period": {"start": start},
        "study": {"reference": study},
        "individual": {"reference": f"Patient/{pid}"},
    }


def ecog(oid: str, pid: str, day: str = "2004-02-20") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "89247-1"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": day,
        "valueInteger": 1,
    }


def mixed_input(tmp_path: Path) -> Path:
    """The paper cohort, plus: two patients in no study, one subject of another study only, and thal-01 with
    a ResearchSubject of another study besides ours."""
    folder = tmp_path / "mixed"
    shutil.copytree(PAPER, folder)
    extra = [
        patient("nobody-1"),
        ecog("nobody-1-ecog", "nobody-1"),
        patient("nobody-2", deceasedDateTime="2004-12-01"),
        patient("elsewhere"),
        subject("elsewhere-rs", "elsewhere", OTHER, start="2003-06-01"),
        ecog("elsewhere-ecog", "elsewhere"),
        subject("thal-01-other-rs", "thal-01", OTHER, start="2002-01-01", status="off-study"),
    ]
    (folder / "hospital.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in extra))
    return folder


def evaluate(src: Path, out: Path, **kw: Any) -> TimedRunSummary:
    mappings, identity = load_mappings()
    return run_evaluate(
        RunRequest(
            inputs=(src,), out=out, as_of=AS_OF, mappings=mappings, mappings_identity=identity, report=False, **kw
        )
    )


def evaluate_paper(tmp_path: Path) -> Path:
    evaluate(PAPER, tmp_path / "paper")
    return tmp_path / "paper"


def results(out: Path) -> dict[str, Any]:
    written: dict[str, Any] = json.loads((out / "results.json").read_text())
    return written


def rejects(out: Path) -> dict[str, str]:
    return {
        f"{r['resourceType']}/{r['id']}": r["code"]
        for r in map(json.loads, (out / "rejects.ndjson").read_text().splitlines())
    }


def written_patients(out: Path) -> set[str]:
    """Every patient the write-back names, and every ResearchStudy it names."""
    bundle = json.loads((out / "writeback.json").read_text())
    named = set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        for key in ("subject", "individual", "study"):
            if key in resource:
                named.add(resource[key]["reference"])
    return named


def test_s1_a_mixed_input_gives_the_paper_cohorts_results_and_writes_for_no_one_else(tmp_path: Path) -> None:
    evaluate_paper(tmp_path)
    summary = evaluate(mixed_input(tmp_path), tmp_path / "out")
    paper, mixed = results(tmp_path / "paper"), results(tmp_path / "out")
    assert mixed["subjects"] == paper["subjects"] and mixed["cohort"] == paper["cohort"]
    assert summary.population == PopulationCounts(subjects=14, candidates=0, not_in_study=3, not_screened=0)
    named = written_patients(tmp_path / "out")
    assert named == written_patients(tmp_path / "paper")
    assert not {"Patient/nobody-1", "Patient/nobody-2", "Patient/elsewhere", OTHER} & named
    bundle = (tmp_path / "out" / "writeback.json").read_text()
    assert "elsewhere-rs" not in bundle and "thal-01-other-rs" not in bundle  # the other study is never written
    got = rejects(tmp_path / "out")
    for ref in ("Patient/nobody-1", "Observation/nobody-1-ecog", "Patient/elsewhere", "Observation/elsewhere-ecog"):
        assert got[ref] == "not-in-study", ref
    assert got["ResearchSubject/elsewhere-rs"] == "other-study"
    assert got["ResearchSubject/thal-01-other-rs"] == "other-study"
    # Every record used or reported.
    assert summary.records_used + summary.records_rejected == summary.records_read
    assert not (tmp_path / "out" / "candidates.ndjson").exists()


def test_s1_another_studys_subject_is_never_taken_as_ours(tmp_path: Path) -> None:
    """A patient whose only ResearchSubject is another study's: not evaluated, its start not our screening."""
    src = tmp_path / "in"
    src.mkdir()
    lines = [patient("p1"), subject("rs-other", "p1", OTHER, start="2004-01-01")]
    (src / "x.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    evaluate(src, tmp_path / "out")
    assert results(tmp_path / "out")["subjects"] == []
    assert json.loads((tmp_path / "out" / "writeback.json").read_text())["entry"] == []
    evaluate(src, tmp_path / "cand", screen_candidates=True)
    (candidate,) = map(json.loads, (tmp_path / "cand" / "candidates.ndjson").read_text().splitlines())
    assert candidate["research_subject"] is None and candidate["population"] == "candidate"
    assert candidate["eligibility"]["screening_date"] == AS_OF.isoformat()  # not the other study's start
    assert json.loads((tmp_path / "cand" / "writeback.json").read_text())["entry"] == []  # not enrolled


def test_s1_candidates_are_screened_apart_and_enrolled_only_when_asked(tmp_path: Path) -> None:
    src = mixed_input(tmp_path)
    summary = evaluate(src, tmp_path / "screened", screen_candidates=True)
    assert summary.population == PopulationCounts(subjects=14, candidates=2, not_in_study=0, not_screened=1)
    screened, paper = results(tmp_path / "screened"), results(evaluate_paper(tmp_path))
    assert screened["subjects"] == paper["subjects"] and screened["cohort"] == paper["cohort"]  # apart
    candidates = [json.loads(x) for x in (tmp_path / "screened" / "candidates.ndjson").read_text().splitlines()]
    assert [c["patient"] for c in candidates] == ["Patient/elsewhere", "Patient/nobody-1"]
    assert all(c["research_subject_status"] in ("screening", "ineligible", "eligible") for c in candidates)
    assert rejects(tmp_path / "screened")["Patient/nobody-2"] == "not-screened"  # died 2004-12-01
    assert not {"Patient/nobody-1", "Patient/elsewhere"} & written_patients(tmp_path / "screened")
    evaluate(src, tmp_path / "enrolled", screen_candidates=True, enrol_candidates=True)
    bundle = json.loads((tmp_path / "enrolled" / "writeback.json").read_text())
    new_subjects = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "ResearchSubject" and e["request"]["method"] == "POST"
    ]
    assert sorted(r["individual"]["reference"] for r in new_subjects) == ["Patient/elsewhere", "Patient/nobody-1"]
    assert {r["study"]["reference"] for r in new_subjects} == {"ResearchStudy/thal-hcc-pilot"}
    assert all(r["period"]["start"] == AS_OF.isoformat() for r in new_subjects)
    assert "elsewhere-rs" not in json.dumps(bundle)  # the other study's subject is still never written
    assert results(tmp_path / "enrolled")["subjects"] == results(tmp_path / "screened")["subjects"]


def test_s1_the_cli_says_who_is_not_in_the_study(tmp_path: Path) -> None:
    src = mixed_input(tmp_path)
    args = ["evaluate", str(src), "--as-of", "2005-03-31", "--out", str(tmp_path / "o"), "--no-report"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "14 study subject(s) evaluated; 3 not in the study" in result.output
    enrol = CliRunner().invoke(main, [*args, "--enrol-candidates"])
    assert enrol.exit_code == 10 and "only used with --screen-candidates" in enrol.output
    other = CliRunner().invoke(main, [*args, "--study", "some-other-trial"])
    assert other.exit_code == 0 and "2 study subject(s) evaluated" in other.output  # elsewhere, and thal-01


def test_s7_a_death_before_the_period_start_is_reported_not_written(tmp_path: Path) -> None:
    """A subject whose death date precedes the ResearchSubject's start: period.end would break R4 per-1."""
    src = tmp_path / "in"
    src.mkdir()
    lines = [
        patient("p1", deceasedDateTime="2004-02-01"),
        subject("rs-p1", "p1", "ResearchStudy/thal-hcc-pilot", start="2004-03-01", status="candidate"),
    ]
    (src / "x.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    evaluate(src, tmp_path / "out")
    (result,) = results(tmp_path / "out")["subjects"]
    assert result["research_subject_period_end"] is None
    assert "death-before-period-start" in [i["code"] for i in result["issues"]]
    bundle = json.loads((tmp_path / "out" / "writeback.json").read_text())
    (update,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ResearchSubject"]
    assert update["status"] == "off-study" and "end" not in update["period"]


@pytest.mark.parametrize("study", [None, "thal-hcc-pilot"])
def test_s1_the_study_is_named_in_the_mappings_or_on_the_command_line(tmp_path: Path, study: str | None) -> None:
    summary = evaluate(PAPER, tmp_path / "o", study=study)
    assert summary.population.subjects == 14


STUDY_ID = {"system": "urn:example:studies", "value": "THAL-HCC-2003"}


def logical_input(tmp_path: Path, *, with_study: dict[str, Any] | None) -> Path:
    """The paper cohort whose ResearchSubjects name the study by identifier (a logical reference) only.

    ``with_study``: the ResearchStudy the input carries instead of the paper's (None: none at all).
    """
    folder = tmp_path / "logical"
    shutil.copytree(PAPER, folder)
    subjects = [orjson.loads(x) for x in (folder / "ResearchSubject.ndjson").read_bytes().splitlines() if x.strip()]
    for rs in subjects:
        rs["study"] = {"type": "ResearchStudy", "identifier": STUDY_ID}
    (folder / "ResearchSubject.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in subjects))
    bundle = json.loads((folder / "screening-candidates.json").read_text())
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "ResearchSubject":
            entry["resource"]["study"] = {"identifier": STUDY_ID}
    (folder / "screening-candidates.json").write_text(json.dumps(bundle))
    (folder / "ResearchStudy.ndjson").unlink()
    if with_study is not None:
        (folder / "ResearchStudy.ndjson").write_bytes(orjson.dumps(with_study) + b"\n")
    return folder


def site_mappings(tmp_path: Path, study_section: str) -> Path:
    """A copy of the shipped mappings whose ``[study]`` section is ``study_section``."""
    from fhiradapter.shell.common.mappings_io import default_mappings_dir

    folder = tmp_path / "site-mappings"
    shutil.copytree(default_mappings_dir(), folder)
    text = (folder / "protocol.toml").read_text()
    start = text.index("[study]")
    end = text.index("\n[", start + 1)
    (folder / "protocol.toml").write_text(text[:start] + study_section + text[end:])
    return folder


@pytest.mark.parametrize(
    "study_section",
    [
        '[study]\nidentifier = "urn:example:studies|THAL-HCC-2003"\n',
        '[study]\nid = "thal-hcc-pilot"\nidentifier = ["urn:example:other|X", "urn:example:studies|THAL-HCC-2003"]\n',
    ],
)
def test_s1_a_logical_reference_to_an_identifier_in_the_mappings_is_a_study_subject(
    tmp_path: Path, study_section: str
) -> None:
    """§1: both references are FHIR references, of equal worth: the same subjects, the same results."""
    src = logical_input(tmp_path, with_study=None)
    mappings, identity = load_mappings(site_mappings(tmp_path, study_section))
    run_evaluate(
        RunRequest(
            inputs=(src,), out=tmp_path / "o", as_of=AS_OF, mappings=mappings, mappings_identity=identity, report=False
        )
    )
    paper = results(evaluate_paper(tmp_path))
    assert results(tmp_path / "o")["subjects"] == paper["subjects"]
    assert "other-study" not in rejects(tmp_path / "o").values()


def test_s1_an_identifier_the_studys_own_researchstudy_carries_names_it(tmp_path: Path) -> None:
    """§1: with the shipped mappings (id only), the study's ResearchStudy in the data lends its identifiers."""
    study = {"resourceType": "ResearchStudy", "id": "thal-hcc-pilot", "status": "completed", "identifier": [STUDY_ID]}
    src = logical_input(tmp_path, with_study=study)
    evaluate(src, tmp_path / "o")
    assert results(tmp_path / "o")["subjects"] == results(evaluate_paper(tmp_path))["subjects"]
    # Without that ResearchStudy, nothing says the identifier is this study's: nobody is in the study.
    bare = logical_input(tmp_path / "bare", with_study=None)
    summary = evaluate(bare, tmp_path / "bare-out")
    assert summary.population.subjects == 0
    assert set(rejects(tmp_path / "bare-out").values()) >= {"other-study"}


def test_s1_a_logical_reference_to_another_identifier_is_another_study(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    rs = subject("rs-x", "p1", OTHER)
    rs["study"] = {"identifier": {"system": "urn:example:studies", "value": "SOMETHING-ELSE"}}
    (src / "x.ndjson").write_bytes(orjson.dumps(patient("p1")) + b"\n" + orjson.dumps(rs) + b"\n")
    mappings, identity = load_mappings(
        site_mappings(tmp_path, '[study]\nidentifier = "urn:example:studies|THAL-HCC-2003"\n')
    )
    run_evaluate(
        RunRequest(
            inputs=(src,), out=tmp_path / "o", as_of=AS_OF, mappings=mappings, mappings_identity=identity, report=False
        )
    )
    assert results(tmp_path / "o")["subjects"] == []
    reasons = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "o" / "rejects.ndjson").read_text().splitlines()}
    assert reasons["rs-x"]["code"] == "other-study"
    assert "identifier urn:example:studies|SOMETHING-ELSE" in reasons["rs-x"]["reason"]


def test_s1_the_cli_takes_the_study_by_identifier(tmp_path: Path) -> None:
    src = logical_input(tmp_path, with_study=None)
    args = ["evaluate", str(src), "--as-of", "2005-03-31", "--out", str(tmp_path / "o"), "--no-report"]
    result = CliRunner().invoke(main, [*args, "--study", "urn:example:studies|THAL-HCC-2003"])
    assert result.exit_code == 0, result.output
    assert "14 patient(s) evaluated" in result.output
    header = results(tmp_path / "o")
    assert header["protocol"]["study"] == "ResearchStudy?identifier=urn:example:studies|THAL-HCC-2003"
    bad = CliRunner().invoke(main, [*args, "--study", "urn:example:studies|"])
    assert bad.exit_code == 10 and "SYSTEM|VALUE" in bad.output


@pytest.mark.parametrize(
    ("study_section", "message"),
    [
        ('[study]\nidentifier = "THAL-HCC-2003"\n', "not an identifier written SYSTEM|VALUE"),
        ("[study]\n", "name the study by id, by identifier"),
    ],
)
def test_s1_a_study_the_mappings_cannot_name_is_a_settings_error(
    tmp_path: Path, study_section: str, message: str
) -> None:
    from fhiradapter.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_mappings(site_mappings(tmp_path, study_section))


def test_s1_a_candidate_enrolled_in_a_study_known_by_identifier_gets_a_logical_reference(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.ndjson").write_bytes(orjson.dumps(patient("p1")) + b"\n" + orjson.dumps(ecog("e1", "p1")) + b"\n")
    mappings, identity = load_mappings(
        site_mappings(tmp_path, '[study]\nidentifier = "urn:example:studies|THAL-HCC-2003"\n')
    )
    run_evaluate(
        RunRequest(
            inputs=(src,),
            out=tmp_path / "o",
            as_of=AS_OF,
            mappings=mappings,
            mappings_identity=identity,
            report=False,
            screen_candidates=True,
            enrol_candidates=True,
        )
    )
    bundle = json.loads((tmp_path / "o" / "writeback.json").read_text())
    (new,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ResearchSubject"]
    assert new["study"] == {"type": "ResearchStudy", "identifier": STUDY_ID}


def test_s1_a_death_before_the_index_date_names_both_records_and_computes_no_os(tmp_path: Path) -> None:
    """§1: a death dated before the first dose contradicts the data: no OS, one issue naming both records."""
    src = tmp_path / "in"
    src.mkdir()
    dose = {
        "resourceType": "MedicationStatement",
        "id": "ms-1",
        "status": "completed",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "10432"}]
        },
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2004-03-05", "end": "2004-04-01"},
    }
    for death, expect_os in (("2004-03-04", False), ("2004-03-05", True)):  # the day before, and the index day
        lines = [patient("p1", deceasedDateTime=death), subject("rs-p1", "p1", "ResearchStudy/thal-hcc-pilot"), dose]
        (src / "x.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
        out = tmp_path / f"out-{death}"
        evaluate(src, out)
        (result,) = results(out)["subjects"]
        assert result["index_date"] == "2004-03-05"
        issues = [i for i in result["issues"] if i["code"] == "death-before-index"]
        if expect_os:
            assert issues == [] and result["os"]["days"] == 1 and result["os"]["event"] is True
        else:
            (issue,) = issues
            assert result["os"] is None
            assert "Patient/p1" in issue["message"] and "MedicationStatement/ms-1" in issue["message"]

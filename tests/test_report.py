"""The study team's report: the figures the golden test checks appear, and the HTML opens offline.

A screening meeting reads it unaided: each patient's criteria not met or not determined with the value found
and the limit, the screening candidates apart from the study subjects, the paper's figures only beside the
paper's own cohort, and "none" where a section has nothing.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from builders import ROOT, lab, lesion, partial
from click.testing import CliRunner
from msgspec.structs import replace
from test_protocol_s2_eligibility import CP_B9, CP_C10, ORIGIN, SCREEN, good_record

from fhiradapter.cli import main
from fhiradapter.core.child_pugh import ChildPugh, score_child_pugh
from fhiradapter.core.dates import PartialDate
from fhiradapter.core.eligibility import assess_eligibility, explain
from fhiradapter.core.model import Condition, Consent, Exposure, Observed, PatientRecord
from fhiradapter.core.readback import decode_criterion, decode_subject, split_whole
from fhiradapter.shell.report.render import Section
from fhiradapter.shell.report.report import load_published
from fhiradapter.shell.report.rows import report_row
from fhiradapter.shell.report.sections import Digest, paper_section

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
GENERATE = ROOT / "benchmarks" / "generate.py"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    run = CliRunner().invoke(main, ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(folder)])
    assert run.exit_code == 0, run.output
    return folder


@pytest.mark.parametrize("name", ["report.html", "report.md"])
def test_report_shows_the_key_figures(out: Path, name: str) -> None:
    text = (out / name).read_text()
    for needle in (
        "1/8 = 12.5 %",
        "0.3 % to 52.7 %",
        "Median treatment duration: 97.5 days",
        "Median overall survival: 395 days",
        "PR 1, SD 4, PD 2, NE 1",
        "Table 1. Patient characteristics and results",
        "Table 2. Toxicity (NCI CTC v2.0)",
        "Screening outcomes",
        "Data quality",
        "Differences from the published paper",
        "152 (range 5-422)",
        "thalidomide started 2003-01-06, before screening",  # what the criterion found, not its id
        "doxorubicin (RxNorm 3639)",  # the drug's name, then its code
        "rules: docs/protocol.md",  # the rule book the report's § numbers cite
    ):
        assert needle in text, needle


def test_table_two_rows_in_the_markdown(out: Path) -> None:
    md = (out / "report.md").read_text()
    assert "| Constipation | 10010774 | 8 | 0 |" in md
    assert "| Somnolence/depressed level of consciousness | 10041349 | 7 | 1 |" in md
    assert "| Neuropathy-sensory | 10034620 | 2 | 1 |" in md


def test_line_breaks_in_the_data_stay_inside_their_table_cell(tmp_path: Path) -> None:
    """A text from the input with line breaks (here Patient.gender) must not end a Markdown table row and start a
    heading of its own."""
    import shutil

    src = tmp_path / "in"
    shutil.copytree(PAPER, src)
    lines = []
    for line in (src / "Patient.ndjson").read_text().splitlines():
        res = json.loads(line)
        if res["id"] == "thal-04":
            res["gender"] = "male\r\n\n# Injected heading | x"
        lines.append(json.dumps(res))
    (src / "Patient.ndjson").write_text("\n".join(lines) + "\n")
    run = CliRunner().invoke(main, ["evaluate", str(src), "--as-of", "2005-03-31", "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    md = (tmp_path / "out" / "report.md").read_text()
    rows = [line for line in md.splitlines() if "Injected heading" in line]
    assert rows == [next(r for r in rows if r.startswith("| thal-04 | "))]
    assert "| male # Injected heading / x |" in rows[0]


def test_html_is_self_contained_with_embedded_pngs(out: Path) -> None:
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=['"]?(https?:|//|[\w.-]+\.(png|css|js))""", page)
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 2
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for data in images)


def test_markdown_figures_are_written_beside_it(out: Path) -> None:
    md = (out / "report.md").read_text()
    for png in ("report-km.png", "report-swimmer.png"):
        assert f"]({png})" in md
        assert (out / png).read_bytes().startswith(b"\x89PNG")


def test_no_report_option_also_removes_an_earlier_runs_report(tmp_path: Path) -> None:
    args = ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path)]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert (tmp_path / "report.html").exists() and (tmp_path / "report-km.png").exists()
    run = CliRunner().invoke(main, [*args, "--no-report"])
    assert run.exit_code == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("report", ".report"))]
    wrote = next(line for line in run.output.splitlines() if line.startswith("Wrote to"))
    assert "report.html" not in wrote and "in a browser" not in run.output
    assert "removed its " in run.output and "report.html" in run.output  # the earlier run's, said once


def test_a_figure_the_new_cohort_lacks_is_not_left_from_an_earlier_run(tmp_path: Path) -> None:
    args = ["--as-of", "2005-03-31", "--out", str(tmp_path)]
    assert CliRunner().invoke(main, ["evaluate", str(PAPER), *args]).exit_code == 0
    assert (tmp_path / "report-swimmer.png").exists()
    untreated = PAPER / "screening-candidates.json"  # study subjects screened, none treated: no figures
    run = CliRunner().invoke(main, ["evaluate", str(untreated), *args])
    assert run.exit_code == 0, run.output
    assert not list(tmp_path.glob("*.png"))


def test_a_cohort_with_no_treated_patient_gets_a_report_without_figures(tmp_path: Path) -> None:
    untreated = PAPER / "screening-candidates.json"  # the paper's six screened subjects, none treated
    run = CliRunner().invoke(main, ["evaluate", str(untreated), "--as-of", "2005-03-31", "--out", str(tmp_path)])
    assert run.exit_code == 0, run.output
    assert "data:image/png" not in (tmp_path / "report.html").read_text()
    assert not list(tmp_path.glob("*.png"))
    text = (tmp_path / "report.md").read_text()
    assert "Data quality" in text and "not reached" not in text  # no "not reached days (... to not reached)"
    assert "Overall survival: no treated patient, so none to estimate." in text
    issues = json.loads((tmp_path / "results.json").read_text())["subjects"]
    if not any(s["issues"] for s in issues):
        assert "Issue in used data" not in text  # a table without rows is left out


# --- Items of issue 28: the report a screening meeting reads ---------------------------------------------


def evaluate(src: Path, out: Path, *extra: str) -> Path:
    run = CliRunner().invoke(main, ["evaluate", str(src), "--as-of", "2005-03-31", "--out", str(out), *extra])
    assert run.exit_code == 0, run.output
    return out


def section(text: str, title: str) -> str:
    """One section of report.md, from its heading to the next."""
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def html_section(page: str, title: str) -> str:
    start = page.index(f"<h2>{title}")
    end = page.find("<h2>", start + 1)
    return page[start : end if end >= 0 else None]


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper cohort evaluated with --screen-candidates: every patient is a study subject, no candidate."""
    return evaluate(PAPER, tmp_path_factory.mktemp("screened"), "--screen-candidates")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated cohort that is not the paper's: 12 patients of the same protocol, the first three without
    their ResearchSubject (so screening candidates; two of them died before the cut-off, one is screened)."""
    src = tmp_path_factory.mktemp("synthetic-in")
    subprocess.run(
        [sys.executable, str(GENERATE), "--patients", "12", "--out", str(src), "--seed", "5"],
        check=True,
        capture_output=True,
    )
    subjects = src / "ResearchSubject.ndjson"
    subjects.write_text("".join(subjects.read_text().splitlines(keepends=True)[3:]))
    return evaluate(src, tmp_path_factory.mktemp("synthetic"), "--screen-candidates")


def test_screening_outcomes_name_the_study_subjects_not_candidates(screened: Path) -> None:
    """Item 4: the column holds study subjects (scr-01...), not candidates; its header says so."""
    md = (screened / "report.md").read_text()
    outcomes = section(md, "Screening outcomes")
    assert "| Patient | Eligibility | Not met: value found; limit | Not determined: what is missing |" in outcomes
    assert "Candidate" not in outcomes and "| scr-01 | ineligible |" in outcomes
    assert "<th>Patient</th><th>Eligibility</th>" in html_section((screened / "report.html").read_text(), "Screening")


def test_screening_candidates_are_listed_apart_with_each_criterion(synthetic: Path) -> None:
    """Item 4: each candidate of candidates.ndjson in a section of its own, with its status and criteria."""
    candidates = [json.loads(x) for x in (synthetic / "candidates.ndjson").read_text().splitlines()]
    assert [c["patient"] for c in candidates] == ["Patient/bench-000001"]
    md = (synthetic / "report.md").read_text()
    listed = section(md, "Screening candidates")
    assert "**1** candidate(s): 0 eligible, 1 ineligible, 0 undetermined." in listed
    assert "2 patient(s) outside the study died on or before the data cut-off and were not screened" in listed
    (row,) = [line for line in listed.splitlines() if line.startswith("| bench-000001 |")]
    assert "| ineligible | thalidomide started 2003-05-03, before screening; must have had none |" in row
    assert "• no value for: neutrophils within 28 days before screening; must be ≥ 1.0 × 10⁹/L<br>" in row
    assert "bench-000001" not in section(md, "Table 1") + section(md, "Screening outcomes")  # apart
    page = html_section((synthetic / "report.html").read_text(), "Screening candidates")
    assert "<td>bench-000001</td><td>ineligible</td>" in page
    assert "<li>no value for: platelets within 28 days before screening; must be ≥ 40 × 10⁹/L</li>" in page


def test_no_candidate_says_none_and_an_unscreened_run_says_it_did_not_screen(screened: Path, out: Path) -> None:
    """Item 4: "none" when there are none, and "not screened" without --screen-candidates, never a bare table."""
    none = section((screened / "report.md").read_text(), "Screening candidates")
    assert "None: no patient outside the study was screened." in none and "| Patient" not in none
    unscreened = section((out / "report.md").read_text(), "Screening candidates")
    assert "Not screened: this run was made without `--screen-candidates`." in unscreened
    page = html_section((out / "report.html").read_text(), "Screening candidates")
    assert "without <code>--screen-candidates</code>" in page and "<table>" not in page


def test_an_unscreened_run_with_patients_outside_the_study_counts_them(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for f in PAPER.glob("*.ndjson"):
        (src / f.name).write_bytes(f.read_bytes())
    subjects = src / "ResearchSubject.ndjson"
    kept = [x for x in subjects.read_text().splitlines(keepends=True) if "Patient/thal-08" not in x]
    subjects.write_text("".join(kept))
    text = section((evaluate(src, tmp_path / "out") / "report.md").read_text(), "Screening candidates")
    assert "1 patient(s) in the input have no ResearchSubject of the study and were not evaluated" in text


def test_failed_criteria_show_the_patients_value_and_the_limit(screened: Path) -> None:
    """Item 5: scr-01 is 75, scr-02's neutrophils 0.9: the value, its unit and the limit, not the rule alone."""
    md = section((screened / "report.md").read_text(), "Screening outcomes")
    for patient, found in (
        ("scr-01", "| ineligible | age 75; must be under 75 | none |"),
        ("scr-02", "| ineligible | neutrophils 0.9 × 10⁹/L; must be ≥ 1.0 × 10⁹/L | none |"),
        ("scr-03", "| Child-Pugh class C (score 12); must be class A or B (score 5-9) |"),
        ("scr-04", "| thalidomide started 2003-01-06, before screening; must have had none |"),
        ("scr-05", "| serum creatinine 2.1 mg/dL; must be ≤ 2.0 mg/dL |"),
        ("scr-06", "| none | no value for: ECOG performance status on or before screening; must be ≤ 2 |"),
    ):
        (row,) = [line for line in md.splitlines() if line.startswith(f"| {patient} |")]
        assert found in row, row
    page = (screened / "report.html").read_text()
    assert "<td>neutrophils 0.9 × 10⁹/L; must be ≥ 1.0 × 10⁹/L</td>" in page


def _med(drug: str, start: str) -> Exposure:
    return Exposure(
        f"MedicationStatement/{drug}", "Patient/p", drug, "", partial(start), None, "active", None, None, ORIGIN
    )


def _cond(concept: str, verification: str | None = None) -> Condition:
    return Condition(
        f"Condition/{concept}", "Patient/p", concept, verification, "active", partial("2004-01-01"), None, ORIGIN
    )


def _observations(rec: PatientRecord, concept: str, *new: Observed) -> PatientRecord:
    return replace(rec, observations=[*(o for o in rec.observations if o.concept != concept), *new])


def _born(rec: PatientRecord, birth_date: PartialDate | None) -> PatientRecord:
    assert rec.person is not None
    return replace(rec, person=rec.person._replace(birth_date=birth_date))


CP_NO_ALBUMIN = score_child_pugh(
    bilirubin=1.0, albumin=None, inr=1.1, pt_prolongation=None, ascites="none", encephalopathy=0, albumin_lower=2.8
)
WHAT_WAS_FOUND: list[tuple[str, Callable[[PatientRecord], PatientRecord], ChildPugh | None, str]] = [
    (
        "age",
        lambda r: _born(r, partial("1929-03-01")),
        None,
        "age 75; must be under 75",
    ),
    (
        "age",
        lambda r: _born(r, partial("1929")),
        None,
        "age 74 or 75 (birth date without month or day); must be under 75",
    ),
    (
        "age",
        lambda r: _born(r, partial("1928")),
        None,
        "age 75 or 76 (birth date without month or day); must be under 75",
    ),
    ("age", lambda r: _born(r, None), None, "no birth date; must be under 75"),
    (
        "ecog",
        lambda r: _observations(r, "ecog", lab("ecog", "2004-02-27", 3)),
        None,
        "ECOG performance status 3; must be ≤ 2",
    ),
    (
        "ecog",
        lambda r: _observations(r, "ecog"),
        None,
        "no value for: ECOG performance status on or before screening; must be ≤ 2",
    ),
    (
        "anc",
        lambda r: _observations(r, "anc", lab("anc", "2004-02-27", 0.9, unit="10*9/L")),
        None,
        "neutrophils 0.9 × 10⁹/L; must be ≥ 1.0 × 10⁹/L",
    ),
    (
        "anc",
        lambda r: _observations(r, "anc", lab("anc", "2004-01-30", 2.0, unit="10*9/L")),
        None,
        "no value for: neutrophils within 28 days before screening; must be ≥ 1.0 × 10⁹/L",
    ),
    (
        "platelets",
        lambda r: _observations(r, "platelets", lab("platelets", "2004-02-27", 39, unit="10*9/L")),
        None,
        "platelets 39 × 10⁹/L; must be ≥ 40 × 10⁹/L",
    ),
    (
        "creatinine",
        lambda r: _observations(
            r,
            "creatinine",
            lab("creatinine", "2004-02-27", 2.1, unit="mg/dL")._replace(
                conversion="186 umol/L -> 2.1 mg/dL (UCUM x 0.0113)"
            ),
        ),
        None,
        "serum creatinine 2.1 mg/dL (recorded as 186 umol/L); must be ≤ 2.0 mg/dL",
    ),
    ("child_pugh", lambda r: r, CP_C10, "Child-Pugh class C (score 10); must be class A or B (score 5-9)"),
    (
        "child_pugh",
        lambda r: r,
        CP_NO_ALBUMIN,
        "Child-Pugh components missing: albumin; must be class A or B (score 5-9)",
    ),
    (
        "consent",
        lambda r: replace(r, consents=[Consent("Consent/c", "Patient/p", "rejected", None, ORIGIN)]),
        None,
        "research consent rejected; must be active",
    ),
    ("consent", lambda r: replace(r, consents=[]), None, "no research consent found; must be active"),
    (
        "histology",
        lambda r: replace(r, conditions=[_cond("hcc", "refuted")]),
        None,
        "the HCC diagnosis is refuted; must be confirmed HCC",
    ),
    (
        "histology",
        lambda r: replace(r, conditions=[_cond("hcc", "provisional"), _cond("metastasis")]),
        None,
        "HCC Condition present but not confirmed (verificationStatus provisional); must be confirmed HCC",
    ),
    (
        "no_prior_thalidomide",
        lambda r: replace(r, meds=[*r.meds, _med("thalidomide", "2003-12")]),
        None,
        "thalidomide started 2003-12, before screening; must have had none",
    ),
    (
        "not_pregnant_or_breastfeeding",
        lambda r: replace(r, conditions=[*r.conditions, _cond("pregnancy")]),
        None,
        "pregnancy or breastfeeding recorded; must be neither",
    ),
    (
        "no_peripheral_neuropathy",
        lambda r: replace(r, conditions=[*r.conditions, _cond("peripheral_neuropathy")]),
        None,
        "active peripheral neuropathy recorded; must have none",
    ),
    (
        "no_uncontrolled_infection",
        lambda r: replace(r, conditions=[*r.conditions, _cond("infection")]),
        None,
        "active infection recorded; must have none",
    ),
    (
        "metastatic_measurable",
        lambda r: _observations(r, "tumor_size", lesion("2004-02-20", "BodyStructure/l1", 30, None)),
        None,
        "no bidimensional lesion measured within 28 days before the index/screening date "
        "(found: 1 metastasis Condition(s), 0 lesion(s) measured in two diameters)",
    ),
    (
        "metastatic_measurable",
        lambda r: replace(r, conditions=[c for c in r.conditions if c.concept != "metastasis"]),
        None,
        "no secondary-malignancy Condition (found: 0 metastasis Condition(s), 1 lesion(s) measured in two diameters)",
    ),
    (
        "prior_anthracycline_progression",
        lambda r: replace(r, meds=[]),
        None,
        "no anthracycline (doxorubicin/epirubicin) started before screening",
    ),
    (
        "prior_anthracycline_progression",
        lambda r: _observations(r, "disease_status"),
        None,
        "anthracycline started 2003-06-01, but no later progression record (97509-4 worsened)",
    ),
    (
        "prior_anthracycline_progression",
        lambda r: _observations(
            replace(r, meds=[r.meds[0]._replace(start=partial("2004-01"), end=None)]),
            "disease_status",
            lab("disease_status", "2004-01-13", None, coded="worsened"),
        ),
        None,
        "anthracycline started 2004-01 (no day): cannot tell whether the progression on 2004-01-13 came after it",
    ),
]


@pytest.mark.parametrize(("cid", "change", "cp", "expected"), WHAT_WAS_FOUND)
def test_each_criterion_kind_reads_as_the_value_found_and_the_limit(
    cid: str, change: Callable[[PatientRecord], PatientRecord], cp: ChildPugh | None, expected: str
) -> None:
    """Item 5, every kind of criterion: the same words from the typed result and from its JSON (candidates)."""
    eligibility = assess_eligibility(change(good_record()), SCREEN, SCREEN, cp or CP_B9, ["Observation/cp"])
    criterion = eligibility.criterion(cid)
    assert criterion.status != "met", criterion
    assert explain(criterion) == expected
    assert explain(decode_criterion(msgspec.json.encode(criterion))) == expected


def test_the_paper_is_compared_only_with_the_papers_cohort(screened: Path, synthetic: Path) -> None:
    """Item 6: the paper cohort's report compares and says which cohort; a generated cohort's does not."""
    paper = section((screened / "report.md").read_text(), "Differences from the published paper")
    assert "This run is the paper's cohort (protocol thal-hcc-pilot; treated patients thal-01 to thal-08" in paper
    assert "| Median treatment duration (days) | 97.5 (range 5-422) | 152 (range 5-422) |" in paper
    md, page = (synthetic / "report.md").read_text(), (synthetic / "report.html").read_text()
    for text in (md, page):
        assert "Differences from the published paper" not in text and "152 (range 5-422)" not in text
        assert "Printed in the paper" not in text
    said = (
        "Not compared: the paper's figures describe the paper's cohort (protocol thal-hcc-pilot; treated patients "
        "thal-01 to thal-08, as fixtures/paper-cohort encodes the pilot study), and this run's 9 treated patient(s) "
        "are not that cohort."
    )
    assert said in section(md, "Published paper")


def test_a_cohort_of_eight_other_patients_is_not_the_papers(tmp_path: Path) -> None:
    """Item 6: the same number treated is not enough; the patients must be the paper's."""
    src = tmp_path / "in"
    src.mkdir()
    for f in PAPER.glob("*.ndjson"):
        (src / f.name).write_text(f.read_text().replace("thal-08", "thal-99"))
    text = (evaluate(src, tmp_path / "out") / "report.md").read_text()
    assert "## Published paper: not compared" in text and "Printed in the paper" not in text


def test_empty_sections_say_none(tmp_path: Path) -> None:
    """Item 7: a section or table with nothing to show says "none" instead of a bare heading."""
    untreated = PAPER / "screening-candidates.json"  # the paper's six screened subjects, none treated
    out = evaluate(untreated, tmp_path / "out")
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for title, words in (
        ("Table 1", "None: no patient was treated."),
        ("Table 2", "None: no patient was treated."),
        ("Overall survival (Kaplan-Meier)", "None: no treated patient, so no survival curve."),
        ("Treatment durations", "None: no treated patient."),
        ("Data quality", "Rejected records: none."),
        ("Data quality", "Issues in used data: none."),
    ):
        assert words in section(md, title), title
        assert words in html_section(page, title), title
    for title in ("Table 1", "Table 2"):
        assert "<table>" not in html_section(page, title)


def test_every_subject_treated_says_none_under_screening_outcomes(synthetic: Path) -> None:
    """Item 7: a cohort whose study subjects were all treated has no screening outcome to list."""
    outcomes = section((synthetic / "report.md").read_text(), "Screening outcomes")
    assert "None: every study subject was treated." in outcomes and "| Patient" not in outcomes


@pytest.mark.parametrize(("cohort_of", "asked", "compared"), [("synthetic", True, True), ("screened", False, False)])
def test_the_comparison_can_be_asked_for_or_refused(
    request: pytest.FixtureRequest, cohort_of: str, asked: bool, compared: bool
) -> None:
    """Item 6: ``compare_with_paper`` overrides the choice, and the report still says which cohort it is."""
    header, subjects, cohort = split_whole((request.getfixturevalue(cohort_of) / "results.json").read_bytes())
    digest = Digest()
    for subject in subjects:
        digest.add(report_row(decode_subject(subject)))
    published = load_published(ROOT / "mappings")
    assert published is not None
    section = paper_section(published, header, cohort, digest, asked)
    assert bool(section.tables) is compared
    if compared:
        assert section.paragraphs[0].startswith("Compared on request: this run's 9 treated patient(s) are not")
    else:
        assert section.title == "Published paper: not compared"
        assert section.paragraphs[0].startswith("Not compared, on request (protocol thal-hcc-pilot;")


def test_a_published_toml_without_its_cohort_compares_no_run(screened: Path) -> None:
    """Item 6: a site's older published.toml (no [cohort]) never sets the paper beside a run unasked."""
    header, subjects, cohort = split_whole((screened / "results.json").read_bytes())
    digest = Digest()
    for subject in subjects:
        digest.add(report_row(decode_subject(subject)))
    published = load_published(ROOT / "mappings")
    assert published is not None
    section = paper_section(msgspec.structs.replace(published, cohort=None), header, cohort, digest, None)
    assert section == Section(
        "Published paper: not compared",
        [
            "Not compared: published.toml names no cohort ([cohort] with protocol and treated), so no run is the "
            "paper's."
        ],
    )


def test_the_report_lists_the_changes_to_the_hospital_record_by_patient(tmp_path: Path) -> None:
    """docs/review-and-approve.md: the report's "Changes to the hospital record" is the plan in words."""
    args = ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path / "o")]
    assert CliRunner().invoke(main, args).exit_code == 0
    report = (tmp_path / "o" / "report.md").read_text()
    section = report.split("## Changes to the hospital record", 1)[1].split("\n## ", 1)[0]
    plan = [json.loads(x) for x in (tmp_path / "o" / "writeback-plan.ndjson").read_text().splitlines()]
    counts = {a: sum(p["action"] == a for p in plan) for a in ("create", "update", "unchanged")}
    assert f"would create {counts['create']} and update {counts['update']} resource(s)" in section
    assert "update ResearchSubject/thal-01-rs: status on-study → off-study; period.end none → 2004-06-30" in section
    assert "create: Eligibility: ineligible (not met: age 75; must be under 75) (docs/protocol.md §2)" in section
    assert "Changes to the hospital record" in (tmp_path / "o" / "report.html").read_text()
    quiet = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "n"), "--no-writeback"])
    assert quiet.exit_code == 0
    assert "Not planned: this run was made with `--no-writeback`." in (tmp_path / "n" / "report.md").read_text()


def test_evaluate_asks_for_or_refuses_the_paper_comparison(tmp_path: Path) -> None:
    """--compare-with-paper / --no-compare-with-paper reach the report; unset, the paper cohort is compared."""
    args = ["evaluate", str(PAPER), "--as-of", "2005-03-31"]
    for flag, compared in ((None, True), ("--no-compare-with-paper", False)):
        out = tmp_path / (flag or "default")
        result = CliRunner().invoke(main, [*args, "--out", str(out), *([flag] if flag else [])])
        assert result.exit_code == 0, result.output
        report = (out / "report.md").read_text()
        assert ("Published paper: not compared" in report) is not compared

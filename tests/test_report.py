"""The study team's report: the figures the golden test checks appear, and the HTML opens offline."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from builders import ROOT
from click.testing import CliRunner

from fhiradapter.cli import main

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"


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
        "no prior thalidomide",  # the criterion's label, not its id
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

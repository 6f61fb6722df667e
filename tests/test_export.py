"""Registry export: SQLite and a real PostgreSQL, idempotence, supersession, all-or-nothing runs, pseudonymisation.

Expected values come from the run's own results.json (the figures the export must carry), never from constants.
PostgreSQL tests start a throwaway cluster (``tests/pg_server.py``); without PostgreSQL they skip locally and
fail under CI (``CI`` set), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import csv
import json
import shutil
import stat
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from builders import AS_OF, ROOT, raise_thal03_afp
from pg_server import fresh_database
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import Engine
from test_protocol_s2_eligibility import SCREEN, good_record

from fhiradapter.core.evaluate import EvaluationSettings, evaluate_patient
from fhiradapter.core.extract import ClinicalExtract
from fhiradapter.core.registry import Pseudonymiser, SubjectView
from fhiradapter.core.results import PatientResult
from fhiradapter.errors import ConfigError, InputError, TargetError
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.common.out_folder import write_manifest
from fhiradapter.shell.registry import database
from fhiradapter.shell.registry import registry_db as db
from fhiradapter.shell.registry.export import export
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.pipeline import run_evaluate

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
KEY = b"0123456789abcdef0123456789abcdef-test-key"


def evaluate(src: Path, out: Path) -> dict[str, Any]:
    mappings, identity = load_mappings()
    run_evaluate(
        RunRequest(inputs=(src,), out=out, as_of=AS_OF, mappings=mappings, mappings_identity=identity, report=False)
    )
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("export") / "out"
    return out, evaluate(PAPER, out)


_ENGINES: list[Engine] = []


def engine_of(url: str) -> Engine:
    """An engine closed at the end of the test (pooled connections otherwise outlive it)."""
    engine = database.engine_for(url, duckdb=url.startswith("duckdb:"))
    _ENGINES.append(engine)
    return engine


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    while _ENGINES:
        _ENGINES.pop().dispose()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table and view, sorted; ``exported_at``/``superseded_at`` left out (wall-clock)."""
    names = inspect(engine).get_table_names() + inspect(engine).get_view_names()
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name in sorted(names):
            rows = conn.execute(text(f"SELECT * FROM {name}")).mappings().all()  # noqa: S608 - names from inspect
            out[name] = sorted(
                (tuple((k, v) for k, v in r.items() if k not in ("exported_at", "superseded_at")) for r in rows),
                key=repr,
            )
    return out


def typed_dump(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """The schema's tables read through SQLAlchemy's types (dates as dates on both dialects), in key order."""
    out = {}
    with engine.connect() as conn:
        for table in (db.runs, *db.RUN_TABLES):
            keys = list(table.primary_key.columns)
            rows = conn.execute(select(table).order_by(*keys)).mappings().all()
            out[table.name] = [{k: v for k, v in r.items() if k not in ("exported_at", "superseded_at")} for r in rows]
    return out


def expected_counts(results: dict[str, Any]) -> dict[str, int]:
    subjects = results["subjects"]
    return {
        "subjects": len(subjects),
        "eligibility_criteria": sum(len(s["eligibility"]["criteria"]) for s in subjects),
        "assessments": sum(len(s["assessments"]) for s in subjects),
        "best_responses": sum(1 for s in subjects if s["treated"]),
        "toxicities": sum(len(s["toxicities"]) for s in subjects),
        "dose_actions": sum(len(s["dose_actions"]) for s in subjects),
        "outcomes": sum(1 for s in subjects if s["os"]),
        "cohort_summaries": 1,
    }


# ---------------------------------------------------------------------------------------------- SQLite


def test_sqlite_export_has_every_result_row_once(paper: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, results = paper
    url = sqlite_url(tmp_path / "r.db")
    first = export(out, url)
    counts = {name: c for name, c, _u, _s in first.lines}
    assert counts == expected_counts(results)
    engine = engine_of(url)
    before = dump(engine)
    second = export(out, url)
    assert not second.new_run
    assert {name: (i, u) for name, i, u, _s in second.lines} == {n: (0, c) for n, c in counts.items()}
    assert dump(engine) == before  # no duplicate, nothing touched
    with engine.connect() as conn:
        for table, n in counts.items():
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == n  # noqa: S608


def test_current_views_give_the_cohort_figures_of_results_json(
    paper: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, results = paper
    url = sqlite_url(tmp_path / "r.db")
    export(out, url)
    cohort = results["cohort"]
    with engine_of(url).connect() as conn:
        row = conn.execute(text("SELECT * FROM current_cohort_summaries")).mappings().one()
        assert (row["orr_count"], row["orr_n"]) == (cohort["orr"]["count"], cohort["orr"]["n"])
        assert row["orr_rate"] == pytest.approx(cohort["orr"]["rate"])
        assert row["orr_ci_low"] == pytest.approx(cohort["orr"]["ci_low"])
        assert row["orr_ci_high"] == pytest.approx(cohort["orr"]["ci_high"])
        assert row["median_os_days"] == cohort["median_os_days"]
        # ORR recomputed in SQL from the per-subject best responses agrees with the stored summary.
        responders, treated = conn.execute(
            text(
                "SELECT sum(CASE WHEN best_response IN ('CR','PR') THEN 1 ELSE 0 END), count(*) "
                "FROM current_best_responses"
            )
        ).one()
        assert responders / treated == pytest.approx(cohort["orr"]["rate"])


def test_documented_query_which_patients_progressed_and_when(
    paper: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, results = paper
    url = sqlite_url(tmp_path / "r.db")
    export(out, url)
    readme = (ROOT / "docs" / "export.md").read_text()
    start = readme.index("-- which patients progressed, and when")
    query = readme[start : readme.index(";", start) + 1]
    assert query.strip() == (ROOT / "docs" / "queries" / "progressed.sql").read_text().strip()
    with engine_of(url).connect() as conn:
        got = {(k, str(d)) for k, d in conn.execute(text(query)).all()}
    expected = set()
    for s in results["subjects"]:
        pd_dates = [a["date"] for a in s["assessments"] if a["response"] == "PD"]
        if pd_dates:
            expected.add((s["patient"].removeprefix("Patient/"), min(pd_dates)))
    assert got == expected and expected


def changed_cohort(tmp_path: Path) -> dict[str, Any]:
    """The paper cohort with thal-03's day-57 AFP raised: that assessment, and its best response, become PD."""
    src = tmp_path / "changed-in"
    shutil.copytree(PAPER, src)
    raise_thal03_afp(src)
    return evaluate(src, tmp_path / "changed-out")


def test_a_new_run_supersedes_the_previous_one_and_history_stays(
    paper: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, results = paper
    url = sqlite_url(tmp_path / "r.db")
    first = export(out, url)
    changed = changed_cohort(tmp_path)
    second = export(tmp_path / "changed-out", url)
    assert second.new_run and second.run.run_id != first.run.run_id
    lines = {name: (i, u, s) for name, i, u, s in second.lines}
    # Only thal-03's rows differ: the best response, and the one changed assessment.
    assert lines["best_responses"] == (8, 7, 8)
    assert lines["subjects"][1] == 14
    assert lines["assessments"][0] - lines["assessments"][1] >= 1
    with engine_of(url).connect() as conn:
        runs: dict[str, str | None] = dict(conn.execute(text("SELECT run_id, superseded_by FROM runs")).all())
        assert runs == {first.run.run_id: second.run.run_id, second.run.run_id: None}
        best: dict[str, str] = dict(
            conn.execute(text("SELECT subject_key, best_response FROM current_best_responses")).all()
        )
        assert best["thal-03"] == "PD"
        assert best == {s["patient"][8:]: s["best_response"] for s in changed["subjects"] if s["treated"]}
        history = conn.execute(
            text("SELECT best_response FROM best_responses WHERE subject_key = 'thal-03' AND run_id = :r"),
            {"r": first.run.run_id},
        ).scalar_one()
        old = next(s for s in results["subjects"] if s["patient"] == "Patient/thal-03")
        assert history == old["best_response"] != "PD"
        assert conn.execute(text("SELECT count(*) FROM current_subjects")).scalar_one() == 14
        assert conn.execute(text("SELECT count(*) FROM subjects")).scalar_one() == 28


def test_re_exporting_an_older_run_makes_it_current_again(paper: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, results = paper
    url = sqlite_url(tmp_path / "r.db")
    first = export(out, url)
    changed_cohort(tmp_path)
    second = export(tmp_path / "changed-out", url)
    third = export(out, url)  # the data went back to what the first run saw
    assert not third.new_run and third.reinstated
    with engine_of(url).connect() as conn:
        runs: dict[str, str | None] = dict(conn.execute(text("SELECT run_id, superseded_by FROM runs")).all())
        assert runs == {first.run.run_id: None, second.run.run_id: first.run.run_id}
        best: dict[str, str] = dict(
            conn.execute(text("SELECT subject_key, best_response FROM current_best_responses")).all()
        )
        assert best == {s["patient"][8:]: s["best_response"] for s in results["subjects"] if s["treated"]}
        assert conn.execute(text("SELECT count(*) FROM subjects")).scalar_one() == 28  # nothing duplicated


class Boom(RuntimeError):
    pass


def fail_after(n: int) -> Any:
    """A progress hook that fails after ``n`` subjects were written: half-way through the run."""
    seen: list[int] = []

    def hook(step: int) -> None:
        seen.append(step)
        if len(seen) == n:
            raise Boom(f"injected failure after {n} subjects")

    return hook


def test_a_failure_half_way_leaves_the_database_as_it_was(paper: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = paper
    url = sqlite_url(tmp_path / "r.db")
    engine = engine_of(url)
    # On an empty (migrated) database: the failed run leaves no trace.
    with pytest.raises(Boom):
        export(out, url, progress=fail_after(7))
    assert all(not rows for name, rows in dump(engine).items() if name != "alembic_version")
    # On a database holding a run: a failed newer run neither adds rows nor supersedes the old one.
    export(out, url)
    before = dump(engine)
    changed_cohort(tmp_path)
    with pytest.raises(Boom):
        export(tmp_path / "changed-out", url, progress=fail_after(7))
    assert dump(engine) == before


def test_a_results_file_in_another_layout_exports_the_same_rows(
    paper: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, results = paper
    other = tmp_path / "reindented"
    shutil.copytree(out, other)
    (other / "results.json").write_text(json.dumps(results, indent=2))  # a hand-edited, re-indented copy
    a, b = sqlite_url(tmp_path / "a.db"), sqlite_url(tmp_path / "b.db")
    export(out, a)
    with pytest.raises(InputError, match="not the file its run wrote"):  # a changed set is refused ...
        export(other, b)
    manifest = json.loads((other / "manifest.json").read_text())  # ... unless its manifest says it is whole
    write_manifest(other, {k: v for k, v in manifest.items() if k != "files"}, list(manifest["files"]))
    export(other, b)
    strip = {"runs": ("results_sha256", "run_id")}
    da, db_ = typed_dump(engine_of(a)), typed_dump(engine_of(b))
    for table in da:
        drop = (*strip.get(table, ()), "run_id")
        assert [{k: v for k, v in r.items() if k not in drop} for r in da[table]] == [
            {k: v for k, v in r.items() if k not in drop} for r in db_[table]
        ], table


def test_a_truncated_results_file_is_refused_and_nothing_is_written(
    paper: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = paper
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    lines = (cut / "results.json").read_bytes().splitlines(keepends=True)
    (cut / "results.json").write_bytes(b"".join(lines[:5]))
    url = sqlite_url(tmp_path / "r.db")
    with pytest.raises(InputError, match="not the file its run wrote"):  # the manifest refuses it first
        export(cut, url)
    manifest = json.loads((cut / "manifest.json").read_text())  # and the reader, were the manifest rewritten
    write_manifest(cut, {k: v for k, v in manifest.items() if k != "files"}, list(manifest["files"]))
    with pytest.raises(InputError, match="truncated"):
        export(cut, url)
    assert all(not rows for name, rows in dump(engine_of(url)).items() if name != "alembic_version")
    (cut / "results.json").write_bytes(b"".join([*lines[:3], b"{not json\n", *lines[4:]]))
    write_manifest(cut, {k: v for k, v in manifest.items() if k != "files"}, list(manifest["files"]))
    with pytest.raises(InputError, match="line 4 is not an fhiradapter results record"):
        export(cut, url)


def test_a_subject_without_extract_is_exported_from_its_results(
    paper: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, results = paper
    part = tmp_path / "part"
    shutil.copytree(out, part)
    kept = [x for x in (part / "clinical.ndjson").read_text().splitlines() if "thal-02" not in x]
    (part / "clinical.ndjson").write_text("\n".join(kept) + "\n")
    url = sqlite_url(tmp_path / "r.db")
    with pytest.raises(InputError, match="not the file its run wrote"):  # a changed set is refused ...
        export(part, url)
    manifest = json.loads((part / "manifest.json").read_text())  # ... unless its manifest says it is whole
    write_manifest(part, {k: v for k, v in manifest.items() if k != "files"}, list(manifest["files"]))
    export(part, url)
    with engine_of(url).connect() as conn:
        rows: dict[str, int | None] = dict(conn.execute(text("SELECT subject_key, age_at_index FROM subjects")).all())
    assert len(rows) == len(results["subjects"])
    thal02 = next(s for s in results["subjects"] if s["patient"] == "Patient/thal-02")
    assert rows["thal-02"] == thal02["characteristics"]["age"]  # age at screening from results, no birth date


def test_the_migrated_schema_matches_the_one_definition(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = engine_of(sqlite_url(tmp_path / "m.db"))
    db.migrate(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []
        views = set(inspect(conn).get_view_names())
    assert views == {f"current_{n}" for n in db.VIEWS}


def test_database_errors_are_reported_without_row_values(paper: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = paper
    url = sqlite_url(tmp_path / "r.db")
    export(out, url)
    engine = engine_of(url)
    with engine.begin() as conn:  # sabotage: a table the export writes to is gone
        conn.execute(text("DROP VIEW current_outcomes"))
        conn.execute(text("DROP TABLE outcomes"))
    changed_cohort(tmp_path)
    before = dump(engine)
    with pytest.raises(TargetError) as err:
        export(tmp_path / "changed-out", url)
    assert "nothing was changed" in str(err.value) and "thal-" not in str(err.value)
    assert dump(engine) == before


def test_a_password_in_the_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="PGPASSWORD"):
        database.engine_for("postgresql://user:secret@127.0.0.1/db")


# ---------------------------------------------------------------------------------------------- PostgreSQL


def test_postgresql_and_sqlite_hold_the_same_rows(
    paper: tuple[Path, dict[str, Any]], pg_url: str, tmp_path: Path
) -> None:
    out, results = paper
    lite = sqlite_url(tmp_path / "r.db")
    export(out, lite)
    export(out, pg_url)
    pg, sq = typed_dump(engine_of(pg_url)), typed_dump(engine_of(lite))
    assert pg.keys() == sq.keys()
    for table, rows in pg.items():
        assert len(rows) == len(sq[table]) == expected_counts(results).get(table, 1), table
        for a, b in zip(rows, sq[table], strict=True):
            assert a.keys() == b.keys()
            for key, value in a.items():
                assert b[key] == (pytest.approx(value) if isinstance(value, float) else value), (table, key)
    again = export(out, pg_url)
    assert not again.new_run
    with engine_of(pg_url).connect() as conn:
        row = conn.execute(text("SELECT orr_rate, median_os_days FROM current_cohort_summaries")).one()
        assert row[0] == pytest.approx(results["cohort"]["orr"]["rate"])
        assert row[1] == results["cohort"]["median_os_days"]
        assert conn.execute(select(func.count()).select_from(db.subjects)).scalar_one() == len(results["subjects"])


def test_postgresql_schema_matches_and_failures_roll_back(
    paper: tuple[Path, dict[str, Any]], pg_url: str, tmp_path: Path
) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    out, _ = paper
    engine = engine_of(pg_url)
    db.migrate(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []
    export(out, pg_url)
    before = dump(engine)
    changed_cohort(tmp_path)
    with pytest.raises(Boom):
        export(tmp_path / "changed-out", pg_url, progress=fail_after(7))
    assert dump(engine) == before
    second = export(tmp_path / "changed-out", pg_url)
    assert second.new_run and {n: s for n, _i, _u, s in second.lines}["subjects"] == 14


# ---------------------------------------------------------------------------------------------- DuckDB


def test_duckdb_and_sqlite_hold_the_same_rows(paper: Any, tmp_path: Path) -> None:
    pytest.importorskip("duckdb_engine")
    out, results = paper
    lite, duck = sqlite_url(tmp_path / "r.db"), f"duckdb:///{tmp_path / 'r.duckdb'}"
    export(out, lite)
    first = export(out, duck)
    assert stat.S_IMODE((tmp_path / "r.duckdb").stat().st_mode) == 0o600  # patient data: never the umask's mode
    assert not list(tmp_path.glob(".duckdb-*"))  # the folder it was created in is gone
    assert {name: c for name, c, _u, _s in first.lines} == expected_counts(results)
    dk, sq = typed_dump(engine_of(duck)), typed_dump(engine_of(lite))
    assert dk.keys() == sq.keys()
    for table, rows in dk.items():
        assert len(rows) == len(sq[table]) == expected_counts(results).get(table, 1), table
        assert rows == sq[table], table  # floats too, to the last bit: DOUBLE, as SQLite's REAL
    orr = results["cohort"]["orr"]
    assert (dk["cohort_summaries"][0]["orr_ci_low"], dk["cohort_summaries"][0]["orr_ci_high"]) == (
        orr["ci_low"],
        orr["ci_high"],
    )
    for _engine in _ENGINES:
        _engine.dispose()  # DuckDB lets one process hold a file at a time
    assert not export(out, duck).new_run
    with pytest.raises(ConfigError, match="registry exports only"):  # the sync store stays SQLite or PostgreSQL
        database.engine_for(duck)


def test_duckdb_keeps_history_supersedes_and_rolls_back(paper: Any, tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    pytest.importorskip("duckdb_engine")
    out, _ = paper
    url = f"duckdb:///{tmp_path / 'r.duckdb'}"
    first = export(out, url)
    changed = changed_cohort(tmp_path)
    with pytest.raises(Boom):
        export(tmp_path / "changed-out", url, progress=fail_after(7))
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as conn:  # the failed run left nothing
        assert conn.execute("SELECT count(*), count(DISTINCT run_id) FROM subjects").fetchone() == (14, 1)
    second = export(tmp_path / "changed-out", url)
    assert second.new_run and {n: s for n, _i, _u, s in second.lines}["subjects"] == 14
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as conn:  # as a researcher opens it
        runs = dict(conn.execute("SELECT run_id, superseded_by FROM runs").fetchall())
        assert runs == {first.run.run_id: second.run.run_id, second.run.run_id: None}
        best = dict(conn.execute("SELECT subject_key, best_response FROM current_best_responses").fetchall())
        assert best == {s["patient"][8:]: s["best_response"] for s in changed["subjects"] if s["treated"]}
        assert conn.execute("SELECT count(*) FROM subjects").fetchone() == (28,)


# ---------------------------------------------------------------------------------------------- pseudonymisation


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The paper cohort with names and MRNs on every patient; returns the results folder and the identifying strings."""
    base = tmp_path_factory.mktemp("named")
    src = base / "in"
    shutil.copytree(PAPER, src)
    identifying: list[str] = []
    lines = []
    for n, line in enumerate((src / "Patient.ndjson").read_text().splitlines()):
        res = json.loads(line)
        res["name"] = [{"family": f"Familyname{n}", "given": [f"Givenname{n}"]}]
        identifying += [res["id"], res["birthDate"], f"Familyname{n}", f"Givenname{n}"]
        identifying += [i["value"] for i in res.get("identifier", [])]
        lines.append(json.dumps(res))
    (src / "Patient.ndjson").write_text("\n".join(lines) + "\n")
    bundle = json.loads((src / "screening-candidates.json").read_text())
    for e in bundle["entry"]:
        if e["resource"]["resourceType"] == "Patient":
            identifying += [e["resource"]["id"], e["resource"].get("birthDate", "")]
    evaluate(src, base / "out")
    return base / "out", [s for s in identifying if s]


def scan(values: Iterator[Any], identifying: list[str]) -> list[str]:
    found = []
    for value in values:
        cell = str(value).lower()
        found += [s for s in identifying if s.lower() in cell]
    return found


def all_cells(engine: Engine) -> Iterator[Any]:
    for rows in dump(engine).values():
        for row in rows:
            for _key, value in row:
                if value is not None:
                    yield value


def test_pseudonymised_database_holds_no_identity(named: tuple[Path, list[str]], tmp_path: Path) -> None:
    out, identifying = named
    url = sqlite_url(tmp_path / "registry.db")
    summary = export(out, url, key=KEY)
    assert summary.run.pseudonymised
    assert scan(all_cells(engine_of(url)), [*identifying, KEY.decode()]) == []
    with engine_of(url).connect() as conn:
        keys = [r[0] for r in conn.execute(text("SELECT subject_key FROM subjects"))]
        ages = conn.execute(text("SELECT count(age_at_index), count(birth_date) FROM subjects")).one()
        details = conn.execute(text("SELECT count(detail), count(evidence) FROM eligibility_criteria")).one()
    assert len(set(keys)) == 14 and all(len(k) == 32 for k in keys)
    assert ages == (14, 0) and details == (0, 0)
    # The same key gives the same pseudonyms (a registry can link runs); a different key does not.
    pseudo = Pseudonymiser(KEY)
    assert pseudo.pseudonym("Patient/thal-01") in keys
    assert Pseudonymiser(KEY[::-1]).pseudonym("Patient/thal-01") not in keys


def test_pseudonymised_sdtm_files_hold_no_identity(named: tuple[Path, list[str]], tmp_path: Path) -> None:
    out, identifying = named
    for kind in ("csv", "parquet"):
        folder = tmp_path / kind
        export(out, f"{kind}:{folder}", "sdtm", key=KEY)
        export(out, f"{kind}:{folder / 'tables'}", "tables", key=KEY)
        cells: list[Any] = []
        for path in folder.rglob("*"):
            if path.suffix == ".csv" or path.suffix == ".json":
                cells.append(path.read_text())
            elif path.suffix == ".parquet":
                cells += [v for col in pq.read_table(path).to_pydict().values() for v in col]
        assert scan(iter(cells), [*identifying, KEY.decode()]) == [], kind
        dm = pq.read_table(folder / "DM.parquet").to_pylist() if kind == "parquet" else _csv(folder / "DM.csv")
        assert all(not r["BRTHDTC"] for r in dm) and all(r["AGE"] not in (None, "") for r in dm)


def test_pseudonymised_postgresql_holds_no_identity(named: tuple[Path, list[str]], pg_url: str) -> None:
    out, identifying = named
    url = fresh_database(pg_url, "pseudonymised")
    export(out, url, key=KEY)
    assert scan(all_cells(engine_of(url)), [*identifying, KEY.decode()]) == []
    assert dump(engine_of(url))["subjects"]  # the scan looked at rows


def test_identified_export_keeps_what_pseudonymisation_drops(named: tuple[Path, list[str]], tmp_path: Path) -> None:
    out, identifying = named
    url = sqlite_url(tmp_path / "r.db")
    export(out, url)
    found = set(scan(all_cells(engine_of(url)), identifying))
    assert "thal-01" in found and "1951-04-16" in found  # the scan can fail: it finds what is there


def test_without_a_key_pseudonymisation_is_refused(
    named: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from fhiradapter.cli import main

    out, _ = named
    monkeypatch.delenv("FHIRADAPTER_PSEUDONYM_KEY", raising=False)
    target = tmp_path / "r.db"
    result = CliRunner().invoke(main, ["export", str(out), "--to", sqlite_url(target), "--pseudonymise"])
    assert result.exit_code == 10 and "no default key" in result.output
    assert not target.exists()
    short = tmp_path / "short.key"
    short.write_text("too-short")
    short.chmod(0o600)
    result = CliRunner().invoke(
        main, ["export", str(out), "--to", sqlite_url(target), "--pseudonymise", "--key-file", str(short)]
    )
    assert result.exit_code == 10 and "at least 32 bytes" in result.output
    loose = tmp_path / "loose.key"
    loose.write_bytes(KEY)
    loose.chmod(0o644)
    result = CliRunner().invoke(
        main, ["export", str(out), "--to", sqlite_url(target), "--pseudonymise", "--key-file", str(loose)]
    )
    assert result.exit_code == 10 and "chmod 600" in result.output
    loose.chmod(stat.S_IRUSR | stat.S_IWUSR)
    result = CliRunner().invoke(
        main, ["export", str(out), "--to", sqlite_url(target), "--pseudonymise", "--key-file", str(loose)]
    )
    assert result.exit_code == 0, result.output
    assert KEY.decode() not in result.output and "pseudonymised" in result.output


def test_the_key_never_shows_in_repr() -> None:
    assert KEY.decode() not in repr(Pseudonymiser(KEY))
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Pseudonymiser(b"short")


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------------- study days


def a_result(**changes: Any) -> PatientResult:
    """One patient's result (screened, every criterion known), with ``changes``: what a test varies."""
    mappings = load_mappings()[0]
    result = evaluate_patient(good_record(), EvaluationSettings(SCREEN, mappings, screen_candidates=True)).result
    assert result is not None
    return msgspec.structs.replace(result, **changes)


def an_extract(**changes: Any) -> ClinicalExtract:
    """A clinical extract with nothing in it, but ``changes``."""
    empty = ClinicalExtract("Patient/p", None, None, None, (), (), (), ())
    return msgspec.structs.replace(empty, **changes)


@pytest.mark.parametrize(
    ("day", "expected"), [("2003-06-01", -1), ("2003-06-02", 1), ("2003-06-03", 2), ("2003-05-03", -30), (None, None)]
)
def test_study_day_has_no_day_zero(day: str | None, expected: int | None) -> None:
    view = SubjectView(a_result(index_date=date(2003, 6, 2)), None, None)
    assert view.study_day(day) == expected


def test_age_at_index_is_completed_years_on_the_index_date() -> None:
    def age(birth: str) -> int | None:
        view = SubjectView(a_result(index_date=date(2003, 6, 2)), an_extract(birth_date=birth), None)
        return view.age_at_reference

    assert (age("1951-06-02"), age("1951-06-03"), age("1951-06-01")) == (52, 51, 52)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_an_export_folder_is_whole_or_says_it_is_not(
    paper: tuple[Path, dict[str, Any]], tmp_path: Path, kind: str
) -> None:
    """run.json goes first and comes back last with every file's sha256: an export that failed half way leaves
    a folder without it, never one whose tables look current but mix two runs."""
    import hashlib

    out, _ = paper
    folder = tmp_path / "export"
    export(out, f"{kind}:{folder}")
    run = json.loads((folder / "run.json").read_text())
    assert run["files"] and all(
        hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest for name, digest in run["files"].items()
    )
    assert f"subjects.{kind}" in run["files"] and "data-dictionary.csv" in run["files"]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("fhiradapter.shell.registry.export._FileSink.add", broken)
        with pytest.raises(TargetError, match="No space left on device"):
            export(out, f"{kind}:{folder}")
    assert not (folder / "run.json").exists()  # the old set's tables remain, but no longer claim to be whole

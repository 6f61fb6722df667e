"""The registry database: one SQLAlchemy Core schema for SQLite and PostgreSQL, migrated by Alembic, written per run.

Every table is a history table keyed by ``run_id``; ``runs.superseded_by`` marks a run replaced by a newer one
for the same study, as-of date and identity mode, and the ``current_*`` views (created by the migrations) show
only rows of runs that are not superseded. A run is written in one transaction: a failure part-way leaves the
database as it was. Writing the same run again (same results, same key) changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    exists,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from fhiradapter.core.registry import Cell, Row, RunInfo
from fhiradapter.errors import TargetError
from fhiradapter.shell.registry.database import db_reason

metadata = MetaData()


def _run_fk() -> Column[str]:
    return Column("run_id", String(32), ForeignKey("runs.run_id"), primary_key=True, comment="the export run")


def _subject() -> Column[str]:
    return Column("subject_key", String(64), primary_key=True, comment="Patient id, or its pseudonym (HMAC)")


runs = Table(
    "runs",
    metadata,
    Column("run_id", String(32), primary_key=True, comment="hash of the results and the identity mode"),
    Column("study_id", String(64), nullable=False, comment="protocol id (mappings/protocol.toml)"),
    Column("as_of", Date, nullable=False, comment="evaluate --as-of"),
    Column("adapter_version", String(32), nullable=False),
    Column("mappings_version", String(32), nullable=False),
    Column("mappings_sha256", String(64), nullable=False),
    Column("results_sha256", String(64), nullable=False, comment="sha256 of results.json"),
    Column("pseudonymised", Boolean, nullable=False),
    Column("key_id", String(16), comment="names the pseudonymisation key without revealing it"),
    Column("input_files", Integer, nullable=False),
    Column("records_read", Integer, nullable=False),
    Column("records_used", Integer, nullable=False),
    Column("records_rejected", Integer, nullable=False),
    Column("patients", Integer, nullable=False),
    Column("exported_at", DateTime(timezone=True), nullable=False),
    Column("superseded_by", String(32), comment="the newer run for the same study, as-of and identity mode"),
    Column("superseded_at", DateTime(timezone=True)),
    comment="one row per exported evaluate run",
)

subjects = Table(
    "subjects",
    metadata,
    _run_fk(),
    _subject(),
    Column("sex", String(16)),
    Column("birth_date", String(10), comment="empty when pseudonymised"),
    Column("age_at_index", Integer, comment="completed years at the index date (screening if untreated)"),
    Column("screening_date", Date),
    Column("eligibility_status", String(16), comment="eligible | ineligible | undetermined"),
    Column("child_pugh_score", Integer),
    Column("child_pugh_class", String(1)),
    Column("treated", Boolean, nullable=False),
    Column("index_date", Date, comment="first study thalidomide dose"),
    Column("last_dose_date", Date),
    Column("treatment_days", Integer),
    Column("research_subject_status", String(32), comment="R4 ResearchSubject.status code"),
    Column("issues", Integer, nullable=False, comment="data-quality findings (see results.json)"),
)

eligibility_criteria = Table(
    "eligibility_criteria",
    metadata,
    _run_fk(),
    _subject(),
    Column("criterion_id", String(48), primary_key=True, comment="docs/protocol.md §2 criterion id"),
    Column("status", String(16), nullable=False, comment="met | not_met | unknown"),
    Column("value", Text, comment="the value judged (JSON when structured)"),
    Column("detail", Text, comment="dropped when pseudonymised"),
    Column("evidence", Text, comment="FHIR references used; dropped when pseudonymised"),
)

assessments = Table(
    "assessments",
    metadata,
    _run_fk(),
    _subject(),
    Column("seq", Integer, primary_key=True),
    Column("assessment_date", Date),
    Column("study_day", Integer, comment="day 1 = index date"),
    Column("response", String(2), comment="CR | PR | SD | PD | NE (docs/protocol.md §4)"),
    Column("spd_mm2", Float, comment="sum of products of diameters"),
    Column("afp_ng_ml", Float),
    Column("basis", String(16)),
    Column("confirmed", Boolean),
    Column("evidence", Text, comment="dropped when pseudonymised"),
)

best_responses = Table(
    "best_responses",
    metadata,
    _run_fk(),
    _subject(),
    Column("best_response", String(2)),
    Column("reason", Text, comment="dropped when pseudonymised"),
    Column("response_start", Date),
    Column("response_end", Date),
    Column("response_days", Integer),
    Column("response_censored", Boolean),
)

toxicities = Table(
    "toxicities",
    metadata,
    _run_fk(),
    _subject(),
    Column("term", String(48), primary_key=True, comment="CTC v2.0 term key"),
    Column("meddra", String(16), comment="MedDRA LLT code"),
    Column("worst_grade", Integer, nullable=False),
    Column("source", String(16), comment="reported | lab | derived"),
    Column("first_date", String(10)),
    Column("criteria", String(16)),
)

dose_actions = Table(
    "dose_actions",
    metadata,
    _run_fk(),
    _subject(),
    Column("seq", Integer, primary_key=True),
    Column("action_date", Date),
    Column("action", String(16), comment="interrupt | discontinue"),
    Column("term", String(48)),
)

outcomes = Table(
    "outcomes",
    metadata,
    _run_fk(),
    _subject(),
    Column("os_days", Integer, comment="death or censoring date - index date + 1"),
    Column("os_event", Boolean, nullable=False, comment="true = death"),
    Column("os_end_date", Date),
    Column("os_basis", String(64)),
)

cohort_summaries = Table(
    "cohort_summaries",
    metadata,
    _run_fk(),
    *(Column(name, Integer) for name in ("n_treated", "n_screened_only", "cr", "pr", "sd", "pd", "ne")),
    Column("orr_count", Integer),
    Column("orr_n", Integer),
    Column("orr_rate", Float),
    Column("orr_ci_low", Float),
    Column("orr_ci_high", Float),
    Column("dcr_count", Integer),
    Column("dcr_n", Integer),
    Column("dcr_rate", Float),
    Column("dcr_ci_low", Float),
    Column("dcr_ci_high", Float),
    Column("ci_method", String(32)),
    Column("median_os_days", Float, comment="Kaplan-Meier; empty = not reached"),
    Column("os_ci_low", Float),
    Column("os_ci_high", Float),
    Column("os_events", Integer),
    Column("median_treatment_days", Float),
    Column("treatment_days_min", Integer),
    Column("treatment_days_max", Integer),
)

# Tables written per run, in dependency-free order (runs first).
RUN_TABLES: list[Table] = [
    subjects,
    eligibility_criteria,
    assessments,
    best_responses,
    toxicities,
    dose_actions,
    outcomes,
    cohort_summaries,
]
VIEWS = ["runs", *(t.name for t in RUN_TABLES)]  # current_<name> views, created by migrations/versions


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest Alembic revision (creates it on an empty database)."""
    from alembic import command  # noqa: PLC0415 - only when exporting to SQL
    from alembic.config import Config  # noqa: PLC0415

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@dataclass
class TableCount:
    inserted: int = 0
    unchanged: int = 0
    superseded: int = 0


@dataclass
class WriteResult:
    run_id: str
    new_run: bool
    counts: dict[str, TableCount] = field(default_factory=dict)
    superseded_runs: list[str] = field(default_factory=list)
    reinstated: bool = False  # an older, superseded run with the same results became current again


_DATE_COLUMNS = {(t.name, c.name) for t in (runs, *RUN_TABLES) for c in t.columns if isinstance(c.type, Date)}


# A row as the database takes it: the export's cells, with ISO dates as dates (and a run's timestamps).
SqlRow = dict[str, Cell | date]


def _typed(table: Table, row: Mapping[str, Cell | date]) -> SqlRow:
    out: SqlRow = dict(row)
    for key, value in row.items():
        if (table.name, key) in _DATE_COLUMNS and isinstance(value, str):
            out[key] = date.fromisoformat(value) if len(value) == 10 else None
    return out


BATCH_ROWS = 2000  # rows buffered per table before an executemany


def write_run(
    engine: Engine,
    info: RunInfo,
    bundles: Iterable[Mapping[str, list[Row]]],
    cohort: Callable[[], Row],
    progress: Callable[[int], None] | None = None,
) -> WriteResult:
    """Write one run in one transaction, subject by subject in batches; any exception rolls it all back.

    ``bundles`` yields each subject's rows per table; ``cohort()`` gives the cohort row once they are consumed;
    ``progress(1)`` is called after each subject.
    """
    result = WriteResult(info.run_id, new_run=False)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # One export at a time per database: two concurrent runs must not both supersede the same one.
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('fhiradapter-registry-export'))"))
            known = conn.execute(select(runs.c.superseded_by).where(runs.c.run_id == info.run_id)).first()
            now = datetime.now(UTC)
            if known:
                if known[0] is not None:
                    # The same results as an older run came back (data reverted): that run is current again.
                    previous = [r for r in _current_runs(conn, info) if r != info.run_id]
                    _supersede(conn, previous, info.run_id, now)
                    conn.execute(
                        update(runs).where(runs.c.run_id == info.run_id).values(superseded_by=None, superseded_at=None)
                    )
                    result.superseded_runs, result.reinstated = previous, True
                for table in RUN_TABLES:
                    result.counts[table.name] = TableCount(unchanged=_count(conn, table, [info.run_id]))
                return result
            result.new_run = True
            previous = _current_runs(conn, info)
            conn.execute(
                runs.insert(),
                [_typed(runs, {**info.__dict__, "exported_at": now, "superseded_by": None, "superseded_at": None})],
            )
            buffers: dict[str, list[SqlRow]] = {t.name: [] for t in RUN_TABLES}
            inserted = dict.fromkeys(buffers, 0)
            by_name = {t.name: t for t in RUN_TABLES}

            def flush(name: str) -> None:
                if buffers[name]:
                    conn.execute(by_name[name].insert(), buffers[name])
                    inserted[name] += len(buffers[name])
                    buffers[name] = []

            for bundle in bundles:
                for name, rows in bundle.items():
                    buffers[name].extend(_typed(by_name[name], {**r, "run_id": info.run_id}) for r in rows)
                    if len(buffers[name]) >= BATCH_ROWS:
                        flush(name)
                if progress:
                    progress(1)
            buffers["cohort_summaries"].append(_typed(cohort_summaries, {**cohort(), "run_id": info.run_id}))
            for name in buffers:
                flush(name)
            for table in RUN_TABLES:
                count = TableCount(inserted=inserted[table.name])
                if previous:
                    count.superseded = _count(conn, table, previous)
                    count.unchanged = _unchanged(conn, table, info.run_id, previous)
                result.counts[table.name] = count
            _supersede(conn, previous, info.run_id, now)
            result.superseded_runs = previous
    except SQLAlchemyError as exc:
        raise TargetError(f"database write failed, nothing was changed: {db_reason(exc)}") from None
    return result


def _count(conn: Connection, table: Table, run_ids: list[str]) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(table.c.run_id.in_(run_ids))).scalar_one())


def _unchanged(conn: Connection, table: Table, run_id: str, previous: list[str]) -> int:
    """Rows of the new run identical (every column but run_id) to a row of a run it supersedes."""
    old = table.alias("old")
    same = [
        old.c[c.name] == table.c[c.name] if c.primary_key else old.c[c.name].is_not_distinct_from(table.c[c.name])
        for c in table.columns
        if c.name != "run_id"
    ]
    match = exists(select(literal(1)).select_from(old).where(old.c.run_id.in_(previous), *same))
    query = select(func.count()).select_from(table).where(table.c.run_id == run_id, match)
    return int(conn.execute(query).scalar_one())


def _supersede(conn: Connection, previous: list[str], run_id: str, now: datetime) -> None:
    if previous:
        conn.execute(update(runs).where(runs.c.run_id.in_(previous)).values(superseded_by=run_id, superseded_at=now))


def _current_runs(conn: Connection, info: RunInfo) -> list[str]:
    query = select(runs.c.run_id).where(
        runs.c.study_id == info.study_id,
        runs.c.as_of == date.fromisoformat(info.as_of),
        runs.c.pseudonymised == info.pseudonymised,
        runs.c.superseded_by.is_(None),
    )
    return [r[0] for r in conn.execute(query)]

"""The embedded sync store: per-server watermarks, a mirror of every resource pulled, the runs and their outcome.

SQLite in the data folder by default (``sync.db``); ``--store`` takes ``sqlite:///FILE`` or
``postgresql://USER@HOST/DB`` (the password from PGPASSWORD or ~/.pgpass, as for ``export``). Tables:
- ``sync_runs``: one row per sync (started, finished, status running | ok | conflicts | errors | dry-run |
  failed | interrupted (Ctrl-C), the summary, with why a failed or interrupted run stopped); ``fhiradapter
  runs`` lists them;
- ``watermarks``: per (server, study) the server time the last *successful* pull started at; ``--since auto``
  pulls what changed after it. A run that dies keeps the old watermark, so the next run pulls again what the
  failed one may have missed (upserts are idempotent and writes are conditional: nothing duplicates);
- ``resources``: the last-seen version of every pulled resource (JSON), with a deleted flag; evaluation reads
  the study's non-deleted resources from here, so an incremental pull still evaluates whole patients;
- ``written``: every write the sync sent (method, url, condition, status, the server's location, outcome);
- ``server_limits``: per server, what it takes in one transaction (``limits.TransactionLimit``, learnt from its
  refusals), so that the next run sends parts it takes from the start. Each run that writes tries twice that
  (``TransactionLimit.probe``) and keeps what it finds, so a limit learnt from a passing refusal wears off;
  the row goes once the server takes ``--chunk``. ``fhiradapter runs`` shows the rows; ``runs
  --reset-limits SERVER`` removes one.
The schema is created on first use (``create_all``) and carries a version row; a store from a newer
fhiradapter is refused rather than misread.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import orjson
from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from fhiradapter.core.json_types import JsonObject, member
from fhiradapter.core.resource_types import type_problem
from fhiradapter.errors import ConfigError, TargetError
from fhiradapter.shell.common.files import open_new_text
from fhiradapter.shell.registry.database import db_reason, engine_for
from fhiradapter.shell.server import run_record
from fhiradapter.shell.server.limits import TransactionLimit
from fhiradapter.shell.server.run_record import SyncRecord

SCHEMA_VERSION = 1
DATA_DIR_ENV = "FHIRADAPTER_DATA_DIR"

metadata = MetaData()

store_meta = Table("store_meta", metadata, Column("key", String(32), primary_key=True), Column("value", String(64)))

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=True),
    Column("server", String(512), nullable=False),
    Column("study", String(256), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(16), nullable=False),
    Column("since", String(40)),
    Column("dry_run", Boolean, nullable=False),
    Column("summary", Text),
)

watermarks = Table(
    "watermarks",
    metadata,
    Column("server", String(512), primary_key=True),
    Column("study", String(256), primary_key=True),
    Column("watermark", String(40), nullable=False),
    Column("run_id", Integer, nullable=False),
)

resources = Table(
    "resources",
    metadata,
    Column("server", String(512), primary_key=True),
    Column("study", String(256), primary_key=True),
    Column("rtype", String(64), primary_key=True),
    Column("rid", String(128), primary_key=True),
    Column("version", String(64)),
    Column("last_updated", String(40)),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("body", Text, nullable=False),
    Column("seen_run", Integer, nullable=False),
)


written = Table(
    "written",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, nullable=False),
    Column("server", String(512), nullable=False),
    Column("study", String(256), nullable=False),
    Column("method", String(8), nullable=False),
    Column("url", String(512), nullable=False),
    Column("condition", String(512)),
    Column("status", Integer, nullable=False),
    Column("location", String(512)),
    Column("outcome", String(16), nullable=False),
)


server_limits = Table(
    "server_limits",
    metadata,
    Column("server", String(512), primary_key=True),
    Column("transaction_max_entries", Integer, nullable=False),
    Column("transaction_refused_at", Integer, nullable=False),
    Column("run_id", Integer),
)


def default_data_dir() -> Path:
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "fhiradapter"


class SyncStore:
    """The store; every method is one short transaction."""

    def __init__(self, url: str | None = None, data_dir: Path | None = None) -> None:
        if url is None:
            folder = data_dir or default_data_dir()
            try:
                folder.mkdir(parents=True, exist_ok=True)
                folder.chmod(0o700)  # the mirror holds patient data
            except OSError as exc:
                raise ConfigError(f"cannot use the data folder {folder}: {exc.strerror}") from None
            url = f"sqlite:///{folder / 'sync.db'}"
        self.engine: Engine = engine_for(url)  # sqlite or postgresql; a password in the URL is refused
        try:
            metadata.create_all(self.engine)
            with self.engine.begin() as conn:
                found = conn.execute(select(store_meta.c.value).where(store_meta.c.key == "schema")).scalar()
                if found is None:
                    conn.execute(store_meta.insert().values(key="schema", value=str(SCHEMA_VERSION)))
                elif int(found) > SCHEMA_VERSION:
                    raise ConfigError(f"the sync store has schema {found}; this fhiradapter knows {SCHEMA_VERSION}")
        except SQLAlchemyError as exc:
            raise TargetError(f"cannot open the sync store: {db_reason(exc)}") from None

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------------------------------------- runs

    def start_run(self, server: str, study: str, since: str | None, dry_run: bool) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                sync_runs.insert().values(
                    server=server,
                    study=study,
                    started_at=datetime.now(UTC),
                    status="running",
                    since=since,
                    dry_run=dry_run,
                )
            )
            key = result.inserted_primary_key
            if key is None:
                raise TargetError("the sync store did not number the new run")
            return int(key[0])

    def finish_run(self, run_id: int, status: str, summary: SyncRecord) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(sync_runs)
                .where(sync_runs.c.run_id == run_id)
                .values(status=status, finished_at=datetime.now(UTC), summary=run_record.encode(summary))
            )

    def runs(self, server: str | None = None, study: str | None = None, last: int = 10) -> tuple[list[SyncRun], int]:
        """The ``last`` runs, newest first (of the server and study, when given), and how many there are in all."""
        where = [c == v for c, v in ((sync_runs.c.server, server), (sync_runs.c.study, study)) if v is not None]
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(sync_runs).where(*where)).scalar_one()
            rows = conn.execute(select(sync_runs).where(*where).order_by(sync_runs.c.run_id.desc()).limit(last))
            found = []
            for row in rows.mappings():
                found.append(
                    SyncRun(
                        run_id=int(row["run_id"]),
                        server=str(row["server"]),
                        study=str(row["study"]),
                        started_at=_in_utc(row["started_at"]),
                        finished_at=_in_utc(row["finished_at"]) if row["finished_at"] is not None else None,
                        status=str(row["status"]),
                        since=row["since"],
                        dry_run=bool(row["dry_run"]),
                        summary=run_record.decode(row["summary"]) if row["summary"] else None,
                    )
                )
        return found, int(total)

    def watermark(self, server: str, study: str) -> str | None:
        with self.engine.connect() as conn:
            query = select(watermarks.c.watermark).where(watermarks.c.server == server, watermarks.c.study == study)
            value = conn.execute(query).scalar()
            return str(value) if value is not None else None

    def set_watermark(self, server: str, study: str, instant: str, run_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(watermarks.delete().where(watermarks.c.server == server, watermarks.c.study == study))
            conn.execute(watermarks.insert().values(server=server, study=study, watermark=instant, run_id=run_id))

    def transaction_limit(self, server: str) -> TransactionLimit | None:
        """What ``server`` took in one transaction in an earlier run (None: it refused none for its size)."""
        columns = (server_limits.c.transaction_max_entries, server_limits.c.transaction_refused_at)
        with self.engine.connect() as conn:
            row = conn.execute(select(*columns).where(server_limits.c.server == server)).first()
        return TransactionLimit(int(row[0]), int(row[1])) if row is not None else None

    def set_transaction_limit(self, server: str, limit: TransactionLimit, run_id: int | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(server_limits.delete().where(server_limits.c.server == server))
            conn.execute(
                server_limits.insert().values(
                    server=server,
                    transaction_max_entries=limit.max_entries,
                    transaction_refused_at=limit.refused_at,
                    run_id=run_id,
                )
            )

    def transaction_limits(self) -> list[tuple[str, TransactionLimit, int | None]]:
        """Every server's learnt transaction limit, with the run that learnt it, by server."""
        columns = (
            server_limits.c.server,
            server_limits.c.transaction_max_entries,
            server_limits.c.transaction_refused_at,
            server_limits.c.run_id,
        )
        with self.engine.connect() as conn:
            rows = conn.execute(select(*columns).order_by(server_limits.c.server)).all()
        return [(str(r[0]), TransactionLimit(int(r[1]), int(r[2])), r[3]) for r in rows]

    def clear_transaction_limit(self, server: str) -> TransactionLimit | None:
        """Forget what ``server`` was learnt to take in one transaction; returns what that was (None: nothing)."""
        found = self.transaction_limit(server)
        with self.engine.begin() as conn:
            conn.execute(server_limits.delete().where(server_limits.c.server == server))
        return found

    def record_written(
        self, server: str, study: str, run_id: int, rows: Sequence[tuple[str | int | None, ...]]
    ) -> None:
        """The writes a push sent: (method, url, condition, status, location, outcome) each."""
        if not rows:
            return
        keys = ("method", "url", "condition", "status", "location", "outcome")
        with self.engine.begin() as conn:
            conn.execute(
                written.insert(),
                [{"run_id": run_id, "server": server, "study": study, **dict(zip(keys, r, strict=True))} for r in rows],
            )

    # ---------------------------------------------------------------------------------------------- mirror

    def sink(self, server: str, study: str, run_id: int) -> MirrorSink:
        return MirrorSink(self, server, study, run_id)

    def upsert(self, server: str, study: str, run_id: int, items: Iterable[JsonObject]) -> None:
        """Keep each resource as pulled (its JSON, as the server sent it), seen by this run, not deleted."""
        rows = [_mirror_row(server, study, run_id, r) for r in items]
        if not rows:
            return
        with self.engine.begin() as conn:
            # INSERT ... ON CONFLICT DO UPDATE: one statement per batch on both dialects
            stmt = (sqlite_insert if conn.dialect.name == "sqlite" else pg_insert)(resources)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["server", "study", "rtype", "rid"],
                    set_={k: stmt.excluded[k] for k in ("version", "last_updated", "deleted", "body", "seen_run")},
                ),
                rows,
            )

    def mark_deleted(self, server: str, study: str, keys: Iterable[tuple[str, str]]) -> int:
        """Flag these resources deleted (a DELETE in the server's history); returns how many were live here."""
        n = 0
        with self.engine.begin() as conn:
            for rtype, rid in keys:
                result = conn.execute(
                    update(resources)
                    .where(*_key(server, study, rtype, rid), resources.c.deleted.is_(False))
                    .values(deleted=True)
                )
                n += result.rowcount
        return n

    def mark_unseen_deleted(self, server: str, study: str, run_id: int) -> int:
        """After a complete full pull: whatever it did not see is gone from the server."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(resources)
                .where(
                    resources.c.server == server,
                    resources.c.study == study,
                    resources.c.seen_run != run_id,
                    resources.c.deleted.is_(False),
                )
                .values(deleted=True)
            )
            return int(result.rowcount)

    def write_ndjson(self, server: str, study: str, folder: Path) -> tuple[Counter[str], list[str]]:
        """Every live resource of the study into ``folder/<Type>.ndjson`` (the input of evaluate); returns the
        count per type, and the resources left out because their type is not a FHIR R4 resource type name
        (a pull reports those and never stores them, but a store written before that check may hold some)."""
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.ndjson"):
            old.unlink()
        counts: Counter[str] = Counter()
        refused: list[str] = []
        handles: dict[str, TextIO] = {}
        try:
            with self.engine.connect() as conn:
                query = (
                    select(resources.c.rtype, resources.c.rid, resources.c.body)
                    .where(resources.c.server == server, resources.c.study == study, resources.c.deleted.is_(False))
                    .order_by(resources.c.rtype, resources.c.rid)
                )
                for rtype, rid, body in conn.execution_options(stream_results=True).execute(query):
                    problem = type_problem(rtype)  # the type names the file: never a path of the server's choosing
                    if problem:
                        refused.append(f"stored resource id {rid}: {problem}")
                        continue
                    if rtype not in handles:
                        handles[rtype] = open_new_text(folder / f"{rtype}.ndjson")  # mode 0600, no link followed
                    handles[rtype].write(body + "\n")
                    counts[rtype] += 1
        finally:
            for fh in handles.values():
                fh.close()
        return counts, refused


def _key(server: str, study: str, rtype: str, rid: str) -> tuple[ColumnElement[bool], ...]:
    return (
        resources.c.server == server,
        resources.c.study == study,
        resources.c.rtype == rtype,
        resources.c.rid == rid,
    )


@dataclass(frozen=True, kw_only=True)
class SyncRun:
    """One sync run as the store keeps it (``fhiradapter runs``); ``summary`` is the run's summary as stored
    (``SyncSummary.record``), None while it runs."""

    run_id: int
    server: str
    study: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    since: str | None
    dry_run: bool
    summary: SyncRecord | None


def _in_utc(when: datetime) -> datetime:
    """A stored time in UTC: SQLite gives it back naive, PostgreSQL in the session's time zone."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _mirror_row(server: str, study: str, run_id: int, resource: JsonObject) -> dict[str, str | bool | int]:
    """The store's row of a pulled resource: its key, version and last update (from ``meta``), and its JSON."""
    meta = member(resource, "meta")
    return {
        "server": server,
        "study": study,
        "rtype": str(resource.get("resourceType")),
        "rid": str(resource.get("id")),
        "version": str((meta or {}).get("versionId") or ""),
        "last_updated": str((meta or {}).get("lastUpdated") or ""),
        "deleted": False,
        "body": orjson.dumps(resource).decode(),
        "seen_run": run_id,
    }


class MirrorSink:
    """A pull sink that upserts into the store in batches (call ``flush`` at the end)."""

    BATCH = 500

    def __init__(self, store: SyncStore, server: str, study: str, run_id: int) -> None:
        self.store, self.server, self.study, self.run_id = store, server, study, run_id
        self.counts: Counter[str] = Counter()
        self._seen: set[tuple[str, str]] = set()
        self._pending: list[JsonObject] = []

    def add(self, resource: JsonObject) -> None:
        key = (str(resource.get("resourceType")), str(resource.get("id")))
        if key in self._seen:
            return
        self._seen.add(key)
        self.counts[key[0]] += 1
        self._pending.append(resource)
        if len(self._pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self.store.upsert(self.server, self.study, self.run_id, pending)

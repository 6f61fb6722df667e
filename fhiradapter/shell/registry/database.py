"""The database connection the sync store and the registry export share: SQLite or PostgreSQL, by URL (and a
DuckDB file, for the registry export only).

A password is never taken from the URL (command lines are visible to every user of the machine): PostgreSQL
reads it from PGPASSWORD or ~/.pgpass through libpq. A driver's error is reported by its first line only. A new
SQLite file is created with mode 0600 (SQLite gives its journals the database file's mode).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from fhiradapter.errors import ConfigError
from fhiradapter.shell.common.files import create_private


def engine_for(url: str, duckdb: bool = False) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql://user@host/db`` (password from PGPASSWORD or ~/.pgpass);
    with ``duckdb``, also ``duckdb:///path`` (the registry export: the extra `duckdb`, through duckdb_engine)."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme == "duckdb" and not duckdb:
        raise ConfigError("a DuckDB file holds registry exports only: use sqlite:///FILE or postgresql://HOST/DB")
    if scheme in ("sqlite", "duckdb"):
        path = url.removeprefix(f"{scheme}:///")
        if path and path != url and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            if "?" not in path and Path(path).parent.is_dir():
                # mode 0600 when new (the driver would follow the umask): patient data
                (create_private if scheme == "sqlite" else create_private_duckdb)(Path(path))
        if scheme == "duckdb":
            import duckdb_engine  # noqa: F401, PLC0415 - the extra `duckdb`: named if missing (cli.common)

            register_duckdb_migrations()
        return create_engine(url)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        if parts.password:
            raise ConfigError(
                "the database URL contains a password; give it through PGPASSWORD or ~/.pgpass instead "
                "(command-line arguments are visible to every user of the machine)"
            )
        rest = url.split("://", 1)[1]
        return create_engine(f"postgresql+psycopg://{rest}")
    raise ConfigError(f"unsupported database URL scheme {scheme!r}: use sqlite:///FILE or postgresql://HOST/DB")


def create_private_duckdb(path: Path) -> None:
    """A new DuckDB database file at ``path``, mode 0600 from its creation, if nothing has that name yet.

    DuckDB refuses an empty file, so it creates the file itself, in a folder of mode 0700 beside ``path``; the
    file is then linked into place (``os.link`` fails if the name was taken meanwhile).
    """
    import duckdb  # noqa: PLC0415 - the extra `duckdb`

    if os.path.lexists(path):
        return
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".duckdb-") as folder:  # mode 0700
        fresh = Path(folder) / "new.duckdb"
        duckdb.connect(str(fresh)).close()
        fresh.chmod(0o600)
        with contextlib.suppress(FileExistsError):
            os.link(fresh, path)


def register_duckdb_migrations() -> None:
    """Alembic has no implementation for DuckDB's dialect (duckdb_engine): the default one, which the
    registry's migrations need (CREATE TABLE, CREATE VIEW), serves. And a ``Float`` column is a DOUBLE there,
    as in SQLite and PostgreSQL: DuckDB's FLOAT is 4 bytes, which would change the figures of results.json."""
    from alembic.ddl.impl import DefaultImpl  # noqa: PLC0415
    from sqlalchemy import Float  # noqa: PLC0415
    from sqlalchemy.ext.compiler import compiles  # noqa: PLC0415

    class _DuckDBImpl(DefaultImpl):
        __dialect__ = "duckdb"

    @compiles(Float, "duckdb")
    def _double(type_: Float[float], compiler: object, **kw: object) -> str:
        return "DOUBLE"


def db_reason(exc: SQLAlchemyError) -> str:
    """The driver's first message line only: later lines (PostgreSQL's DETAIL) can quote row values."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig or exc).__name__}: {text[0] if text else ''}"

"""The database connection the sync store and the registry export share: SQLite or PostgreSQL, by URL.

A password is never taken from the URL (command lines are visible to every user of the machine): PostgreSQL
reads it from PGPASSWORD or ~/.pgpass through libpq. A driver's error is reported by its first line only. A new
SQLite file is created with mode 0600 (SQLite gives its journals the database file's mode).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from fhiradapter.errors import ConfigError
from fhiradapter.shell.common.files import create_private


def engine_for(url: str) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql://user@host/db`` (password from PGPASSWORD or ~/.pgpass)."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:///")
        if path and path != url and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            if "?" not in path and Path(path).parent.is_dir():
                create_private(Path(path))  # mode 0600 when new (SQLite would follow the umask): patient data
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


def db_reason(exc: SQLAlchemyError) -> str:
    """The driver's first message line only: later lines (PostgreSQL's DETAIL) can quote row values."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig or exc).__name__}: {text[0] if text else ''}"

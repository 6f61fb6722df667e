"""``fhiradapter export``: a results folder into a registry database (SQLite, PostgreSQL) or CSV/Parquet files.

Reads ``results.json`` and ``clinical.ndjson`` from an evaluate run, builds rows with the pure core
(``core/registry.py`` for the registry tables, ``core/sdtm.py`` for SDTM datasets) and writes them:
SQL targets through ``registry_db`` (one transaction per run), folders as one file per table plus a data
dictionary, each file written beside its final name and renamed when complete.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import stat
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import orjson

from fhiradapter.core.registry import Pseudonymiser, RunInfo, cohort_row, run_info, subject_views, table_rows
from fhiradapter.core.sdtm import DATASETS, ExportMappings, build_sdtm, data_dictionary, parse_export_mappings
from fhiradapter.errors import ConfigError, InputError, TargetError
from fhiradapter.shell.mappings_io import default_mappings_dir

KEY_ENV = "FHIRADAPTER_PSEUDONYM_KEY"
Format = Literal["tables", "sdtm"]


@dataclass(frozen=True)
class Target:
    kind: Literal["sql", "csv", "parquet"]
    location: str  # the SQL URL, or the folder


def parse_target(url: str) -> Target:
    if url.startswith(("sqlite:", "postgresql:", "postgres:", "postgresql+psycopg:")):
        return Target("sql", url)
    for kind in ("csv", "parquet"):
        if url.startswith(f"{kind}:"):
            folder = url.split(":", 1)[1].removeprefix("//")
            if not folder:
                raise ConfigError(f"--to {kind}: needs a folder, e.g. {kind}:exports/")
            return Target(kind, folder)
    raise ConfigError(f"--to {url!r}: use sqlite:///FILE.db, postgresql://USER@HOST/DB, csv:FOLDER or parquet:FOLDER")


def load_key(key_file: Path | None) -> bytes:
    """The pseudonymisation secret, from ``--key-file`` or the environment; refuses to run without one."""
    if key_file is not None:
        try:
            mode = key_file.stat().st_mode
            raw = key_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"pseudonymisation key file unreadable: {key_file}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"pseudonymisation key file {key_file} is readable by other users; run `chmod 600 {key_file}`"
            )
        key = raw.strip()
    elif os.environ.get(KEY_ENV):
        key = os.environ[KEY_ENV].strip().encode()
    else:
        raise ConfigError(
            f"--pseudonymise needs a secret key: --key-file FILE or the {KEY_ENV} environment variable "
            "(there is no default key, on purpose)"
        )
    return key


def load_export_mappings(directory: Path | None) -> ExportMappings:
    path = (directory or default_mappings_dir()) / "export.toml"
    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"mappings file missing: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"mappings file unreadable: {path}: {exc}") from None
    return parse_export_mappings(doc)


@dataclass
class ResultsFolder:
    header: dict[str, Any]
    subjects: list[dict[str, Any]]
    cohort: dict[str, Any]
    extracts: dict[str, dict[str, Any]]
    sha256: str
    has_extract: bool


def read_results(folder: Path) -> ResultsFolder:
    path = folder / "results.json"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path} not found: give the --out folder of an `fhiradapter evaluate` run") from None
    except OSError as exc:
        raise InputError(f"{path} unreadable: {exc.strerror}") from None
    try:
        doc = orjson.loads(raw)
        subjects, cohort = doc.pop("subjects"), doc.pop("cohort")
        if not isinstance(subjects, list) or not isinstance(cohort, dict):
            raise TypeError
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise InputError(f"{path} is not an fhiradapter results file (no subjects/cohort)") from None
    extracts: dict[str, dict[str, Any]] = {}
    clinical = folder / "clinical.ndjson"
    if clinical.exists():
        with clinical.open("rb") as fh:
            for n, line in enumerate(fh, start=1):
                try:
                    item = orjson.loads(line)
                    extracts[str(item["patient"])] = item
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    raise InputError(f"{clinical}: line {n} is not a clinical extract record") from None
    return ResultsFolder(doc, subjects, cohort, extracts, hashlib.sha256(raw).hexdigest(), clinical.exists())


@dataclass
class ExportSummary:
    run: RunInfo
    target: Target
    new_run: bool
    reinstated: bool
    lines: list[tuple[str, int, int, int]]  # (table, inserted, unchanged, superseded)
    files: list[Path]


def build_table_rows(res: ResultsFolder, pseudo: Pseudonymiser | None) -> dict[str, list[dict[str, Any]]]:
    tables: dict[str, list[dict[str, Any]]] = {}
    for view in subject_views(res.subjects, res.extracts, pseudo):
        for name, rows in table_rows(view).items():
            tables.setdefault(name, []).extend(rows)
    tables["cohort_summaries"] = [cohort_row(res.cohort)]
    # Rows in subject-key order, not input order: a pseudonymised table must not keep the patients' order.
    for rows in tables.values():
        rows.sort(
            key=lambda r: (r.get("subject_key") or "", r.get("seq") or 0, r.get("criterion_id") or r.get("term") or "")
        )
    return tables


def export(
    results_dir: Path,
    to: str,
    fmt: Format = "tables",
    key: bytes | None = None,
    mappings_dir: Path | None = None,
    on_table: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Export one results folder; ``key`` set = pseudonymise. ``on_table`` is called as each table is written."""
    target = parse_target(to)
    if fmt == "sdtm" and target.kind == "sql":
        raise ConfigError("--format sdtm writes files: use --to csv:FOLDER or --to parquet:FOLDER")
    pseudo = Pseudonymiser(key) if key is not None else None
    res = read_results(results_dir)
    if fmt == "sdtm" and not res.has_extract:
        raise InputError(
            f"{results_dir / 'clinical.ndjson'} not found: SDTM datasets need it; re-run evaluate with this version"
        )
    info = run_info(res.header, res.sha256, pseudo)
    if fmt == "sdtm":
        cfg = load_export_mappings(mappings_dir)
        datasets = build_sdtm(cfg, subject_views(res.subjects, res.extracts, pseudo))
        files = _write_files(target, datasets, _sdtm_types(), data_dictionary(), info, on_table)
        lines = [(name, len(rows), 0, 0) for name, rows in datasets.items()]
        return ExportSummary(info, target, True, False, lines, files)
    tables = build_table_rows(res, pseudo)
    if target.kind == "sql":
        return _export_sql(target, info, tables, on_table)
    from fhiradapter.shell import registry_db as db  # noqa: PLC0415 - SQLAlchemy only when needed

    types = {t.name: {c.name: _sql_kind(c.type) for c in t.columns} for t in db.RUN_TABLES}
    with_run = {name: [{"run_id": info.run_id, **r} for r in rows] for name, rows in tables.items()}
    files = _write_files(target, {"runs": [_run_row(info)], **with_run}, types, _table_dictionary(), info, on_table)
    lines = [(name, len(rows), 0, 0) for name, rows in with_run.items()]
    return ExportSummary(info, target, True, False, lines, files)


def _export_sql(
    target: Target, info: RunInfo, tables: dict[str, list[dict[str, Any]]], on_table: Callable[[str], None] | None
) -> ExportSummary:
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from fhiradapter.shell import registry_db as db  # noqa: PLC0415

    engine = db.engine_for(target.location)
    try:
        try:
            db.migrate(engine)
        except SQLAlchemyError as exc:
            raise TargetError(f"cannot open or migrate the database: {db.db_reason(exc)}") from None
        result = db.write_run(engine, info, tables, (lambda name, _c: on_table(name)) if on_table else None)
    finally:
        engine.dispose()
    lines = [(name, c.inserted, c.unchanged, c.superseded) for name, c in result.counts.items()]
    return ExportSummary(info, target, result.new_run, result.reinstated, lines, [])


def _run_row(info: RunInfo) -> dict[str, Any]:
    return dict(info.__dict__)


def _sql_kind(t: Any) -> str:
    name = type(t).__name__
    return {"Integer": "int", "Float": "float", "Boolean": "bool", "Date": "date"}.get(name, "str")


def _sdtm_types() -> dict[str, dict[str, str]]:
    numeric_int = {"SEQ", "DY", "AGE", "ENDY", "STDY", "LLTCD"}
    out: dict[str, dict[str, str]] = {}
    for name, spec in DATASETS.items():
        cols = {}
        for var, _label, typ, _src in spec:
            if typ == "Char":
                cols[var] = "str"
            else:
                cols[var] = "int" if any(var.endswith(s) for s in numeric_int) else "float"
        out[name] = cols
    return out


def _table_dictionary() -> list[dict[str, Any]]:
    from fhiradapter.shell import registry_db as db  # noqa: PLC0415

    return [
        {
            "table": t.name,
            "column": c.name,
            "type": _sql_kind(c.type),
            "order": n,
            "key": "yes" if c.primary_key else "",
            "description": c.comment or "",
        }
        for t in (db.runs, *db.RUN_TABLES)
        for n, c in enumerate(t.columns, start=1)
    ]


def _write_files(
    target: Target,
    tables: dict[str, list[dict[str, Any]]],
    types: dict[str, dict[str, str]],
    dictionary: list[dict[str, Any]],
    info: RunInfo,
    on_table: Callable[[str], None] | None,
) -> list[Path]:
    folder = Path(target.location)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TargetError(f"cannot create the export folder {folder}: {exc.strerror}") from None
    written: list[Path] = []
    ext = "csv" if target.kind == "csv" else "parquet"
    for name, rows in tables.items():
        columns = list(types.get(name) or (rows[0].keys() if rows else []))
        path = folder / f"{name}.{ext}"
        _atomic(path, functools.partial(_write_one, target.kind, columns=columns, rows=rows, types=types.get(name, {})))
        written.append(path)
        if on_table:
            on_table(name)
    dict_path = folder / "data-dictionary.csv"
    _atomic(dict_path, lambda tmp: _write_csv(tmp, list(dictionary[0]), dictionary))
    run_path = folder / "run.json"
    _atomic(run_path, functools.partial(_write_bytes, data=orjson.dumps(info.__dict__, option=orjson.OPT_INDENT_2)))
    return [*written, dict_path, run_path]


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".partial")
    try:
        write(tmp)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TargetError(f"cannot write {path}: {exc.strerror}") from None


def _write_one(kind: str, path: Path, *, columns: list[str], rows: list[dict[str, Any]], types: dict[str, str]) -> None:
    if kind == "csv":
        _write_csv(path, columns, rows)
    else:
        _write_parquet(path, columns, rows, types)


def _cells(columns: list[str], rows: list[dict[str, Any]]) -> Iterator[list[Any]]:
    for row in rows:
        yield ["" if row.get(c) is None else _csv_value(row.get(c)) for c in columns]


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 200, not 200.0
    return value


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(_cells(columns, rows))


def _write_parquet(path: Path, columns: list[str], rows: list[dict[str, Any]], types: dict[str, str]) -> None:
    import pyarrow as pa  # noqa: PLC0415 - 0.3 s import, only for parquet targets
    import pyarrow.parquet as pq  # noqa: PLC0415

    arrow = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "date": pa.date32(), "str": pa.string()}
    fields = [pa.field(c, arrow[types.get(c, "str")]) for c in columns]

    def cell(c: str, value: Any) -> Any:
        kind = types.get(c, "str")
        if value is None:
            return None
        if kind == "date" and isinstance(value, str):
            return date.fromisoformat(value) if len(value) == 10 else None
        if kind == "str" and not isinstance(value, str):
            return str(value)
        return value

    data = {c: [cell(c, r.get(c)) for r in rows] for c in columns}
    pq.write_table(pa.table(data, schema=pa.schema(fields)), path)

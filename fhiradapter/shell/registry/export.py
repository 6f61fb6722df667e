"""``fhiradapter export``: a results folder into a registry database (SQLite, DuckDB, PostgreSQL) or CSV/Parquet
files.

Streams ``results.json`` (one subject per line, as evaluate writes it) joined with ``clinical.ndjson`` (same
patient order), builds each subject's rows with the pure core (``core/registry.py`` for the registry tables,
``core/sdtm.py`` for SDTM datasets) and writes them: SQL targets through ``registry_db`` (one transaction per
run, inserted in batches), folders as one file per table plus a data dictionary, each file written beside its
final name and renamed when complete; every CSV cell goes through ``core/spreadsheet.py`` (text a spreadsheet
would evaluate as a formula is neutralised). Memory holds one batch, not the cohort. Pseudonymised rows are spooled
to a temporary file and written in pseudonym order, so no output keeps the patients' order.
"""

from __future__ import annotations

import csv
import hashlib
import os
import stat
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO, Literal, TextIO, TypeVar

import msgspec
import orjson

from fhiradapter.core.extract import ClinicalExtract
from fhiradapter.core.readback import (
    decode_cohort,
    decode_extract,
    decode_header,
    decode_run_record,
    decode_subject,
    split_whole,
)
from fhiradapter.core.registry import (
    Cell,
    ExportFormat,
    Pseudonymiser,
    Row,
    RunInfo,
    SubjectView,
    cohort_row,
    run_info,
    table_rows,
)
from fhiradapter.core.results import CohortSummary, PatientResult
from fhiradapter.core.sdtm import DATASETS, ExportMappings, SdtmBuilder, data_dictionary, parse_export_mappings
from fhiradapter.core.spreadsheet import csv_cell
from fhiradapter.errors import ConfigError, InputError, NothingEvaluated, TargetError
from fhiradapter.shell.common.files import open_new, open_new_text, replace, write_new
from fhiradapter.shell.common.mappings_io import default_mappings_dir
from fhiradapter.shell.common.out_folder import MANIFEST, check_manifest, file_digest, inputs_in_the_way

KEY_ENV = "FHIRADAPTER_PSEUDONYM_KEY"


@dataclass(frozen=True)
class Target:
    kind: Literal["sql", "csv", "parquet"]
    location: str  # the SQL URL, or the folder


def parse_target(url: str) -> Target:
    if url.startswith(("sqlite:", "duckdb:", "postgresql:", "postgres:", "postgresql+psycopg:")):
        return Target("sql", url)
    for kind in ("csv", "parquet"):
        if url.startswith(f"{kind}:"):
            folder = url.split(":", 1)[1].removeprefix("//")
            if not folder:
                raise ConfigError(f"--export-to {kind}: needs a folder, e.g. {kind}:exports/")
            return Target(kind, folder)
    raise ConfigError(
        f"--export-to {url!r}: use sqlite:///FILE.db, duckdb:///FILE.duckdb, postgresql://USER@HOST/DB, "
        "csv:FOLDER or parquet:FOLDER"
    )


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


SUBJECTS_OPEN = b'"subjects":['
COHORT_OPEN = b'],"cohort":'
Rows = dict[str, list[Row]]  # each table's rows (``core.registry.Row``: cells by column name)


SPARK_PARTS = ("run", "subjects", "clinical")  # evaluate --engine spark --results-dir: each a folder of parts


def is_spark_results(folder: Path) -> bool:
    """Whether ``folder`` is a ``--results-dir`` that Spark wrote (not an evaluate --out folder)."""
    return (folder / "subjects").is_dir() and not (folder / "results.json").exists()


def check_spark_results(folder: Path) -> None:
    """A ``--results-dir`` is whole when each of its folders holds Spark's ``_SUCCESS`` (``run`` is written last)
    and as many lines as ``run`` says were written (a copy that stopped half way has the markers, not the lines).
    """
    missing = [name for name in SPARK_PARTS if not (folder / name / "_SUCCESS").exists()]
    if missing:
        raise InputError(
            f"{folder} is not a whole results folder ({', '.join(missing)} without _SUCCESS): the Spark run "
            "did not finish; run it again"
        )
    try:
        with _part_files(folder / "run")[0].open("rb") as fh:
            counts = decode_run_record(fh.readline()).lines
    except (OSError, IndexError, msgspec.DecodeError, msgspec.ValidationError):
        raise InputError(f"{folder / 'run'} holds no run record: the Spark run did not finish") from None
    for name, expected in counts.items():
        found = sum(_count_lines(part) for part in _part_files(folder / name))
        if found != expected:
            raise InputError(
                f"{folder / name} holds {found} line(s), the run wrote {expected}: the folder is not whole "
                "(a copy that stopped?); copy it again"
            )


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def _part_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("part-*") if p.is_file())


def count_subjects(results_dir: Path) -> int:
    """The number of subjects a results folder holds, from its header line (0 when unknown), for progress bars."""
    try:
        if is_spark_results(results_dir):
            with _part_files(results_dir / "run")[0].open("rb") as fh:
                return decode_run_record(fh.readline()).header.run_summary.patients
        with (results_dir / "results.json").open("rb") as fh:
            head = fh.readline().rstrip()
        if head.endswith(SUBJECTS_OPEN):
            return decode_header(head[: -len(SUBJECTS_OPEN)].rstrip(b",") + b"}").run_summary.patients
    except (OSError, IndexError, msgspec.DecodeError, msgspec.ValidationError):
        pass
    return 0


Decoded = TypeVar("Decoded")


class ResultsReader:
    """One evaluate run's results, streamed: the header at once, subjects one by one, the cohort after them,
    each read straight into its type (``core.readback``).

    results.json as evaluate writes it has one subject per line and is read line by line; a results.json in
    any other layout (re-indented by hand, say) is parsed whole, which works but holds it in memory.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "results.json"
        self.clinical = folder / "clinical.ndjson"
        self.has_extract = self.clinical.exists()
        self.cohort: CohortSummary | None = None
        self._whole: list[msgspec.Raw] | None = None
        self._parts: Path | None = None
        if is_spark_results(folder):
            self._open_parts(folder)
            return
        digest = hashlib.sha256()
        try:
            with self.path.open("rb") as fh:
                first = fh.readline()
                digest.update(first)
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
        except FileNotFoundError:
            raise InputError(f"{self.path} not found: give the --out folder of an `fhiradapter evaluate` run") from None
        except OSError as exc:
            raise InputError(f"{self.path} unreadable: {exc.strerror}") from None
        self.sha256 = digest.hexdigest()
        head = first.rstrip()
        if head.endswith(SUBJECTS_OPEN):
            self.header = self._decode(decode_header, head[: -len(SUBJECTS_OPEN)].rstrip(b",") + b"}", "line 1")
        else:
            self.header, self._whole, self.cohort = self._decode(split_whole, self.path.read_bytes(), "the file")

    def _open_parts(self, folder: Path) -> None:
        """A --results-dir Spark wrote: the header and cohort in run/, subjects and extracts in parts."""
        self._parts = self.path = folder / "subjects"
        self.clinical = folder / "clinical"
        self.has_extract = True
        run = _part_files(folder / "run")
        if len(run) != 1:
            raise InputError(f"{folder / 'run'} should hold one part file, holds {len(run)}")
        record = self._decode(decode_run_record, run[0].read_bytes(), "run/part-00000")
        self.header, self.cohort = record.header, record.cohort
        digest = hashlib.sha256()
        for part in _part_files(self._parts):
            with part.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
        self.sha256 = digest.hexdigest()

    def _part_lines(self, folder: Path) -> Iterator[tuple[str, bytes]]:
        for part in _part_files(folder):
            with part.open("rb") as fh:
                for n, line in enumerate(fh, start=1):
                    if line.strip():
                        yield f"{part.name} line {n}", line

    def _decode(self, decode: Callable[[bytes], Decoded], raw: bytes, where: str) -> Decoded:
        """``raw`` read into its type; what does not fit is an InputError naming the file, the place and why."""
        try:
            return decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InputError(f"{self.path}: {where} is not an fhiradapter results record ({exc})") from None

    @property
    def patients(self) -> int:
        return self.header.run_summary.patients

    @property
    def subjects_evaluated(self) -> int:
        """Study subjects in the results (screening candidates are not exported: they are in candidates.ndjson)."""
        return self.header.run_summary.population.subjects

    def _subjects(self) -> Iterator[PatientResult]:
        if self._parts is not None:
            for where, line in self._part_lines(self._parts):
                yield self._decode(decode_subject, line, where)
            return
        if self._whole is not None:
            for n, raw in enumerate(self._whole):
                yield self._decode(decode_subject, raw, f"subject {n + 1}")
            return
        with self.path.open("rb") as fh:
            fh.readline()
            for n, line in enumerate(fh, start=2):
                if not line.strip():  # the empty line of a run with no subject
                    continue
                if line.startswith(COHORT_OPEN):
                    self.cohort = self._decode(decode_cohort, line.rstrip()[len(COHORT_OPEN) : -1], f"line {n}")
                    return
                yield self._decode(decode_subject, line.rstrip().rstrip(b","), f"line {n}")
        raise InputError(f"{self.path} ends before its cohort summary: the file is truncated")

    def _extracts(self) -> Iterator[tuple[str, ClinicalExtract]]:
        if not self.has_extract:
            return
        if self._parts is not None:
            for where, line in self._part_lines(self.clinical):
                yield self._extract(line, where)
            return
        with self.clinical.open("rb") as fh:
            for n, line in enumerate(fh, start=1):
                yield self._extract(line, f"line {n}")

    def _extract(self, line: bytes, where: str) -> tuple[str, ClinicalExtract]:
        try:
            item = decode_extract(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InputError(f"{self.clinical}: {where} is not a clinical extract record ({exc})") from None
        return item.patient, item

    def subjects(self) -> Iterator[tuple[PatientResult, ClinicalExtract | None]]:
        """(result, extract) per subject, joined by patient; both files are in patient order."""
        extracts = self._extracts()
        pending = next(extracts, None)
        last = ""
        for subject in self._subjects():
            patient = subject.patient
            while pending is not None and pending[0] < patient:
                if pending[0] < last:
                    raise InputError(f"{self.clinical} is not in patient order: re-run `fhiradapter evaluate`")
                last = pending[0]
                pending = next(extracts, None)
            if pending is not None and pending[0] == patient:
                yield subject, pending[1]
                last, pending = patient, next(extracts, None)
            else:
                yield subject, None

    def cohort_row(self) -> Row:
        if self.cohort is None:
            raise InputError(f"{self.path} has no cohort summary")
        return cohort_row(self.cohort)


@dataclass
class ExportSummary:
    run: RunInfo
    target: Target
    new_run: bool
    reinstated: bool
    lines: list[tuple[str, int, int, int]]  # (table, inserted, unchanged, superseded)
    files: list[Path]


def _row_order(row: Row) -> tuple[int, str]:
    """A table's rows for one subject in order: by sequence number, else by criterion or term."""
    seq = row.get("seq")
    return seq if isinstance(seq, int) else 0, str(row.get("criterion_id") or row.get("term") or "")


def _sort_rows(rows: Rows) -> Rows:
    for table in rows.values():
        table.sort(key=_row_order)
    return rows


def in_key_order(bundles: Iterable[tuple[str, Rows]], spool_dir: Path | None, needed: bool) -> Iterator[Rows]:
    """Per-subject row bundles in subject-key order. Identified keys already come sorted (results.json is in
    patient order); pseudonyms do not, so their bundles go through a temporary file and come back sorted."""
    if not needed:
        for _key, rows in bundles:
            yield rows
        return
    index: list[tuple[str, int, int]] = []
    with tempfile.TemporaryFile(dir=spool_dir) as fh:
        for key, rows in bundles:
            blob = _spooled.encode(rows)
            index.append((key, fh.tell(), len(blob)))
            fh.write(blob)
        for _key, offset, length in sorted(index):
            fh.seek(offset)
            yield _spooled_rows.decode(fh.read(length))


_spooled = msgspec.json.Encoder()
_spooled_rows = msgspec.json.Decoder(Rows)


def _spool_dir(folder: Path) -> Path | None:
    """Spool beside the results (they hold the same data) when writable, else the system's temporary folder."""
    return folder if os.access(folder, os.W_OK) else None


def export(
    results_dir: Path,
    to: str,
    fmt: ExportFormat = "tables",
    key: bytes | None = None,
    mappings_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportSummary:
    """Export one results folder; ``key`` set = pseudonymise. ``progress(n)`` is called as subjects are written."""
    target = parse_target(to)
    if fmt == "sdtm" and target.kind == "sql":
        raise ConfigError("--export-format sdtm writes files: use --export-to csv:FOLDER or --export-to parquet:FOLDER")
    pseudo = Pseudonymiser(key) if key is not None else None
    if not results_dir.is_dir():
        what = "is not a folder" if results_dir.exists() else "does not exist"
        raise InputError(f"{results_dir} {what}: give the --out folder of an `fhiradapter evaluate` run")
    # Only a whole output set: a run that died half way, or files of two runs, are refused (out_folder).
    if is_spark_results(results_dir):
        check_spark_results(results_dir)  # evaluate --engine spark --results-dir: Spark's _SUCCESS markers
    else:
        check_manifest(results_dir, ["results.json", "clinical.ndjson"])
    reader = ResultsReader(results_dir)
    if not reader.subjects_evaluated:
        raise NothingEvaluated(
            f"{results_dir}: the run evaluated no one (0 study subjects; its rejects.ndjson says why): "
            "nothing to export"
        )
    read = [results_dir / name for name in ("results.json", "clinical.ndjson", MANIFEST)]  # none may be written
    if fmt == "sdtm" and not reader.has_extract:
        raise InputError(
            f"{results_dir / 'clinical.ndjson'} not found: SDTM datasets need it; re-run evaluate with this version"
        )
    info = run_info(reader.header, reader.sha256, pseudo)
    views = (SubjectView(result, extract, pseudo) for result, extract in reader.subjects())
    spool = _spool_dir(results_dir)
    if fmt == "sdtm":
        cfg = load_export_mappings(mappings_dir)
        bundles = in_key_order(((v.key, _sdtm_rows(cfg, v)) for v in views), spool, pseudo is not None)
        return _export_files(target, info, bundles, _sdtm_types(), data_dictionary(), None, progress, read)
    bundles = in_key_order(((v.key, _sort_rows(table_rows(v))) for v in views), spool, pseudo is not None)
    if target.kind == "sql":
        return _export_sql(target, info, bundles, reader.cohort_row, progress)
    from fhiradapter.shell.registry import registry_db as db  # noqa: PLC0415 - SQLAlchemy only when needed

    types = {t.name: {c.name: _sql_kind(c.type) for c in t.columns} for t in (db.runs, *db.RUN_TABLES)}
    return _export_files(target, info, bundles, types, _table_dictionary(), reader.cohort_row, progress, read)


def _sdtm_rows(cfg: ExportMappings, view: SubjectView) -> Rows:
    builder = SdtmBuilder(cfg)
    builder.add(view)
    return builder.rows


def _export_sql(
    target: Target,
    info: RunInfo,
    bundles: Iterator[Rows],
    cohort: Callable[[], Row],
    progress: Callable[[int], None] | None,
) -> ExportSummary:
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from fhiradapter.shell.registry import database  # noqa: PLC0415
    from fhiradapter.shell.registry import registry_db as db  # noqa: PLC0415

    engine = database.engine_for(target.location, duckdb=True)
    try:
        try:
            db.migrate(engine)
        except SQLAlchemyError as exc:
            raise TargetError(f"cannot open or migrate the database: {database.db_reason(exc)}") from None
        result = db.write_run(engine, info, bundles, cohort, progress)
    finally:
        engine.dispose()
    lines = [(name, c.inserted, c.unchanged, c.superseded) for name, c in result.counts.items()]
    return ExportSummary(info, target, result.new_run, result.reinstated, lines, [])


def _sql_kind(t: object) -> str:
    """A column's SQLAlchemy type as the file exports name it."""
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


def _table_dictionary() -> list[Row]:
    from fhiradapter.shell.registry import registry_db as db  # noqa: PLC0415

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


BATCH_ROWS = 5000  # rows buffered per table before a Parquet row group is written


class _FileSink:
    """One file per table, written to ``NAME.EXT.partial`` and renamed only when every file is complete."""

    def __init__(self, folder: Path, kind: str, types: dict[str, dict[str, str]]) -> None:
        self.folder, self.kind, self.types = folder, kind, types
        self.ext = "csv" if kind == "csv" else "parquet"
        self.counts = dict.fromkeys(types, 0)
        self._csv: dict[str, TextIO] = {}
        self._parquet: dict[str, Any] = {}  # pyarrow.parquet.ParquetWriter per table (pyarrow has no type hints)
        self._parquet_files: list[BinaryIO] = []  # the files the Parquet writers write into (created here: files.py)
        self._buffers: dict[str, list[Row]] = {name: [] for name in types}
        for name, columns in types.items():
            path = self._partial(name)
            if kind == "csv":
                fh = open_new_text(path, newline="")
                csv.writer(fh).writerow(list(columns))
                self._csv[name] = fh

    def _partial(self, name: str) -> Path:
        return self.folder / f"{name}.{self.ext}.partial"

    def add(self, name: str, rows: list[Row]) -> None:
        self.counts[name] += len(rows)
        if self.kind == "csv":
            columns = list(self.types[name])
            csv.writer(self._csv[name]).writerows(_cells(columns, rows))
            return
        buffer = self._buffers[name]
        buffer.extend(rows)
        if len(buffer) >= BATCH_ROWS:
            self._flush(name)

    def _flush(self, name: str) -> None:
        import pyarrow.parquet as pq  # noqa: PLC0415 - 0.3 s import, only for parquet targets

        rows, self._buffers[name] = self._buffers[name], []
        table = _arrow_table(rows, self.types[name])
        if name not in self._parquet:
            self._parquet_files.append(open_new(self._partial(name)))
            self._parquet[name] = pq.ParquetWriter(self._parquet_files[-1], table.schema)
        if rows:
            self._parquet[name].write_table(table)

    def close(self, complete: bool) -> list[Path]:
        for fh in self._csv.values():
            fh.close()
        if self.kind != "csv":
            for name in self.types:
                if complete and (self._buffers[name] or name not in self._parquet):
                    self._flush(name)
            for writer in self._parquet.values():
                writer.close()
            for part in self._parquet_files:
                part.close()
        done = []
        for name in self.types:
            partial = self._partial(name)
            if complete:
                final = self.folder / f"{name}.{self.ext}"
                replace(partial, final)
                done.append(final)
            else:
                partial.unlink(missing_ok=True)
        return done


def _export_files(
    target: Target,
    info: RunInfo,
    bundles: Iterator[Rows],
    types: dict[str, dict[str, str]],
    dictionary: list[Row],
    cohort: Callable[[], Row] | None,
    progress: Callable[[int], None] | None,
    inputs: list[Path],
) -> ExportSummary:
    folder = Path(target.location)
    ext = "csv" if target.kind == "csv" else "parquet"
    names = {f"{name}.{ext}" for name in types} | {"data-dictionary.csv", "run.json"}
    inputs_in_the_way(folder, inputs, lambda name: name.removesuffix(".partial") in names, option="--to")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # run.json goes first and comes back last, naming every file with its sha256: a folder without it, or
        # whose files do not match it, is not a whole export (a crash between two tables' renames).
        (folder / "run.json").unlink(missing_ok=True)
        sink = _FileSink(folder, target.kind, types)
    except OSError as exc:
        raise TargetError(f"cannot write to the export folder {folder}: {exc.strerror}") from None
    complete = False
    try:
        if "runs" in types:
            sink.add("runs", [dict(info.__dict__)])
        for rows in bundles:
            for name, table_rows_ in rows.items():
                if table_rows_:
                    sink.add(
                        name, [{"run_id": info.run_id, **r} for r in table_rows_] if "runs" in types else table_rows_
                    )
            if progress:
                progress(1)
        if cohort is not None:
            sink.add("cohort_summaries", [{"run_id": info.run_id, **cohort()}])
        complete = True
    except OSError as exc:
        raise TargetError(f"cannot write to {folder}: {exc.strerror}") from None
    finally:
        files = sink.close(complete)
    _write_csv(folder / "data-dictionary.csv", list(dictionary[0]), dictionary)
    digests = {p.name: file_digest(p) for p in [*files, folder / "data-dictionary.csv"]}
    write_new(folder / "run.json", orjson.dumps({**info.__dict__, "files": digests}, option=orjson.OPT_INDENT_2))
    lines = [(name, n, 0, 0) for name, n in sink.counts.items() if name != "runs"]
    return ExportSummary(
        info, target, True, False, lines, [*files, folder / "data-dictionary.csv", folder / "run.json"]
    )


def _cells(columns: list[str], rows: list[Row]) -> Iterator[list[str | int | float]]:
    """The CSV cells of ``rows``: every CSV writer here goes through this, so no text cell is a formula."""
    for row in rows:
        yield [csv_cell(row.get(c)) for c in columns]


def _write_csv(path: Path, columns: list[str], rows: list[Row]) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open_new_text(tmp, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(_cells(columns, rows))
    replace(tmp, path)


def _arrow_table(rows: list[Row], types: dict[str, str]) -> Any:  # a pyarrow.Table (pyarrow has no type hints)
    import pyarrow as pa  # noqa: PLC0415

    arrow = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "date": pa.date32(), "str": pa.string()}

    def cell(kind: str, value: Cell) -> Cell | date:
        if value is None:
            return None
        if kind == "date" and isinstance(value, str):
            return date.fromisoformat(value) if len(value) == 10 else None
        if kind == "str" and not isinstance(value, str):
            return str(value)
        if kind == "float" and isinstance(value, int):
            return float(value)
        return value

    schema = pa.schema([pa.field(c, arrow[k]) for c, k in types.items()])
    data = {c: [cell(k, r.get(c)) for r in rows] for c, k in types.items()}
    return pa.table(data, schema=schema)

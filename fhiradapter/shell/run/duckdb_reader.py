"""Pass one through DuckDB (``evaluate --reader duckdb``): NDJSON files decoded and classified in SQL.

DuckDB reads each NDJSON file (plain, ``.gz``, ``.zst``) whose first record is an Observation (any other file goes
to the Python path whole) with explicit columns (``duckdb_reader.sql``) and says, line by line, whether the line is
an Observation that the SQL can classify exactly: every field the typed decoding reads has the JSON type
:mod:`fhiradapter.core.fhir_types` gives it, and nothing in it needs the Python mapper's detail (a focus,
components, contained resources, identifiers, a value other than ``valueQuantity``). Those lines are mapped here
from the values DuckDB extracted, through the mapper's own helpers (code tables, dates, units). Every other line,
and every line DuckDB and the Python reader might read differently (a backslash escape, non-ASCII text, what
DuckDB's JSON parser tolerates and orjson does not), goes to today's reader and mapper, which stay the reference:
rejects keep their reason, path and locator.

The Python reader still reads every line (reading is cheap next to decoding and mapping), so line numbers, blank
lines, too-large lines, byte order marks and a file that breaks off are handled exactly as before. Each line
DuckDB maps is checked to be the line it read (its id); at the first disagreement the rest of the file is read
by the Python path alone. A file DuckDB cannot read (a line that is not an object where one is typed, a line
over the size limit, broken JSON) is read by the Python path whole. Not the default: measured slower than the
Python path, and why, in docs/performance.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

from fhiradapter.core.dedup import InputRecord, Version
from fhiradapter.core.mappers import COUNTED_OBS_STATUS, NUMERIC_CONCEPTS, MapContext, _convert
from fhiradapter.core.model import Issue, Observed
from fhiradapter.shell.run.engine import RunStats
from fhiradapter.shell.run.readers import (  # the reader's own pieces, so that both paths read alike
    _ZSTD_ERRORS,
    MAX_RECORD_BYTES,
    RawRecord,
    Reject,
    Task,
    _is_ndjson,
    _open,
    _skip_line,
    packed_without_suffix,
    read_lines,
    too_large,
)
from fhiradapter.shell.run.spill import RejectSink
from fhiradapter.shell.run.steps import map_raw, read_task

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

PACKED = ("", ".gz", ".zst")  # what DuckDB decompresses itself; other files are read by the Python path
SEPARATOR = "\x1f"  # between system and code in the SQL code table (no JSON string without escapes holds it)


# DuckDB's JSON parser accepts NaN, Infinity and trailing commas, which the reader's parsers refuse: a line goes
# through SQL only when msgspec, as strict as the reader, also reads it as JSON (every field skipped, quickly).
class _AnyObject(msgspec.Struct):
    """A JSON object, every field skipped unread."""


_STRICT = msgspec.json.Decoder(_AnyObject)

# Every column is JSON text at its leaves, so that the SQL can tell a string from a number.
_QUANTITY = "STRUCT(value JSON, unit JSON, code JSON)"
_CODING = "STRUCT(system JSON, code JSON, display JSON)"
COLUMNS = {
    "resourceType": "JSON",
    "id": "JSON",
    "meta": f"STRUCT(versionId JSON, lastUpdated JSON, tag {_CODING}[])",
    "status": "JSON",
    "code": f"STRUCT(coding {_CODING}[], text JSON)",
    "subject": "STRUCT(reference JSON, type JSON, identifier STRUCT(system JSON, value JSON), display JSON)",
    "effectiveDateTime": "JSON",
    "valueQuantity": _QUANTITY,
    "referenceRange": f"STRUCT(low {_QUANTITY}, high {_QUANTITY})[]",
    **dict.fromkeys(
        (
            "identifier",
            "focus",
            "component",
            "contained",
            "effectiveInstant",
            "effectivePeriod",
            "dataAbsentReason",
            "valueInteger",
            "valueCodeableConcept",
            "valueString",
            "valueBoolean",
            "valueRange",
            "valueRatio",
            "valueSampledData",
            "valueTime",
            "valueDateTime",
            "valuePeriod",
        ),
        "JSON",
    ),
}

_BROKEN: tuple[type[Exception], ...] = (OSError, EOFError, ValueError, *_ZSTD_ERRORS)  # as read_file
Row = tuple[Any, ...]  # one row of duckdb_reader.sql's SELECT, in its column order
FETCH_ROWS = 8192


def whole_files(chunk_bytes: int, reader: str) -> int:
    """The share of a file one task reads: DuckDB reads a file whole, so files are not cut into chunks."""
    return 1 << 62 if reader == "duckdb" else chunk_bytes


def read_task_any(
    rank: int,
    task: Task,
    ctx: MapContext,
    rejects: RejectSink,
    stats: RunStats,
    progress: Callable[[int], None] | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
    reader: str = "python",
) -> Iterator[InputRecord]:
    """One task read through DuckDB when ``reader`` is ``duckdb``, else (and for what DuckDB does not read) as
    today (``steps.read_task``)."""
    if reader != "duckdb" or not _duckdb_reads(task) or not _observations_first(task.path, max_record_bytes):
        yield from read_task(rank, task, ctx, rejects, stats, progress, max_record_bytes)
        return
    import duckdb  # noqa: PLC0415 - the extra `duckdb`, needed only when asked for (cli names the extra)

    try:
        cursor = _query(task.path, ctx, max_record_bytes)
    # A line DuckDB cannot type (its error text can hold a cut multi-byte character, which the binding fails to
    # decode: UnicodeDecodeError): the Python path reads the file and says what is wrong.
    except (UnicodeDecodeError, duckdb.Error):
        yield from read_task(rank, task, ctx, rejects, stats, progress, max_record_bytes)
        return
    try:
        yield from _read_paired(rank, task.path, cursor, ctx, rejects, stats, progress, max_record_bytes)
    finally:
        cursor.close()


def _duckdb_reads(task: Task) -> bool:
    name = task.path.name.lower()
    return (
        task.start == 0
        and task.end is None
        and _is_ndjson(task.path)
        and any(name.endswith((f".ndjson{packed}", f".jsonl{packed}")) for packed in PACKED)
        and packed_without_suffix(task.path) is None
    )


_OBSERVATION = re.compile(rb'"resourceType"\s*:\s*"Observation"')
FIRST_LINES = 64  # blank lines looked past for the first record


def _observations_first(path: Path, limit: int) -> bool:
    """Whether the file's first record is an Observation, the one type the SQL maps: any other file (a Bulk
    export writes one type per file) would be parsed twice, by DuckDB for nothing and by the Python reader.
    Either answer is safe: the Python path reads what DuckDB does not map."""
    try:
        with _open(path) as fh:
            for _ in range(FIRST_LINES):
                line = fh.readline(min(limit, 1 << 16))
                if not line or not line.isspace():
                    return _OBSERVATION.search(line) is not None
    except _BROKEN:
        return False  # the Python path says what is wrong
    return False


def _sql(ctx: MapContext, limit: int) -> list[str]:
    text = resources.files(__package__).joinpath("duckdb_reader.sql").read_text()
    columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in COLUMNS.items()) + "}"
    codes = _code_map(ctx)
    code = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    statements = [statement.strip() for statement in code.split(";\n") if statement.strip()]
    counted = "(" + ", ".join(f"'{status}'" for status in sorted(COUNTED_OBS_STATUS)) + ")"
    select = statements[-1].replace("{columns}", columns).replace("{codes}", codes).replace("{counted}", counted)
    select = select.replace("$limit", str(limit))
    return [*statements[:-1], select]


def _code_map(ctx: MapContext) -> str:
    """The Observation code table as a DuckDB MAP literal (system, separator, code -> concept)."""
    table = ctx.mappings.observation
    if table._prefix:  # codes matched by prefix: none are read in SQL, every Observation goes to Python
        return "MAP {}::MAP(VARCHAR, VARCHAR)"
    entries = [
        f"'{_quote(system)}{SEPARATOR}{_quote(code)}': '{_quote(concept)}'"
        for (system, code), concept in table._exact.items()
    ]
    return "MAP {" + ", ".join(entries) + "}" if entries else "MAP {}::MAP(VARCHAR, VARCHAR)"


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _query(path: Path, ctx: MapContext, limit: int) -> DuckDBPyConnection:
    """DuckDB's rows for one file, one thread (the workers are the parallelism), executed and ready to fetch."""
    import duckdb  # noqa: PLC0415 - the extra `duckdb`

    con = duckdb.connect(config={"threads": 1})
    *macros, select = _sql(ctx, limit)
    for statement in macros:
        con.execute(statement)
    con.execute(select, {"path": str(path)})
    return con


class _Rows:
    """DuckDB's rows handed out one at a time, fetched a block at a time."""

    def __init__(self, cursor: DuckDBPyConnection) -> None:
        self._cursor = cursor
        self._block: list[Row] = []
        self._at = 0

    def next(self) -> Row | None:
        if self._at >= len(self._block):
            import duckdb  # noqa: PLC0415 - the extra `duckdb`

            try:
                self._block, self._at = self._cursor.fetchmany(FETCH_ROWS), 0
            except (UnicodeDecodeError, duckdb.Error):  # as in read_task_any
                self._block = []  # a line further on DuckDB cannot read: the Python path reads from here on
            if not self._block:
                return None
        row = self._block[self._at]
        self._at += 1
        return row


def _read_paired(
    rank: int,
    path: Path,
    cursor: DuckDBPyConnection,
    ctx: MapContext,
    rejects: RejectSink,
    stats: RunStats,
    progress: Callable[[int], None] | None,
    limit: int,
) -> Iterator[InputRecord]:
    """The file's lines in order, each paired with DuckDB's row for it: mapped from the row when the SQL
    classified it exactly, else by the Python reader and mapper (a run of such lines at a time). Counted and
    rejected as ``steps.read_task`` over ``readers.read_file`` does it."""
    name = str(path)
    state = _State(rank * 1_000_000_000, ctx, rejects, stats, name, limit)
    rows: _Rows | None = _Rows(cursor)
    try:
        with _open(path) as fh:
            for lineno, line in enumerate(_lines(fh, limit, progress), 1):
                if line is None:  # over the size limit: DuckDB refused the file, so this is never reached
                    yield from state.flush()
                    yield from state.python([too_large(name, f"line {lineno}", limit)])
                    rows = None
                    continue
                fast = None
                if rows is not None and not line.isspace():
                    row = rows.next()
                    if row is None or (row[2] and not _same(row[1], line)):
                        rows = None  # DuckDB and the reader disagree about the lines: Python reads the rest
                    else:
                        fast = _fast(row, line, lineno, ctx, name)
                if fast is None:
                    state.hold(line, lineno)
                    continue
                yield from state.flush()
                yield state.mapped(*fast)
            yield from state.flush()
    except _BROKEN as exc:  # as readers.read_file reports a broken file
        yield from state.flush()
        what = "record was" if state.read == 1 else "records were"
        reason = (
            f"the file breaks off: {state.read} {what} read before the break, the rest of the file is lost "
            f"({type(exc).__name__})"
        )
        yield from state.python([Reject(name, "file", None, None, "unreadable", reason)])


class _State:
    """Where a file's reading stands: the input order (``seq``), the records read, and the lines held for
    the Python path."""

    def __init__(self, seq: int, ctx: MapContext, rejects: RejectSink, stats: RunStats, name: str, limit: int) -> None:
        self.seq, self.read = seq, 0
        self._ctx, self._rejects, self._stats, self._name, self._limit = ctx, rejects, stats, name, limit
        self._held: list[bytes] = []
        self._first = 1

    def hold(self, line: bytes, lineno: int) -> None:
        if not self._held:
            self._first = lineno
        self._held.append(line[:-1] if line.endswith(b"\n") else line)

    def flush(self) -> Iterator[InputRecord]:
        """The lines held, read and mapped by the Python path (the reference)."""
        if self._held:
            held, self._held = self._held, []
            yield from self.python(read_lines(held, self._name, self._first, self._limit))

    def python(self, raws: Iterable[RawRecord | Reject]) -> Iterator[InputRecord]:
        for raw in raws:
            self.read += 1
            item = map_raw(raw, self.seq, self._ctx, self._rejects, self._stats)
            self.seq += 1
            if item is not None:
                yield item

    def mapped(self, record: Observed, issues: list[Issue], version: Version) -> InputRecord:
        self.read += 1
        self._stats.read["Observation"] += 1
        item = InputRecord(record.ref, version, self.seq, record, issues, record.origin, record.patient)
        self.seq += 1
        return item


def _lines(fh: BinaryIO, limit: int, progress: Callable[[int], None] | None) -> Iterator[bytes | None]:
    """Each line of ``fh`` (None for one over ``limit``, skipped without being held), as the reader reads them."""
    readline = fh.readline
    pending = 0
    while line := readline(limit + 1):
        used = len(line)
        if used > limit and not line.endswith(b"\n"):
            used += _skip_line(readline)
            yield None
        else:
            yield line
        if progress is not None:
            pending += used
            if pending > 1 << 20:
                progress(pending)
                pending = 0
    if progress is not None and pending:
        progress(pending)


def _same(rid: str | None, line: bytes) -> bool:
    """Whether DuckDB's row is this line's: the id it read is written in the line."""
    return rid is not None and f'"id":"{rid}"'.encode() in line


def _strict(line: bytes) -> bool:
    """Whether the reader's own parser reads the line as one JSON object (NaN, Infinity, trailing commas: no)."""
    try:
        _STRICT.decode(line)
    except msgspec.DecodeError:
        return False
    return True


def _version(row: Row) -> Version:
    """``dedup.version_of`` from the row's meta (both strings, or absent)."""
    vid, updated = row[10], row[11]
    return Version(
        int(vid) if isinstance(vid, str) and vid.isascii() and vid.isdecimal() else -1,
        updated if isinstance(updated, str) else "",
        vid if isinstance(vid, str) else "",
    )


def _fast(
    row: Row, line: bytes, lineno: int, ctx: MapContext, name: str
) -> tuple[Observed, list[Issue], Version] | None:
    """The Observation a row maps to, as ``mappers.map_observation`` maps it; None: the Python path decides."""
    (_n, rid, fast, concept, status, subject, day, value, unit, unit_code) = row[:10]
    if not fast or concept not in NUMERIC_CONCEPTS:  # the SQL checked id, status, subject and date
        return None
    if b"\\" in line or not line.isascii() or not _strict(line):
        return None  # escapes, non-ASCII text, lax JSON: read as the Python reader reads them
    ref = f"Observation/{rid}"
    unit_in = unit_code if unit_code is not None else unit or ""
    converted, note, bad = _convert(concept, float(value), unit_in, ctx, ref, "valueQuantity.code")
    if bad:
        return None
    issues: list[Issue] = []
    bounds: dict[str, float | None] = {"low": None, "high": None}
    if row[12]:
        for key, (bound, bound_unit, bound_code) in (("low", row[13:16]), ("high", row[16:19])):
            if bound is None:
                continue
            quantity_unit = bound_code if bound_code is not None else bound_unit or ""
            where = f"referenceRange[0].{key}"
            conv, _note, problem = _convert(concept, float(bound), quantity_unit or unit_in, ctx, ref, where)
            if problem:
                issues += problem
            else:
                bounds[key] = conv
    canonical = ctx.mappings.canonical_unit[concept]
    origin = (name, f"line {lineno}")
    observed = Observed(
        ref,
        subject,
        concept,
        day,
        converted,
        canonical,
        None,
        bounds["low"],
        bounds["high"],
        None,
        None,
        None,
        status,
        note,
        origin,
    )
    return observed, issues, _version(row)

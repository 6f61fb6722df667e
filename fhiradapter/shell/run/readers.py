"""Readers: NDJSON, Bundle or single-resource JSON files, compressed or not, and folders of them, streamed.

Each input record comes out either as a :class:`RawRecord` (a resource with where it came from and,
inside a Bundle, the ``urn:uuid`` aliases of its siblings) or as a :class:`Reject` naming file, line or
entry, and the reason. Nothing is dropped silently:

- suffixes are matched whatever their case (``X.NDJSON``); ``.gz``, ``.bz2``, ``.xz`` and ``.zst`` files are
  read through their decompressor; a file in an input folder that is not read (``.txt``, ``.csv``, a pull's
  manifest) is listed with the reason (``not-read``);
- a compressed file that breaks off says how many records were read before the break, and that the rest is
  lost (``unreadable``);
- a UTF-8 byte order mark at a file's start is accepted; a ``.json`` file that holds NDJSON is read as NDJSON;
- an NDJSON line of a type the protocol reads is decoded straight into its Struct (:mod:`fhir_types`), every
  field the mappers do not read skipped; any other line (another type, a Bundle, a mistyped field, broken
  JSON) is read as a dict, so that what is wrong with it is reported exactly;
- an NDJSON file is never held in memory whole, and neither is a Bundle file above ``STREAM_BYTES``: its
  entries are streamed (ijson), one at a time, in two passes (the ``urn:uuid`` aliases first), so memory
  stays flat whatever the layout of the file;
- every format is decompressed as a stream, a bounded piece at a time (a small ``.zst`` file may hold
  gigabytes), and no record is held whole above ``max_record_bytes`` (``evaluate --max-record-bytes``): a
  longer line is one ``too-large`` reject, skipped to the next newline without being held; a longer JSON
  document (or Bundle entry) is one ``too-large`` reject too. Runs of empty lines are skipped a block at a
  time.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

import ijson
import msgspec
import orjson

from fhiradapter.core.fhir_types import FAST_DECODER, Resource
from fhiradapter.core.json_types import JsonObject, JsonValue, member, text
from fhiradapter.errors import InputError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

NDJSON = (".ndjson", ".jsonl")
DOCUMENT = (".json",)
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
SUFFIXES = tuple(f"{kind}{packed}" for kind in (*NDJSON, *DOCUMENT) for packed in ("", *COMPRESSIONS))
try:
    from zstandard import ZstdError

    _ZSTD_ERRORS: tuple[type[Exception], ...] = (ZstdError,)
except ImportError:  # pragma: no cover - zstandard is a dependency
    _ZSTD_ERRORS = ()
STREAM_BYTES = 16 * 1024 * 1024  # a Bundle larger than this (decompressed) has its entries streamed
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a line, JSON document or Bundle entry above this is refused (too-large)
MAX_REJECTS_PER_FILE = 1000  # rejects.ndjson lists this many per input file; the rest are counted
BOM = b"\xef\xbb\xbf"
PIECE = 1 << 20  # bytes read at a time when a line over the limit is skipped
BLANK_RUN = 1 << 16  # bytes of empty lines looked at, and skipped, at a time
ZSTD_FEED = 256  # compressed bytes per zstd call: at most about 8 MiB out (zstd expands at most ~32,000 times)


READERS = ("python", "duckdb")  # pass one's NDJSON reader: ours (the reference), or DuckDB (extra `duckdb`)


class InputLimits(NamedTuple):
    """How the input is read: how much of it one record, and one file's rejects, may take
    (``evaluate --max-record-bytes``, ``--max-rejects-per-file``), and which reader reads NDJSON
    (``--reader``; ``shell/run/duckdb_reader.py``)."""

    record_bytes: int = MAX_RECORD_BYTES
    rejects_per_file: int = MAX_REJECTS_PER_FILE
    reader: str = "python"


def _lower(path: Path) -> str:
    return path.name.lower()


def is_data_file(path: Path) -> bool:
    """Whether a file's name says it holds FHIR resources the readers read (any case)."""
    return _lower(path).endswith(SUFFIXES)


def _is_ndjson(path: Path) -> bool:
    name = _lower(path)
    for packed in COMPRESSIONS:
        name = name.removesuffix(packed)
    return name.endswith(NDJSON)


def is_plain(path: Path) -> bool:
    """Whether a file is read as it is on disk (not compressed)."""
    return not _compression(path)


def _compression(path: Path) -> str:
    name = _lower(path)
    return next((packed for packed in COMPRESSIONS if name.endswith(packed)), "")


class RawRecord(NamedTuple):
    """One resource as read: decoded straight into its Struct (an NDJSON line), or as its JSON dict."""

    resource: Resource | dict[str, Any]  # a Bundle's entry: JSON as read (the mappers take either)
    origin: tuple[str, str]
    aliases: dict[str, str] | None


class Reject(NamedTuple):
    """An input record not used, and why: one line of rejects.ndjson (every value a string or null).

    ``path``: the FHIR element the reason is about (``Observation.valueQuantity.code``); ``unmapped``: the
    source's code no mapping knows (``system|code``: what to add to mappings/). Both only where they apply."""

    file: str
    locator: str
    resource_type: str | None
    id: str | None
    code: str
    reason: str
    path: str | None = None
    unmapped: str | None = None

    def line(self) -> bytes:
        """The reject as rejects.ndjson writes it (no newline), its keys in the file's order."""
        entry: dict[str, str | None] = {
            "file": self.file,
            "locator": self.locator,
            "resourceType": self.resource_type,
            "id": self.id,
            "code": self.code,
        }
        if self.path:
            entry["path"] = self.path
        entry["reason"] = self.reason
        if self.unmapped is not None:
            entry["unmapped"] = self.unmapped
        return orjson.dumps(entry)


def too_large(name: str, locator: str, limit: int, rest: str = "") -> Reject:
    """The reject of one record over the size limit: where it is and the limit, never its content."""
    reason = f"larger than the limit of {limit} bytes per record (--max-record-bytes): not read{rest}"
    return Reject(name, locator, None, None, "too-large", reason)


# Files a folder of pulled data holds beside the resources: described by name, never read as input.
PULL_MANIFEST = "pull-manifest.json"  # what a pull wrote (pull, bulk)
BULK_STATE = "bulk-state.json"  # an unfinished Bulk export's job (bulk)
PULL_REJECTS = "pull-rejects.ndjson"  # the lines of a Bulk export no reader could use (bulk), as rejects
NOT_DATA = frozenset({PULL_MANIFEST, BULK_STATE, PULL_REJECTS})


def expand_inputs(paths: list[Path], exclude: Path | None = None) -> list[Path]:
    """Files to read (see :func:`find_inputs`)."""
    return find_inputs(paths, exclude)[0]


def find_inputs(paths: list[Path], exclude: Path | None = None) -> tuple[list[Path], list[Reject]]:
    """Files to read, folders walked recursively in name order, and the files of those folders not read.

    Raise InputError for a missing or unreadable path. Files under ``exclude`` (the output folder) are left
    out; every other file in a folder that is not read is returned as a ``not-read`` Reject with the reason
    (a file named explicitly is always read).
    """
    files: list[Path] = []
    skipped: list[Reject] = []
    skip = exclude.resolve() if exclude is not None else None
    for path in paths:
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if not p.is_file() or (skip is not None and skip in p.resolve().parents):
                    continue
                if p.name in NOT_DATA:
                    why = "written by fhiradapter pull beside the data: a description of the pull, not data"
                    skipped.append(Reject(str(p), "file", None, None, "not-read", why))
                elif is_data_file(p):
                    files.append(p)
                else:
                    suffix = "".join(p.suffixes[-2:]) or "none"
                    why = (
                        f"not a FHIR data file by its name (suffix {suffix}; read are .ndjson, .jsonl and .json, "
                        "optionally .gz, .bz2, .xz or .zst)"
                    )
                    skipped.append(Reject(str(p), "file", None, None, "not-read", why))
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"input not found: {path}")
    for f in files:
        if not os.access(f, os.R_OK):
            raise InputError(f"input not readable: {f}")
    return files, skipped


# The first bytes of each compressed format read, and the name suffix that says so.
MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
PACKED_SUFFIX = {"gzip": ".gz", "zstd": ".zst", "bzip2": ".bz2", "xz": ".xz"}


def packed_without_suffix(path: Path) -> str | None:
    """The compression of a file whose name says it is plain, by its first bytes (None: plain, or named so)."""
    if _compression(path):
        return None
    try:
        with path.open("rb") as fh:
            head = fh.read(6)
    except OSError:
        return None  # read_file reports it
    return next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None)


def _open(path: Path) -> BinaryIO:
    packed = _compression(path)
    if packed == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if packed == ".bz2":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if packed == ".xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    if packed == ".zst":
        return io.BufferedReader(_ZstdFrames(path.open("rb")), buffer_size=1 << 20)  # lines, like the others
    return path.open("rb")


class Task(NamedTuple):
    """A share of the input for one worker: a whole file, or a line-aligned byte range of a plain NDJSON file."""

    path: Path
    start: int
    end: int | None
    first_line: int


def plan_tasks(files: list[Path], chunk_bytes: int) -> list[Task]:
    """Split large plain NDJSON files at line boundaries into chunks of about ``chunk_bytes``.

    The line number each chunk starts at is counted here, so rejects still name the file's own line.
    """
    tasks: list[Task] = []
    for path in files:
        size = path.stat().st_size
        if not _lower(path).endswith(NDJSON) or size <= chunk_bytes:
            tasks.append(Task(path, 0, None, 1))
            continue
        start, line = 0, 1
        with path.open("rb") as fh:
            while start < size:
                target = start + chunk_bytes
                if target >= size:
                    tasks.append(Task(path, start, None, line))
                    break
                fh.seek(start)
                lines = sum(piece.count(b"\n") for piece in _pieces(fh, target - start))  # streamed: flat memory
                tail, ended = 0, 0  # finish the line the target falls in, a piece at a time (it may be huge)
                while piece := fh.readline(PIECE):
                    tail += len(piece)
                    if piece.endswith(b"\n"):
                        ended = 1
                        break
                end = target + tail
                tasks.append(Task(path, start, end, line))
                line += lines + ended
                start = end
    return tasks


def _pieces(fh: BinaryIO, length: int, size: int = 1 << 20) -> Iterator[bytes]:
    while length > 0:
        piece = fh.read(min(size, length))
        if not piece:
            return
        length -= len(piece)
        yield piece


def read_file(
    path: Path,
    on_bytes: Callable[[int], None] | None = None,
    task: Task | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[RawRecord | Reject]:
    """Records of one file (or one task's share of it): NDJSON by line; any other as one JSON document, or its
    Bundle entries streamed when it is large; a ``.json`` file that holds NDJSON, by line. A line, document or
    entry above ``max_record_bytes`` is one ``too-large`` reject, never held whole."""
    name = str(path)
    read = 0
    packed = packed_without_suffix(path)
    if packed is not None:  # compressed bytes under a plain name: one reject for the file, not one per "line"
        if task is None or task.start == 0:
            yield Reject(
                name,
                "file",
                None,
                None,
                "compressed-content",
                f"the file holds {packed}-compressed data but its name does not say so: rename it "
                f"{path.name}{PACKED_SUFFIX[packed]} (nothing of it was read)",
            )
        return
    try:
        if _is_ndjson(path):
            records = _ndjson_file(path, name, on_bytes, task, max_record_bytes)
        else:
            records = _json_file(path, name, on_bytes, max_record_bytes)
        for record in records:
            read += 1
            yield record
    except (OSError, EOFError, lzma.LZMAError, ValueError, ijson.JSONError, *_ZSTD_ERRORS) as exc:
        # A truncated or corrupt file, an I/O error. Only the error's type: its text can quote the file's bytes.
        what = "record was" if read == 1 else "records were"
        yield Reject(
            name,
            "file",
            None,
            None,
            "unreadable",
            f"the file breaks off: {read} {what} read before the break, the rest of the file is lost "
            f"({type(exc).__name__})",
        )


def _ndjson_file(
    path: Path, name: str, on_bytes: Callable[[int], None] | None, task: Task | None, limit: int
) -> Iterator[RawRecord | Reject]:
    with _open(path) as fh:
        if task is not None and task.start:
            fh.seek(task.start)
        first = task.first_line if task else 1
        yield from _read_ndjson(fh, name, on_bytes, task.end if task else None, first, limit)


def _json_file(
    path: Path, name: str, on_bytes: Callable[[int], None] | None, limit: int
) -> Iterator[RawRecord | Reject]:
    """A JSON file: parsed whole up to ``STREAM_BYTES`` (decompressed); above it a Bundle's entries are
    streamed, NDJSON named .json is read by line, and any other document is parsed whole up to ``limit``."""
    whole = min(STREAM_BYTES, limit)
    with _open(path) as fh:
        data = fh.read(whole + 1)
        if len(data) > whole:
            if _is_bundle(path, data, limit):
                fh.close()
                yield from _streamed_entries(path, name, on_bytes, limit)
                return
            if _first_line_is_object(data):  # NDJSON in a .json file, as some exports name it
                fh.close()
                yield from _ndjson_file(path, name, on_bytes, None, limit)
                return
            data += fh.read(limit + 1 - len(data))
            if len(data) > limit:  # refused before it is held whole (or parsed: several times its size)
                del data
                if on_bytes:
                    on_bytes(path.stat().st_size)
                yield too_large(name, "file", limit)
                return
    if on_bytes:
        on_bytes(path.stat().st_size)
    yield from _read_document(data, name, limit)


def _read_ndjson(
    fh: BinaryIO,
    name: str,
    on_bytes: Callable[[int], None] | None,
    end: int | None = None,
    first_line: int = 1,
    limit: int = MAX_RECORD_BYTES,
) -> Iterator[RawRecord | Reject]:
    """NDJSON lines from ``fh`` (up to byte ``end``), numbered from ``first_line``. No more than ``limit`` + 1
    bytes of one line are ever held: a longer line is skipped to its newline, a piece at a time."""
    decode, loads, decode_error = FAST_DECODER.decode, orjson.loads, orjson.JSONDecodeError
    not_typed = msgspec.DecodeError
    readline = fh.readline
    peek = getattr(fh, "peek", None)  # buffered readers: runs of empty lines are skipped a block at a time
    pending = 0
    remaining = None if end is None else end - fh.tell()
    lineno = first_line - 1
    while remaining is None or remaining > 0:
        line = readline(limit + 1)
        if not line:
            break
        lineno += 1
        used = len(line)
        oversized = used > limit and not line.endswith(b"\n")
        if oversized:
            line = b""
            used += _skip_line(readline)
            reject = too_large(name, f"line {lineno}", limit)
        elif line.isspace():
            if peek is not None:
                lines, skipped = _skip_blank(fh)
                lineno += lines
                used += skipped
            line = b""
        if remaining is not None:
            remaining -= used
        if on_bytes is not None:
            pending += used
            if pending > 1 << 20:  # report progress per MiB, not per line
                on_bytes(pending)
                pending = 0
        if oversized:
            yield reject
            continue
        if not line:  # empty lines are not records
            continue
        if lineno == 1 and line.startswith(BOM):
            line = line[len(BOM) :]
        # The common case: a line decoded straight into the typed resource, every other field skipped.
        try:
            if not line.isascii():
                line.decode()  # msgspec does not check the text of the fields it skips; orjson reports bad UTF-8
            typed = decode(line)
            if typed.id:
                yield RawRecord(typed, (name, f"line {lineno}"), None)
                continue
        except (not_typed, UnicodeDecodeError, RecursionError):
            pass  # another type, a Bundle, a mistyped field, broken JSON: read as a dict, to report it exactly
        try:
            obj = loads(line)
        except decode_error as exc:
            if line.strip():
                yield Reject(name, f"line {lineno}", None, None, "malformed-json", f"not valid JSON ({exc.msg})")
            continue
        if type(obj) is dict and (rtype := obj.get("resourceType")) is not None and rtype != "Bundle":
            rid = obj.get("id")
            if type(rid) is str and rid and type(rtype) is str:
                yield RawRecord(obj, (name, f"line {lineno}"), None)
                continue
        yield from _records(obj, name, f"line {lineno}")
    if on_bytes is not None and pending:
        on_bytes(pending)


def _skip_line(readline: Callable[[int], bytes]) -> int:
    """Read past the rest of a line, a piece at a time; the bytes skipped."""
    used = 0
    while piece := readline(PIECE):
        used += len(piece)
        if piece.endswith(b"\n"):
            break
    return used


def _skip_blank(fh: BinaryIO) -> tuple[int, int]:
    """Skip the empty (whitespace) lines that follow, a block at a time; the lines and bytes skipped."""
    lines = used = 0
    while True:
        ahead = fh.peek(BLANK_RUN)[:BLANK_RUN]  # type: ignore[attr-defined]
        blank = len(ahead) - len(ahead.lstrip())
        cut = ahead.rfind(b"\n", 0, blank) + 1  # up to the last newline of the run: the next line starts there
        if not cut:
            return lines, used
        fh.read(cut)
        lines += ahead.count(b"\n", 0, cut)
        used += cut
        if blank < len(ahead):
            return lines, used


def read_lines(
    lines: Iterable[bytes], name: str, first_line: int = 1, max_record_bytes: int = MAX_RECORD_BYTES
) -> Iterator[RawRecord | Reject]:
    """NDJSON lines that another reader split (Spark's text files), numbered from ``first_line``."""
    buffered = io.BufferedReader(io.BytesIO(b"\n".join(lines)))
    yield from _read_ndjson(buffered, name, None, first_line=first_line, limit=max_record_bytes)


def read_document(data: bytes, name: str, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[RawRecord | Reject]:
    """One whole JSON file's records (a Bundle, a resource, a list; NDJSON named .json)."""
    if len(data) > max_record_bytes:
        yield too_large(name, "file", max_record_bytes)
        return
    yield from _read_document(data, name, max_record_bytes)


def _read_document(data: bytes, name: str, limit: int = MAX_RECORD_BYTES) -> Iterator[RawRecord | Reject]:
    data = data.removeprefix(BOM)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if _looks_like_ndjson(data):  # a .json file holding one resource per line, as some exports name it
            yield from _read_ndjson(io.BytesIO(data), name, None, limit=limit)
            return
        yield Reject(name, "file", None, None, "malformed-json", f"not valid JSON ({exc.msg})")
        return
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _records(item, name, f"item {i}")
        return
    yield from _records(obj, name, "file")


def _records(obj: JsonValue, name: str, locator: str) -> Iterator[RawRecord | Reject]:
    rtype = text(obj, "resourceType")
    if not isinstance(obj, dict) or rtype is None:
        yield Reject(name, locator, None, None, "not-a-resource", "a JSON object with a resourceType is expected")
        return
    if rtype == "Bundle":
        yield from _bundle(obj, name, locator)
        return
    if not text(obj, "id"):
        yield Reject(name, locator, rtype, None, "missing-id", "the resource has no id")
        return
    yield RawRecord(obj, (name, locator), None)


def _bundle(bundle: JsonObject, name: str, locator: str) -> Iterator[RawRecord | Reject]:
    """Entries' resources of any Bundle type; ``urn:uuid`` fullUrls become aliases for references."""
    entries = bundle.get("entry")
    where = "" if locator == "file" else f" (Bundle in {locator})"
    if entries is None:
        return
    if not isinstance(entries, list):
        yield Reject(name, locator, "Bundle", text(bundle, "id"), "invalid-field", "Bundle.entry is not a list")
        return
    aliases = dict(alias for entry in entries if (alias := _alias(entry)) is not None)
    for i, entry in enumerate(entries):
        yield from _bundle_entry(entry, i, name, where, aliases or None)


def _alias(entry: JsonValue) -> tuple[str, str] | None:
    """(fullUrl, Type/id) of a Bundle entry, for references to it by its fullUrl."""
    res = member(entry, "resource")
    full = text(entry, "fullUrl")
    if res is None or not isinstance(res.get("resourceType"), str) or full is None:
        return None
    rid = res.get("id") or (full[len("urn:uuid:") :] if full.startswith("urn:uuid:") else None)
    return (full, f"{res['resourceType']}/{rid}") if isinstance(rid, str) else None


def _bundle_entry(
    entry: JsonValue, i: int, name: str, where: str, aliases: dict[str, str] | None
) -> Iterator[RawRecord | Reject]:
    """One Bundle entry's resource (a nested Bundle's entries), or why it has none."""
    loc = f"entry {i}{where}"
    res = member(entry, "resource")
    rtype = text(res, "resourceType") if res is not None else None
    if res is None or rtype is None:
        yield Reject(name, loc, None, None, "not-a-resource", "Bundle entry without a resource")
        return
    full = text(entry, "fullUrl")
    if not res.get("id") and full is not None and full.startswith("urn:uuid:"):
        res = {**res, "id": full[len("urn:uuid:") :]}  # a transaction entry to be created
    if rtype == "Bundle":
        yield from _bundle(res, name, loc)
        return
    if not text(res, "id"):
        yield Reject(name, loc, rtype, None, "missing-id", "the resource has no id")
        return
    yield RawRecord(res, (name, loc), aliases)


def _looks_like_ndjson(data: bytes) -> bool:
    """Whether a document that is not one JSON value is NDJSON: its first line is a JSON object by itself."""
    return _first_line_is_object(data) and b"\n" in data.strip()


def _first_line_is_object(data: bytes) -> bool:
    first = data.removeprefix(BOM).lstrip().split(b"\n", 1)[0]
    try:
        return isinstance(orjson.loads(first), dict)
    except orjson.JSONDecodeError:
        return False


class _TooLarge(Exception):
    """More than the limit read while one value was being built (see ``_Metered``)."""


class _Metered:
    """A file ijson reads, which refuses to read on when ``limit`` bytes (and ijson's read-ahead) have passed
    since the last ``mark()``: a Bundle entry that large is never built whole."""

    SLACK = 1 << 17  # ijson reads 64 KiB at a time, and may have read ahead into the next entry

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self._fh, self._limit = fh, limit
        self._read = self._mark = 0

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size if size >= 0 else 1 << 16)
        self._read += len(data)
        if self._read - self._mark > self._limit + self.SLACK:
            raise _TooLarge
        return data

    def mark(self) -> None:
        self._mark = self._read


def _is_bundle(path: Path, head: bytes, limit: int) -> bool:
    """Whether a large JSON file's top level is a Bundle (its ``resourceType``, read as a stream)."""
    head = head[: 1 << 16].removeprefix(BOM)
    if b'"Bundle"' not in head or not head.lstrip().startswith(b"{"):
        return False
    with _open(path) as fh:
        metered = _Metered(_skip_bom(fh), limit)
        try:
            for prefix, event, value in ijson.parse(metered):
                metered.mark()
                if prefix == "resourceType" and event == "string":
                    return bool(value == "Bundle")
        except (_TooLarge, ijson.JSONError):
            return False
    return False


def _streamed_entries(
    path: Path, name: str, on_bytes: Callable[[int], None] | None, limit: int
) -> Iterator[RawRecord | Reject]:
    """A large Bundle file's entries, one at a time.

    Two passes over the file: the ``urn:uuid`` aliases of every entry first (references may point forward),
    then the entries themselves, mapped as ``_bundle`` maps a Bundle held whole. An entry above ``limit`` is
    one ``too-large`` reject, and ends the file: a JSON document cannot be resumed after a value not read.
    """
    aliases: dict[str, str] = {}
    with _open(path) as fh:
        metered = _Metered(_skip_bom(fh), limit)
        try:
            for entry in ijson.items(metered, "entry.item", use_float=True):
                metered.mark()
                if (alias := _alias(entry)) is not None:
                    aliases[alias[0]] = alias[1]
        except _TooLarge:
            pass  # the second pass stops at the same entry, and says so
    with _open(path) as fh:
        metered = _Metered(_skip_bom(fh), limit)
        i = 0
        try:
            for i, entry in enumerate(ijson.items(metered, "entry.item", use_float=True), 1):
                metered.mark()
                yield from _bundle_entry(entry, i - 1, name, "", aliases or None)
        except _TooLarge:
            yield too_large(name, f"entry {i}", limit, ", nor the rest of the file")
    if on_bytes:
        on_bytes(path.stat().st_size)


def _skip_bom(fh: BinaryIO) -> BinaryIO:
    start = fh.read(3)
    if start != BOM:
        fh.seek(0)
    return fh


class _ZstdFrames(io.RawIOBase):
    """A .zst file decompressed frame by frame, which raises EOFError when the file ends inside a frame.

    zstandard's own stream reader ends quietly at a cut, as if the file were whole: a Bulk file cut in
    transfer would lose its second half unseen. Its decompressor is fed ``ZSTD_FEED`` bytes at a time, so
    that what one call gives back stays small (a few hundred kilobytes of .zst may hold gigabytes).
    """

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard  # noqa: PLC0415 - only for .zst inputs

        self._raw, self._zstd = raw, zstandard
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._in, self._in_at = b"", 0  # compressed bytes read, and how far they were fed
        self._carry = b""  # what followed the end of a frame in the last piece fed
        self._out, self._out_at = b"", 0  # decompressed bytes, and how far they were handed on
        self._started = False  # whether the current frame has taken any input

    def readable(self) -> bool:
        return True

    def _feed(self) -> bytes:
        if self._carry:
            piece, self._carry = self._carry, b""
            return piece
        if self._in_at >= len(self._in):
            self._in, self._in_at = self._raw.read(1 << 20), 0
        piece = self._in[self._in_at : self._in_at + ZSTD_FEED]
        self._in_at += len(piece)
        return piece

    def readinto(self, buffer: WriteableBuffer) -> int:
        while self._out_at >= len(self._out):
            piece = self._feed()
            if not piece:
                if self._started and not self._frame.eof:
                    raise EOFError("the .zst file ends inside a frame")
                return 0
            self._started = True
            self._out, self._out_at = self._frame.decompress(piece), 0
            if self._frame.eof:  # a frame ended: what follows belongs to the next one
                self._carry = self._frame.unused_data
                self._frame = self._zstd.ZstdDecompressor().decompressobj()
                self._started = False
        target = memoryview(buffer).cast("B")
        n = min(len(target), len(self._out) - self._out_at)
        target[:n] = memoryview(self._out)[self._out_at : self._out_at + n]
        self._out_at += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()

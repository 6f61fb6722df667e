"""Readers: NDJSON (optionally gzip), Bundle or single-resource JSON files, and folders of them, streamed.

Each input record comes out either as a :class:`RawRecord` (a resource dict with where it came from and,
inside a Bundle, the ``urn:uuid`` aliases of its siblings) or as a :class:`Reject` naming file, line or
entry, and the reason. Nothing is dropped silently. An NDJSON file is never held in memory whole; a JSON
file (a Bundle) is, because JSON cannot be streamed by entry without a second parser.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson

from fhiradapter.core.model import from_fields
from fhiradapter.errors import InputError

SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz", ".json", ".json.gz")


class RawRecord(NamedTuple):
    resource: dict[str, Any]
    origin: tuple[str, str]
    aliases: dict[str, str] | None


class Reject(NamedTuple):
    file: str
    locator: str
    resource_type: str | None
    id: str | None
    code: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "locator": self.locator,
            "resourceType": self.resource_type,
            "id": self.id,
            "code": self.code,
            "reason": self.reason,
        }


# Files a folder of pulled data holds beside the resources: described by name, never read as input.
PULL_MANIFEST = "pull-manifest.json"  # what a pull wrote (server_io, bulk)
BULK_STATE = "bulk-state.json"  # an unfinished Bulk export's job (bulk)
NOT_DATA = frozenset({PULL_MANIFEST, BULK_STATE})


def expand_inputs(paths: list[Path], exclude: Path | None = None) -> list[Path]:
    """Files to read, folders walked recursively in name order; raise InputError for a missing path.

    Files under ``exclude`` (the output folder, when it lies inside an input folder) are skipped, so a run
    never reads the results of an earlier one; so are ``pull-manifest.json`` and ``bulk-state.json``, which
    ``fhiradapter pull`` writes beside the resources (a file named explicitly is always read).
    """
    files: list[Path] = []
    skip = exclude.resolve() if exclude is not None else None
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.name.endswith(SUFFIXES)
                and p.name not in NOT_DATA
                and (skip is None or skip not in p.resolve().parents)
            )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"input not found: {path}")
    for f in files:
        if not os.access(f, os.R_OK):
            raise InputError(f"input not readable: {f}")
    return files


def _open(path: Path) -> BinaryIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
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
        if not path.name.endswith((".ndjson", ".jsonl")) or size <= chunk_bytes:
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
                tail = fh.readline()  # finish the line the target falls in
                end = target + len(tail)
                tasks.append(Task(path, start, end, line))
                line += lines + tail.count(b"\n")
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
    path: Path, on_bytes: Callable[[int], None] | None = None, task: Task | None = None
) -> Iterator[RawRecord | Reject]:
    """Records of one file (or one task's share of it); NDJSON by line, anything else as one JSON document."""
    name = str(path)
    is_ndjson = path.name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz"))
    try:
        with _open(path) as fh:
            if is_ndjson:
                if task is not None and task.start:
                    fh.seek(task.start)
                yield from _read_ndjson(fh, name, on_bytes, task.end if task else None, task.first_line if task else 1)
            else:
                data = fh.read()
                if on_bytes:
                    on_bytes(len(data))
                yield from _read_document(data, name)
    except (OSError, EOFError) as exc:  # truncated gzip, I/O error mid-file
        yield Reject(name, "file", None, None, "unreadable", f"file could not be read to the end: {exc}")


def _read_ndjson(
    fh: BinaryIO, name: str, on_bytes: Callable[[int], None] | None, end: int | None = None, first_line: int = 1
) -> Iterator[RawRecord | Reject]:
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    pending = 0
    remaining = None if end is None else end - fh.tell()
    for lineno, line in enumerate(fh, first_line):
        if remaining is not None:
            if remaining <= 0:
                break
            remaining -= len(line)
        if on_bytes is not None:
            pending += len(line)
            if pending > 1 << 20:  # report progress per MiB, not per line
                on_bytes(pending)
                pending = 0
        try:
            obj = loads(line)
        except decode_error as exc:
            if line.strip():
                yield Reject(name, f"line {lineno}", None, None, "malformed-json", f"not valid JSON ({exc.msg})")
            continue
        # The common case, inline: a plain resource with an id (hot path, one call per line).
        if type(obj) is dict and (rtype := obj.get("resourceType")) is not None and rtype != "Bundle":
            rid = obj.get("id")
            if type(rid) is str and rid and type(rtype) is str:
                yield from_fields(RawRecord, (obj, (name, f"line {lineno}"), None))
                continue
        yield from _records(obj, name, f"line {lineno}")
    if on_bytes is not None and pending:
        on_bytes(pending)


def _read_document(data: bytes, name: str) -> Iterator[RawRecord | Reject]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield Reject(name, "file", None, None, "malformed-json", f"not valid JSON ({exc.msg})")
        return
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _records(item, name, f"item {i}")
        return
    yield from _records(obj, name, "file")


def _records(obj: Any, name: str, locator: str) -> Iterator[RawRecord | Reject]:
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        yield Reject(name, locator, None, None, "not-a-resource", "a JSON object with a resourceType is expected")
        return
    if obj["resourceType"] == "Bundle":
        yield from _bundle(obj, name, locator)
        return
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        yield Reject(name, locator, obj["resourceType"], None, "missing-id", "the resource has no id")
        return
    yield RawRecord(obj, (name, locator), None)


def _bundle(bundle: dict[str, Any], name: str, locator: str) -> Iterator[RawRecord | Reject]:
    """Entries' resources of any Bundle type; ``urn:uuid`` fullUrls become aliases for references."""
    entries = bundle.get("entry")
    where = "" if locator == "file" else f" (Bundle in {locator})"
    if entries is None:
        return
    if not isinstance(entries, list):
        yield Reject(name, locator, "Bundle", bundle.get("id"), "invalid-field", "Bundle.entry is not a list")
        return
    aliases: dict[str, str] = {}
    staged: list[tuple[int, dict[str, Any]]] = []
    for i, entry in enumerate(entries):
        loc = f"entry {i}{where}"
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            yield Reject(name, loc, None, None, "not-a-resource", "Bundle entry without a resource")
            continue
        full = entry.get("fullUrl")
        if not res.get("id") and isinstance(full, str) and full.startswith("urn:uuid:"):
            res = {**res, "id": full[len("urn:uuid:") :]}  # a transaction entry to be created
        if isinstance(full, str) and isinstance(res.get("id"), str):
            aliases[full] = f"{res['resourceType']}/{res['id']}"
        staged.append((i, res))
    for i, res in staged:
        loc = f"entry {i}{where}"
        if res["resourceType"] == "Bundle":
            yield from _bundle(res, name, loc)
            continue
        if not isinstance(res.get("id"), str) or not res.get("id"):
            yield Reject(name, loc, res["resourceType"], None, "missing-id", "the resource has no id")
            continue
        yield RawRecord(res, (name, loc), aliases or None)

"""The evaluate pipeline's spill: records grouped by patient through hash buckets on disk, and reject files.

Pass one appends each mapped record to one of N bucket files chosen by a hash of its patient; pass two loads
one bucket at a time. Memory is bounded by one bucket, not by the input. Small runs keep one bucket in memory.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import zlib
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Protocol

import orjson

from fhiradapter.core.dedup import InputRecord
from fhiradapter.shell.run.readers import Reject

FLUSH_EVERY = 2000  # records buffered per bucket before they are written to its spill file


class Buckets:
    """N append-only spill files of one worker (or one in-memory list when nothing needs to spill)."""

    def __init__(self, count: int, folder: Path | None, worker: int = 0) -> None:
        self.count = count
        self._buffers: list[list[InputRecord]] = [[] for _ in range(count)]
        self.paths: list[Path] = []
        self._files: list[BinaryIO] = []
        if folder is not None:
            self.paths = [folder / f"bucket-{worker:02d}-{i:04d}.bin" for i in range(count)]
            self._files = [p.open("wb") for p in self.paths]

    def add(self, key: str, item: InputRecord) -> None:
        i = zlib.crc32(key.encode()) % self.count if self.count > 1 else 0
        buf = self._buffers[i]
        buf.append(item)
        if self._files and len(buf) >= FLUSH_EVERY:
            _dump(buf, self._files[i])
            self._buffers[i] = []

    def flush(self) -> None:
        for i, fh in enumerate(self._files):
            if self._buffers[i]:
                _dump(self._buffers[i], fh)
                self._buffers[i] = []
            fh.close()

    def take(self, i: int) -> list[InputRecord]:
        items, self._buffers[i] = self._buffers[i], []
        return items

    def close(self) -> None:
        for fh in self._files:
            if not fh.closed:
                fh.close()


def _dump(items: list[InputRecord], fh: BinaryIO) -> None:
    """Spill items to a bucket file (pickled; read back by ``load_bucket``)."""
    pickle.dump(items, fh, protocol=pickle.HIGHEST_PROTOCOL)


def load_bucket(paths: list[Path]) -> list[InputRecord]:
    items: list[InputRecord] = []
    for path in paths:
        with path.open("rb") as fh:
            while fh.peek(1):
                items.extend(pickle.load(fh))  # noqa: S301 - our own spill file, written by this run
        path.unlink()
    return items


class RejectSink(Protocol):
    """Where rejects go: a file of one worker (``RejectsFile``), or a list a Spark task hands back."""

    def reject(self, entry: Reject) -> None: ...


class _PerFile:
    """At most ``cap`` rejects of one input file are kept (None: all); the rest are counted by (file, code)
    in ``unlisted``, so that one bad file cannot fill the disk or the memory with its rejects."""

    def __init__(self, cap: int | None, unlisted: Counter[tuple[str, str]] | None) -> None:
        self._cap = cap
        self._kept: Counter[str] = Counter()
        self.unlisted: Counter[tuple[str, str]] = Counter() if unlisted is None else unlisted

    def keep(self, name: str, code: str) -> bool:
        """Whether a reject of input file ``name`` (its code ``code``) is listed; else it is counted."""
        if self._cap is None:
            return True
        self._kept[name] += 1
        if self._kept[name] <= self._cap:
            return True
        self.unlisted[(name, code)] += 1
        return False


class RejectList(list[Reject]):
    """Rejects kept in memory (a Spark task's, returned to the driver), at most ``cap`` per input file."""

    def __init__(self, cap: int | None = None, unlisted: Counter[tuple[str, str]] | None = None) -> None:
        super().__init__()
        self._per_file = _PerFile(cap, unlisted)

    def reject(self, entry: Reject) -> None:
        if self._per_file.keep(entry.file, entry.code):
            self.append(entry)


class RejectsFile:
    """An append-only NDJSON file of rejects (one per worker and pass; concatenated at the end), at most
    ``cap`` per input file: the rest are counted in ``unlisted`` (the run summary's)."""

    def __init__(self, path: Path, cap: int | None = None, unlisted: Counter[tuple[str, str]] | None = None) -> None:
        self.path = path
        self._per_file = _PerFile(cap, unlisted)
        self._fh = path.open("wb")

    def reject(self, entry: Reject) -> None:
        if self._per_file.keep(entry.file, entry.code):
            self._fh.write(entry.line() + b"\n")

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _locator_key(locator: str) -> tuple[int, int, str]:
    """Where in its file a reject lies, for ordering: the file itself first, then lines and entries by number."""
    if locator == "file":
        return (0, 0, "")
    kind, _, number = locator.partition(" ")
    return (1, int(number), kind) if number.isdigit() else (2, 0, locator)


def cap_rejects(parts: list[Path], target: Path, cap: int | None, unlisted: Counter[tuple[str, str]]) -> Path:
    """The workers' reject files joined into ``target`` in file and line order, at most ``cap`` per input file
    in all (each worker kept up to ``cap`` of its own; of those, the first ``cap`` in order are listed), each
    file's rejects followed by one ``not-listed`` line saying how many more ``unlisted`` counts, and of which
    codes. ``unlisted`` gains those left out here. Only where each line lies is held in memory."""
    places: list[tuple[str, tuple[int, int, str], int, int, int]] = []
    for n, part in enumerate(parts):
        offset = 0
        with part.open("rb") as fh:
            for line in fh:
                entry = orjson.loads(line)
                places.append((str(entry.get("file")), _locator_key(str(entry.get("locator"))), n, offset, len(line)))
                offset += len(line)
    places.sort()
    per_file = _PerFile(cap, unlisted)
    said: set[str] = set()
    with contextlib.ExitStack() as stack, target.open("wb") as out:
        handles = [stack.enter_context(part.open("rb")) for part in parts]
        for name, group in itertools.groupby(places, key=lambda place: place[0]):
            for _name, _key, n, offset, length in group:
                handles[n].seek(offset)
                line = handles[n].read(length)
                if cap is None or per_file.keep(name, str(orjson.loads(line).get("code"))):
                    out.write(line)
            out.write(_not_listed(name, unlisted, cap))
            said.add(name)
        for name in sorted({name for name, _code in unlisted} - said):
            out.write(_not_listed(name, unlisted, cap))
    return target


def _not_listed(name: str, unlisted: Counter[tuple[str, str]], cap: int | None) -> bytes:
    """The line that says how many rejects of ``name`` are not listed ("" when all are)."""
    codes = Counter({code: n for (file, code), n in unlisted.items() if file == name})
    if not codes:
        return b""
    reason = (
        f"{codes.total()} more rejects of this file are not listed one by one (at most {cap} per file, "
        f"--max-rejects-per-file): {', '.join(f'{c} {n}' for c, n in sorted(codes.items()))}; "
        "summary.json counts every one"
    )
    return Reject(name, "file", None, None, "not-listed", reason).line() + b"\n"

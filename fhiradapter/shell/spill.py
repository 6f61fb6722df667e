"""The evaluate pipeline's spill: records grouped by patient through hash buckets on disk, and reject files.

Pass one appends each mapped record to one of N bucket files chosen by a hash of its patient; pass two loads
one bucket at a time. Memory is bounded by one bucket, not by the input. Small runs keep one bucket in memory.
"""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson

from fhiradapter.core.dedup import InputRecord

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

    def reject(self, entry: dict[str, Any]) -> None: ...


class RejectList(list[dict[str, Any]]):
    """Rejects kept in memory (a Spark task's, returned to the driver)."""

    def reject(self, entry: dict[str, Any]) -> None:
        self.append(entry)


class RejectsFile:
    """An append-only NDJSON file of rejects (one per worker and pass; concatenated at the end)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("wb")

    def reject(self, entry: dict[str, Any]) -> None:
        self._fh.write(orjson.dumps(entry) + b"\n")

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

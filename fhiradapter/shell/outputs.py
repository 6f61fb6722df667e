"""Publishing the evaluate run's outputs: each file written beside its target, then renamed into place.

The workers leave their parts in the spill folder (per-patient blobs with an index); these functions join
them in patient order into results.json, clinical.ndjson, candidates.ndjson, rejects.ndjson, writeback.json
and writeback-plan.ndjson. A reader sees an old file or a new one, never a part.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from fhiradapter import __version__
from fhiradapter.core.results import CohortSummary, to_json
from fhiradapter.core.writeback import (
    provenance_entry,
    run_tag,
)


def publish(tmp: Path, target: Path) -> None:
    """Rename a finished file over ``target``: readers see the old file or the new one, never a part."""
    tmp.replace(target)


def write_results(
    out: Path,
    spill: Path,
    reject_parts: list[Path],
    subject_index: list[tuple[str, str, int, int]],
    header: dict[str, Any],
    cohort: CohortSummary,
) -> None:
    """results.json (subjects sorted by patient) and rejects.ndjson, each written then renamed."""
    concatenate(reject_parts, out / "rejects.ndjson")
    tmp = out / "results.json.partial"
    handles: dict[str, BinaryIO] = {}
    try:
        with tmp.open("wb") as fh:
            # One subject per line (still one JSON document): readable, and `export` streams it line by line.
            fh.write(orjson.dumps(header)[:-1] + b',"subjects":[\n')
            for n, (_pid, name, offset, length) in enumerate(sorted(subject_index)):
                if name not in handles:
                    handles[name] = (spill / name).open("rb")
                handles[name].seek(offset)
                fh.write((b",\n" if n else b"") + handles[name].read(length))
            fh.write(b'\n],"cohort":' + to_json(cohort) + b"}\n")
    finally:
        for h in handles.values():
            h.close()
    publish(tmp, out / "results.json")


def write_sorted_lines(target: Path, spill: Path, index: list[tuple[str, str, int, int]]) -> None:
    """One blob per line in patient order (the order of results.json), from the workers' spill files."""
    handles: dict[str, BinaryIO] = {}
    tmp = target.with_name(target.name + ".partial")
    try:
        with tmp.open("wb") as fh:
            for _pid, name, offset, length in sorted(index):
                if name not in handles:
                    handles[name] = (spill / name).open("rb")
                handles[name].seek(offset)
                fh.write(handles[name].read(length) + b"\n")
    finally:
        for h in handles.values():
            h.close()
    publish(tmp, target)


def concatenate(parts: list[Path], target: Path) -> None:
    """Join the workers' part files into ``target``, written beside it and renamed when complete."""
    tmp = target.with_name(target.name + ".partial")
    with tmp.open("wb") as fh:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, fh)
    publish(tmp, target)


def iter_rows(paths: list[Path]) -> Iterator[dict[str, Any]]:
    """The per-patient report rows the workers wrote, one at a time."""
    for path in paths:
        with path.open("rb") as fh:
            for line in fh:
                yield orjson.loads(line)


def write_writeback(
    out: Path, spill: Path, index: list[tuple[str, str, int, int, int]], plan_parts: list[Path], header: dict[str, Any]
) -> None:
    """writeback.json (a transaction Bundle, entries in patient order, Provenance last) and writeback-plan.ndjson."""
    index = sorted(index)
    handles: dict[str, BinaryIO] = {}

    def read(name: str, offset: int, length: int) -> bytes:
        if name not in handles:
            handles[name] = (spill / name).open("rb")
        handles[name].seek(offset)
        return handles[name].read(length)

    tmp = out / "writeback.json.partial"
    try:
        targets = [
            t
            for _pid, name, offset, length, tail in index
            for t in read(name, offset + length, tail).decode().split("\n")
        ]
        with tmp.open("wb") as fh:
            fh.write(b'{"resourceType":"Bundle","type":"transaction","entry":[')
            for n, (_pid, name, offset, length, _tail) in enumerate(index):
                fh.write((b"," if n else b"") + read(name, offset, length))
            if targets:
                digest = hashlib.sha256("".join(f"{t}\n" for t in targets).encode())
                provenance = provenance_entry(
                    targets,
                    adapter_version=__version__,
                    mappings=header["protocol"],
                    as_of=header["as_of"],
                    inputs=header["inputs"],
                    recorded=datetime.now(UTC).isoformat(timespec="seconds"),
                    run=run_tag(digest.hexdigest(), header["as_of"], header["protocol"]),
                )
                fh.write(b"," + orjson.dumps(provenance))
            fh.write(b"]}")
    finally:
        for h in handles.values():
            h.close()
    publish(tmp, out / "writeback.json")
    concatenate(plan_parts, out / "writeback-plan.ndjson")

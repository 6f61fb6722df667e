"""A pull's folder: NDJSON files written as ``.partial`` and renamed when complete, with ``pull-manifest.json``.

A pull's folder holds one pull (``claim_folder``): it must be new or empty, or hold an earlier pull (its
``pull-manifest.json``), whose files are removed only once the new pull is complete (``finish_folder``).
Files a pull did not write are never mixed with pulled ones: ``evaluate`` would read them together.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from fhiradapter.core.resource_types import is_resource_type
from fhiradapter.errors import ConfigError, ServerError
from fhiradapter.shell.files import open_new, replace, write_new
from fhiradapter.shell.readers import BULK_STATE, NOT_DATA, PULL_MANIFEST, SUFFIXES

BULK_ERRORS = ".ndjson.txt"  # a Bulk export's error files (OperationOutcomes), kept apart from the data


def first_few(items: list[str], n: int = 3, sep: str = ", ") -> str:
    """The first ``n`` items joined, with `` ...`` when there are more: for notes that name what they count."""
    return sep.join(items[:n]) + (" ..." if len(items) > n else "")


class NdjsonSink:
    """One NDJSON file per resource type; each (type, id) written once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.handles: dict[str, BinaryIO] = {}
        self.seen: set[tuple[str, str]] = set()
        self.counts: Counter[str] = Counter()

    def add(self, resource: dict[str, Any]) -> None:
        rtype, rid = str(resource.get("resourceType")), str(resource.get("id"))
        if not is_resource_type(rtype):  # the pull reports such entries before they get here: a file is never
            raise ServerError("a resource whose resourceType is not a FHIR R4 resource type reached the pull folder")
        if (rtype, rid) in self.seen:
            return
        self.seen.add((rtype, rid))
        if rtype not in self.handles:
            self.handles[rtype] = open_new(self.folder / f"{rtype}.ndjson.partial")
        self.handles[rtype].write(orjson.dumps(resource) + b"\n")
        self.counts[rtype] += 1

    def close(self, complete: bool) -> list[Path]:
        done = []
        for rtype, fh in self.handles.items():
            fh.close()
            partial = self.folder / f"{rtype}.ndjson.partial"
            if complete:
                final = self.folder / f"{rtype}.ndjson"
                replace(partial, final)
                done.append(final)
            else:
                partial.unlink(missing_ok=True)
        return done


def claim_folder(out: Path, bulk: bool = False) -> list[Path]:
    """Make ``out`` ready for a pull; return the earlier pull's files, to remove when the new one is complete.

    ``out`` must be new or empty, or hold an earlier ``fhiradapter pull``: the files its
    ``pull-manifest.json`` lists, and a stopped pull's ``.partial`` leftovers. Any other file ``evaluate``
    would read is refused (ConfigError), as ``evaluate`` reads a folder whole and would mix them in.
    ``bulk``: an unfinished Bulk export in ``out`` (``bulk-state.json``) may be resumed; its files are its own.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        found = sorted(p for p in out.rglob("*") if p.is_file())
    except OSError as exc:
        raise ConfigError(f"cannot use {out} for a pull: {exc.strerror}") from None
    resuming = (out / BULK_STATE).exists()
    if resuming and not bulk:
        raise ConfigError(
            f"{out} holds an unfinished Bulk export ({BULK_STATE}): finish it with --bulk, or choose another folder"
        )
    files = [p for p in found if p.name.endswith((*SUFFIXES, BULK_ERRORS, ".partial")) and p.name not in NOT_DATA]
    listed = _listed(out)
    foreign = [p for p in files if p.parent != out or not (p.name.endswith(".partial") or p.name in listed or resuming)]
    if foreign:
        shown = first_few([str(p.relative_to(out)) for p in foreign])
        raise ConfigError(
            f"{out} already holds files fhiradapter pull did not write ({shown}); evaluate would read them with "
            "the pulled ones: choose a new or empty folder"
        )
    return files


def _listed(out: Path) -> set[str]:
    """The files an earlier pull's manifest names (``files``; before that field, one per type counted)."""
    try:
        manifest = orjson.loads((out / PULL_MANIFEST).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return set()
    if not isinstance(manifest, dict):
        return set()
    if isinstance(manifest.get("files"), list):
        return {str(name) for name in manifest["files"]}
    return {f"{rtype}.ndjson" for rtype in manifest.get("resources") or ()}


def finish_folder(out: Path, manifest: dict[str, Any], earlier: list[Path], files: list[Path]) -> list[str]:
    """Write the complete pull's manifest (with its files), then remove the earlier pull's files not rewritten."""
    names = sorted(p.name for p in files)
    write_new(out / PULL_MANIFEST, orjson.dumps({**manifest, "files": names}, option=orjson.OPT_INDENT_2))
    removed = []
    for path in earlier:
        if path.name not in names and path.exists():
            path.unlink()
            removed.append(path.name)
    return removed

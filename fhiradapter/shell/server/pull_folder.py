"""A pull's folder: written apart, beside it, and put in place whole, with ``pull-manifest.json``.

A pull's folder holds one pull (``claim_folder``): it must be new or empty, or hold an earlier pull (its
``pull-manifest.json``). A pull never writes into it: it writes into a new folder beside it
(``start_folder``: ``.<name>.pull-<random>`` in the same parent, made by ``mkdtemp``, mode 0700), and once
complete that folder replaces the old one whole (``finish_folder``: the old folder is renamed aside, the
new one renamed into its place, the old one removed). A pull that fails leaves the old folder as it was and
nothing of itself in its place. Files in the old folder that no pull wrote (notes, a README) are moved into
the new one. Files a pull did not write that ``evaluate`` would read are refused: it would read them with the
pulled ones. An unfinished Bulk export keeps its folder beside ``out`` (``unfinished_export``), to resume.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import orjson

from fhiradapter.core.json_types import JsonObject
from fhiradapter.core.resource_types import is_resource_type
from fhiradapter.errors import ConfigError
from fhiradapter.shell.common.files import open_new, replace, write_new
from fhiradapter.shell.run.readers import BULK_STATE, NOT_DATA, PULL_MANIFEST, SUFFIXES

BULK_ERRORS = ".ndjson.txt"  # a Bulk export's error files (OperationOutcomes), kept apart from the data


def first_few(items: list[str], n: int = 3, sep: str = ", ") -> str:
    """The first ``n`` items joined, with `` ...`` when there are more: for notes that name what they count."""
    return sep.join(items[:n]) + (" ..." if len(items) > n else "")


class NotAResourceType(Exception):
    """An internal invariant broken: a resource whose type is not an R4 resource type reached the pull folder
    (the pull reports such entries and never hands them on; the type names a file). Not a server's error: a bug."""


class NdjsonSink:
    """One NDJSON file per resource type; each (type, id) written once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.handles: dict[str, BinaryIO] = {}
        self.seen: set[tuple[str, str]] = set()
        self.counts: Counter[str] = Counter()

    def add(self, resource: JsonObject) -> None:
        rtype, rid = str(resource.get("resourceType")), str(resource.get("id"))
        if not is_resource_type(rtype):  # the pull reports such entries before they get here: a file is never
            raise NotAResourceType(
                "a resource whose resourceType is not a FHIR R4 resource type reached the pull folder"
            )
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


def pull_target(out: Path) -> Path:
    """``--out`` as the absolute path a pull replaces: through a symlink to the folder it names. The current
    folder (or one holding it) is refused: replaced whole, it would leave the shell in a removed folder."""
    path = Path(os.path.abspath(out))
    path = path.resolve() if path.is_symlink() else path
    try:
        here = Path.cwd().resolve()
    except OSError:  # the current folder was removed: nothing to keep the shell in
        return path
    if path.resolve() == here or path.resolve() in here.parents:
        raise ConfigError(
            f"--out {out} is the current folder or holds it; a pull replaces its folder whole: give another "
            "folder (e.g. from the parent folder: --out NAME)"
        )
    return path


def claim_folder(out: Path, bulk: bool = False) -> list[Path]:
    """Check that ``out`` may take a pull; return the earlier pull's files (which the new pull replaces).

    ``out`` must be new or empty, or hold an earlier ``fhiradapter pull``: the files its
    ``pull-manifest.json`` lists, and a stopped pull's ``.partial`` leftovers. Any other file ``evaluate``
    would read is refused (ConfigError), as ``evaluate`` reads a folder whole and would mix them in.
    ``bulk``: an unfinished Bulk export (``bulk-state.json``, beside ``out`` or in it) may be resumed; a
    search pull refuses it. Nothing is written to ``out``; its parent is created.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        found = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
    except OSError as exc:
        raise ConfigError(f"cannot use {out} for a pull: {exc.strerror}") from None
    if out.exists() and not out.is_dir():
        raise ConfigError(f"cannot use {out} for a pull: it is not a folder")
    resuming = (out / BULK_STATE).exists()  # an export an earlier fhiradapter left in the folder
    unfinished = unfinished_export(out)
    if (resuming or unfinished) and not bulk:
        where = f" beside it, in {unfinished.name}" if unfinished and not resuming else ""
        raise ConfigError(
            f"{out} holds an unfinished Bulk export ({BULK_STATE}{where}): finish it with --bulk, or choose "
            "another folder"
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


def _prefix(out: Path) -> str:
    return f".{out.name}.pull-"


def start_folder(out: Path) -> Path:
    """A new, empty folder beside ``out`` for a pull to write into: same parent (so that it can be renamed into
    place), a name no other process can hold (``mkdtemp``), mode 0700 (it will hold patient data)."""
    try:
        return Path(tempfile.mkdtemp(prefix=_prefix(out), dir=out.parent))
    except OSError as exc:
        raise ConfigError(f"cannot make a folder beside {out} for the pull: {exc.strerror}") from None


def unfinished_export(out: Path) -> Path | None:
    """The folder beside ``out`` where an unfinished Bulk export into ``out`` was being written (to resume)."""
    prefix = _prefix(out)
    try:
        beside = sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return None
    for path in beside:
        try:
            if (
                not path.is_symlink()
                and path.is_dir()
                and (path / BULK_STATE).is_file()
                and path.stat().st_uid == os.getuid()
            ):
                return path
        except OSError:
            continue
    return None


def discard(work: Path) -> None:
    """Remove a pull's own folder (an unfinished pull: nothing of it is in place)."""
    shutil.rmtree(work, ignore_errors=True)


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


def finish_folder(
    out: Path, work: Path, manifest: Mapping[str, object], earlier: list[Path], files: list[Path]
) -> list[str]:
    """Write the complete pull's manifest (with its files) into ``work``, then put ``work`` in place of ``out``
    whole; return the names of the earlier pull's files that the new one does not have. If that fails, ``work``
    is removed and ``out`` is as it was."""
    names = sorted(p.name for p in files)
    try:
        write_new(work / PULL_MANIFEST, orjson.dumps({**manifest, "files": names}, option=orjson.OPT_INDENT_2))
        (work / BULK_STATE).unlink(missing_ok=True)  # complete: nothing to resume
        for left in work.glob("*.partial"):  # a download or file cut off before it was retried
            left.unlink()
        _replace(out, work, {p.name for p in earlier} | NOT_DATA)
    except BaseException:
        discard(work)
        raise
    return sorted({p.name for p in earlier if p.parent == out and p.name not in names})


def _replace(out: Path, work: Path, owned: set[str]) -> None:
    """``work`` renamed to ``out``; an existing ``out`` is first renamed aside, and removed once ``work`` is in
    its place (put back if that fails). What ``out`` held that no pull wrote (not in ``owned``) moves along."""
    try:
        if not out.exists():
            os.rename(work, out)
            return
        work.chmod(stat.S_IMODE(out.stat().st_mode))  # the folder keeps its mode (a team's group access)
        backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    except OSError as exc:
        raise ConfigError(f"cannot put the pull in place at {out}: {exc.strerror}; {out} is as it was") from None
    try:
        os.rename(out, backup)  # onto the empty folder mkdtemp made: atomic
    except OSError as exc:
        backup.rmdir()
        raise ConfigError(f"cannot put the pull in place at {out}: {exc.strerror}; {out} is as it was") from None
    kept = sorted(p.name for p in backup.iterdir() if p.name not in owned)
    moved: list[str] = []
    try:
        for name in kept:
            os.rename(backup / name, work / name)
            moved.append(name)
        os.rename(work, out)
    except BaseException as exc:
        for name in moved:
            os.rename(work / name, backup / name)
        os.rename(backup, out)
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot put the pull in place at {out}: {exc.strerror}; {out} is as it was") from None
        raise
    shutil.rmtree(backup, ignore_errors=True)

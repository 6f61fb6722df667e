"""A run's output folder: one run at a time, never inside an input, write failures named, the set published whole.

- ``claim_output``: refuses an ``--out`` that is an input folder or lies inside one (the next run would read the
  outputs as input), and an input file in ``--out`` that an output would replace (``inputs_in_the_way``:
  ``evaluate *.ndjson --out .`` with a site's own ``clinical.ndjson``); creates it; takes an exclusive lock on
  ``.fhiradapter.lock`` (never through a symbolic link) that the OS releases when the process ends, however it
  ends (``kill -9`` included), so a second run into the same folder fails at once (:class:`OutputBusy`, exit
  14), naming the folder and the holder's pid; removes the spill folders that dead runs left (a live run would
  hold the lock).
- ``writing``: an ``OSError`` while writing (permission denied, read-only file system, disk full, a path under
  a regular file) becomes an :class:`OutputError` (exit 16) naming the path and the cause.
- The manifest: ``manifest.json`` is written last, after every other output is in place, with the run's id,
  the as-of date and the sha256 of each file; it is removed first when a run starts. ``check_manifest`` (export,
  sync) refuses a set without one, or whose files do not match it: a run that died half way, or files mixed
  from two runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TextIO

import orjson

from fhiradapter.core.json_types import JsonObject
from fhiradapter.errors import ConfigError, InputError, OutputBusy, OutputError
from fhiradapter.shell.common.files import FILE_MODE, open_new, replace

LOCK = ".fhiradapter.lock"
MANIFEST = "manifest.json"
SPILL_PREFIX = ".spill-"


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError raised while writing under ``path`` into an OutputError naming the file and the cause."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or path
        inside = Path(where).resolve() == path.resolve() or path.resolve() in Path(where).resolve().parents
        if not inside:  # an input gone or unreadable during the run: not the output's fault
            raise InputError(f"input unreadable: {where}: {exc.strerror or type(exc).__name__}") from None
        cause = {
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EEXIST: "a file of that name is in the way",
            errno.ELOOP: "it is a symbolic link, which a run never writes through",
        }.get(exc.errno or 0, exc.strerror or type(exc).__name__)
        raise OutputError(f"cannot write {where}: {cause}") from None


def inputs_in_the_way(out: Path, inputs: Iterable[Path], writes: Callable[[str], bool], option: str = "--out") -> None:
    """Refuse (ConfigError) an input file that writing into ``out`` would replace or remove: one directly in
    ``out`` (by its own name, or where a link to it leads) whose name ``writes`` says a run writes, or one
    inside a spill folder there (a run removes those). Nothing has been written when this is called."""
    here = out.resolve()
    for given in inputs:
        if not given.is_file():
            continue
        for where in (given.absolute().parent.resolve() / given.name, given.resolve()):
            spill = here in where.parents and where.relative_to(here).parts[0].startswith(SPILL_PREFIX)
            if (where.parent == here and writes(where.name)) or spill:
                raise ConfigError(
                    f"{given} is an input, but {option} {out} is where this run writes its {where.name}: it would be "
                    f"replaced. Move the input out of {out}, or choose another {option}"
                )


def output_names(names: Collection[str]) -> Callable[[str], bool]:
    """Whether a run writing ``names`` into its folder (with its lock and manifest) writes a file of that name,
    or its part (``NAME.partial``)."""
    ours = {*names, LOCK, MANIFEST}
    return lambda name: name.removesuffix(".partial") in ours


@contextlib.contextmanager
def claim_output(out: Path, inputs: list[Path], writes: Collection[str] = ()) -> Iterator[Path]:
    """Make ``out`` this run's, for as long as the ``with`` lasts (see the module docstring); ``writes``: the
    names of the files the run may write or remove in ``out``."""
    here = out.resolve()
    for folder in inputs:
        if folder.is_dir():
            source = folder.resolve()
            if here == source or source in here.parents:
                raise ConfigError(
                    f"--out {out} lies inside the input folder {folder}: the next run would read its outputs as "
                    "input. Choose a folder outside the inputs"
                )
    inputs_in_the_way(out, inputs, output_names(writes))
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        handle = _open_lock(out / LOCK)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise OutputBusy(
                f"{out} is being written by another fhiradapter run (pid {holder}); wait for it to finish, or "
                "choose another --out"
            ) from None
        with writing(out / LOCK):
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        for dead in out.glob(SPILL_PREFIX + "*"):  # left by a run that died: this lock proves it is not running
            shutil.rmtree(dead, ignore_errors=True)
        yield out
    finally:
        handle.close()  # closing the file releases the lock


def _open_lock(path: Path) -> TextIO:
    """The lock file, created with mode 0600 if missing; a symbolic link there (or a file with other names, a
    hard link) is refused, not written through (its pid would land in the file it leads to)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(
                f"cannot write {path}: it is a symbolic link, which a run never writes through; remove it"
            ) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise OutputError(
            f"cannot write {path}: it is not a plain file of its own (a hard link, or not a file); remove it"
        )
    return os.fdopen(fd, "r+")


def file_digest(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def drop_manifest(out: Path) -> None:
    """First thing a run does: the set in ``out`` is no longer whole until the new manifest is written."""
    with writing(out / MANIFEST):
        (out / MANIFEST).unlink(missing_ok=True)


def write_manifest(out: Path, run: Mapping[str, object], files: list[str]) -> None:
    """Last thing a run does: name every output with its sha256, so a mixed or partial set can be refused."""
    entries = {name: file_digest(out / name) for name in sorted(files) if (out / name).exists()}
    tmp = out / (MANIFEST + ".partial")
    with writing(tmp):
        with open_new(tmp) as fh:
            fh.write(orjson.dumps({**run, "files": entries}, option=orjson.OPT_INDENT_2))
        replace(tmp, out / MANIFEST)


def check_manifest(folder: Path, needed: list[str]) -> JsonObject:
    """The manifest of an output set, after checking that each of ``needed`` is in it and unchanged."""
    try:
        manifest = orjson.loads((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise InputError(
            f"{folder} holds no complete output set (no {MANIFEST}): the run that wrote it did not finish, or it "
            "is from an older fhiradapter. Run evaluate again"
        ) from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InputError(f"{folder / MANIFEST} is unreadable ({exc}): run evaluate again") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise InputError(f"{folder / MANIFEST} lists no files: run evaluate again")
    for name in needed:
        if name not in files:
            raise InputError(f"{folder / name} is not part of the output set {MANIFEST} describes: run evaluate again")
        try:
            digest = file_digest(folder / name)
        except OSError as exc:
            raise InputError(f"{folder / name} unreadable: {exc.strerror}") from None
        if digest != files[name]:
            raise InputError(
                f"{folder / name} is not the file its run wrote (sha256 differs from {MANIFEST}): the set mixes "
                "two runs, or was changed. Run evaluate again"
            )
    return dict(manifest)

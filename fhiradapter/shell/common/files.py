"""Creating output files: never through a symbolic link, readable by their owner only (mode 0600).

Every output holds patient data or describes it, and an output folder may be shared: someone who can write
into it could plant a symbolic link (``manifest.json.partial`` -> a file elsewhere) or a hard link, and a run
that opened the name for writing would write through it. So a file is never opened for writing where it may
already exist: ``open_new`` removes whatever has the name (a stale part from a dead run, a link: ``unlink``
removes the link, not its target) and creates the file exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``, which
fails rather than follow a link planted in between). A finished file is renamed over its target
(``os.replace``, which replaces a link in place of the target rather than following it). New files get mode
0600 whatever the umask; a site that shares the outputs with a group changes their mode after the run.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, TextIO

FILE_MODE = 0o600  # patient-level data: the owner only
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _create(path: Path) -> int:
    """A new, empty file at ``path`` (whatever had the name removed first); its descriptor."""
    path.unlink(missing_ok=True)  # a link goes, its target stays; a folder in the way raises
    return os.open(path, _CREATE, FILE_MODE)


def open_new(path: Path) -> BinaryIO:
    """``path`` created afresh for binary writing, mode 0600 (see the module docstring)."""
    return os.fdopen(_create(path), "wb")


def open_new_text(path: Path, newline: str | None = None) -> TextIO:
    """``path`` created afresh for UTF-8 text writing, mode 0600 (``newline=""`` for the csv module)."""
    return os.fdopen(_create(path), "w", encoding="utf-8", newline=newline)


def part_of(path: Path) -> Path:
    """The name a file is written under until it is complete: ``NAME.partial`` beside it."""
    return path.with_name(path.name + ".partial")


def replace(part: Path, target: Path) -> None:
    """Rename a finished part over ``target`` (a link there is replaced, never followed)."""
    os.replace(part, target)


def write_new(path: Path, data: bytes | str) -> None:
    """``path`` written whole: to its part, created afresh (mode 0600), then renamed over it."""
    part = part_of(path)
    with open_new(part) as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    replace(part, path)


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if nothing has that name yet (a database file, before its driver
    creates it with the umask's mode); an existing file, or a link, is left as it is."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, _CREATE, FILE_MODE))

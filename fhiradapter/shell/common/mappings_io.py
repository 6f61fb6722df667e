"""Load ``mappings/`` (protocol.toml, codes.toml, units.toml, and a site's ``conceptmap*.json``), make a site's
own copy, and give UCUM factors.

The embedded default mappings ship inside the package (``fhiradapter/_mappings`` in a wheel; the
repository's ``mappings/`` folder in a source checkout). A site's own folder replaces them: ``--mappings DIR``
or the ``FHIRADAPTER_MAPPINGS`` environment variable (``fhiradapter mappings init DIR`` creates one).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msgspec import UNSET

from fhiradapter.core.concept_map import LocalCode, parse_concept_map, read_mappings, with_local_codes
from fhiradapter.core.json_types import JsonObject
from fhiradapter.core.protocol import Mappings, parse_mappings
from fhiradapter.core.results import ProtocolIdentity
from fhiradapter.errors import ConfigError
from fhiradapter.shell.common.files import write_new

FILES = ("protocol.toml", "codes.toml", "units.toml")
CONCEPT_MAPS = "conceptmap*.json"  # a site's ConceptMaps (FHIR R4 JSON), local codes -> the standard ones
ENV_VAR = "FHIRADAPTER_MAPPINGS"  # a site's mappings folder, for every command


def default_mappings_dir() -> Path:
    here = Path(__file__).resolve().parents[2]  # the fhiradapter package
    for candidate in (here / "_mappings", here.parent / "mappings"):
        if (candidate / "protocol.toml").is_file():
            return candidate
    raise ConfigError("the embedded mappings are missing from this installation; pass --mappings DIR")


def shipped_files() -> list[Path]:
    """The shipped mappings files: the three the rules read, export.toml and published.toml."""
    return sorted(default_mappings_dir().glob("*.toml"))


def init_site_mappings(target: Path) -> list[Path]:
    """Copy the shipped mappings into ``target`` (a site's own folder, to edit); returns the files written.

    An existing folder is used only if it holds none of the files: nothing a site edited is overwritten.
    """
    files = shipped_files()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} exists and is not a folder")
    clash = [f.name for f in files if (target / f.name).exists()]
    if clash:
        raise ConfigError(f"{target} already holds {', '.join(clash)}: nothing was changed (choose a new folder)")
    try:
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for source in files:
            dest = target / source.name
            with dest.open("xb") as fh:  # never through a file (or link) that appeared since the check
                fh.write(source.read_bytes())
            written.append(dest)
    except OSError as exc:
        raise ConfigError(f"cannot write the mappings folder {target}: {exc.strerror}") from None
    return written


def differing_local_mappings(used: Path, cwd: Path) -> Path | None:
    """A ``mappings/`` folder in ``cwd`` that is not the one used and whose files differ from it, if any.

    After ``pip install .`` the installed copy is read, not the checkout's ``mappings/``: a site that edited
    the latter would otherwise see its change silently ignored.
    """
    local = cwd / "mappings"
    if not (local / "protocol.toml").is_file():
        return None
    try:
        if local.resolve() == used.resolve():
            return None
        names = {p.name for p in local.glob("*.toml")} | {p.name for p in used.glob("*.toml")}
        for name in sorted(names):
            mine, theirs = local / name, used / name
            if not (mine.is_file() and theirs.is_file()) or mine.read_bytes() != theirs.read_bytes():
                return local
    except OSError:
        return local
    return None


def read_toml(path: Path) -> JsonObject | None:
    """A TOML file of a mappings folder as read (None when absent; the caller validates it); a ConfigError
    naming the file when it cannot be read or is not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} unreadable: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def load_mappings(directory: Path | None = None) -> tuple[Mappings, ProtocolIdentity]:
    """Parsed mappings and their identity (id, version, the study they name, folder, sha256 of the three files)."""
    folder = directory or default_mappings_dir()
    if not folder.is_dir():
        raise ConfigError(f"mappings folder not found: {folder}")
    docs: list[JsonObject] = []  # TOML documents as read: validated by core.protocol.parse_mappings
    digest = hashlib.sha256()
    for name in FILES:
        path = folder / name
        try:
            raw = path.read_bytes()
            docs.append(tomllib.loads(raw.decode("utf-8")))
        except FileNotFoundError:
            raise ConfigError(f"mappings file missing: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"mappings file unreadable: {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"mappings file is not valid TOML: {path}: {exc}") from None
        digest.update(raw)
    mappings = parse_mappings(*docs)
    maps = sorted(folder.glob(CONCEPT_MAPS))
    if maps:  # a site's local codes, mapped where it maintains them (their bytes join the digest)
        mappings = with_concept_maps(mappings, maps, digest.update)
    identity = ProtocolIdentity(
        **mappings.identity,
        mappings_dir=str(folder.resolve()),
        sha256=digest.hexdigest(),
        concept_maps=tuple(path.name for path in maps) if maps else UNSET,
    )
    return mappings, identity


def with_concept_maps(
    mappings: Mappings, paths: list[Path], digest: Callable[[bytes], object] | None = None
) -> Mappings:
    """The mappings with the local codes of the ConceptMap files added to codes.toml's lists (core/concept_map)."""
    local: list[LocalCode] = []
    for path in paths:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"ConceptMap unreadable: {path}: {exc.strerror}") from None
        if digest is not None:
            digest(raw)
        local += read_mappings(parse_concept_map(raw, str(path)), str(path)).mapped
    return with_local_codes(mappings, local)[0]


def save_concept_map(folder: Path, resource: JsonObject, where: str) -> tuple[Path, int, int]:
    """A ConceptMap (read from ``where``) written into a site's mappings folder as ``conceptmap-<id>.json``.

    Checked first as ``load_mappings`` checks the folder's files; then written whole (a copy read earlier is
    replaced). Returns the file, how many of its mappings keep the meaning, and how many are left out.
    """
    if not (folder / "codes.toml").is_file():
        raise ConfigError(f"{folder} is no mappings folder (no codes.toml): `fhiradapter mappings init` makes one")
    raw = json.dumps(resource, indent=2, ensure_ascii=False).encode()
    reading = read_mappings(parse_concept_map(raw, where), where)
    rid = resource.get("id")
    if not isinstance(rid, str) or not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", rid):
        raise ConfigError(f"{where}: the ConceptMap has no FHIR id to name its file by")
    path = folder / f"conceptmap-{rid}.json"
    try:
        write_new(path, raw + b"\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    return path, len(reading.mapped), reading.left_out


@functools.cache
def _from_ucum() -> Callable[[str], Any]:  # a pint Quantity: ucumvert and pint are untyped here
    """UCUM code -> pint quantity: what ``ucumvert.PintUcumRegistry.from_ucum`` does, without building that
    registry, which its own transformer never uses (it parses into pint's application registry): 1.0 s of
    start-up instead of 1.5 s, paid only when a unit needs converting."""
    from ucumvert import UcumToPintTransformer, get_ucum_parser, parse_ucum  # noqa: PLC0415 - heavy import

    parser = get_ucum_parser()
    transform = UcumToPintTransformer().transform
    return lambda code: transform(parse_ucum(code, parser))


def ucum_factor(source: str, target: str) -> float | None:
    """Multiplier from one UCUM unit to another, or None if either is not UCUM or they are incompatible."""
    if not source or not target:
        return None
    try:
        from_ucum = _from_ucum()
        return float(from_ucum(source).to(from_ucum(target)).magnitude)
    except Exception:  # noqa: BLE001 - ucumvert raises many parser and pint types; all mean "no factor"
        return None

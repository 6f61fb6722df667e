"""Load ``mappings/`` (protocol.toml, codes.toml, units.toml) and provide UCUM unit factors.

The embedded default mappings ship inside the package (``fhiradapter/_mappings`` in a wheel; the
repository's ``mappings/`` folder in a source checkout). ``--mappings DIR`` replaces them.
"""

from __future__ import annotations

import functools
import hashlib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fhiradapter.core.protocol import Mappings, parse_mappings
from fhiradapter.errors import ConfigError

FILES = ("protocol.toml", "codes.toml", "units.toml")


def default_mappings_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_mappings", here.parent / "mappings"):
        if (candidate / "protocol.toml").is_file():
            return candidate
    raise ConfigError("the embedded mappings are missing from this installation; pass --mappings DIR")


def load_mappings(directory: Path | None = None) -> tuple[Mappings, dict[str, Any]]:
    """Parsed mappings and their identity (id, version, folder, sha256 of the three files)."""
    folder = directory or default_mappings_dir()
    if not folder.is_dir():
        raise ConfigError(f"mappings folder not found: {folder}")
    docs: list[dict[str, Any]] = []
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
    identity = {**mappings.identity, "mappings_dir": str(folder), "sha256": digest.hexdigest()}
    return mappings, identity


@functools.cache
def _from_ucum() -> Callable[[str], Any]:
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

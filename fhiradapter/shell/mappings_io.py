"""Load ``mappings/`` (protocol.toml, codes.toml, units.toml) and provide UCUM unit factors.

The embedded default mappings ship inside the package (``fhiradapter/_mappings`` in a wheel; the
repository's ``mappings/`` folder in a source checkout). ``--mappings DIR`` replaces them.
"""

from __future__ import annotations

import functools
import hashlib
import tomllib
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
def _ucum_registry() -> Any:
    from ucumvert import PintUcumRegistry  # noqa: PLC0415 - 1 s import, only when a unit needs it

    return PintUcumRegistry()


def ucum_factor(source: str, target: str) -> float | None:
    """Multiplier from one UCUM unit to another, or None if either is not UCUM or they are incompatible."""
    if not source or not target:
        return None
    try:
        reg = _ucum_registry()
        return float(reg.from_ucum(source).to(reg.from_ucum(target)).magnitude)
    except Exception:  # noqa: BLE001 - ucumvert raises many parser and pint types; all mean "no factor"
        return None

"""Code lookup tables: ``(system, code)`` to a mapped value, as built from ``mappings/codes.toml``.

Apart from ``protocol.py`` (the pydantic models of the mappings files): every coding of every resource is
looked up here, on the hot path, with no validation machinery around it.
"""

from __future__ import annotations


class CodeTable:
    """Maps ``(system, code)`` to a value; entries ending in ``*`` match by prefix."""

    __slots__ = ("_exact", "_prefix")

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], str] = {}
        self._prefix: list[tuple[str, str, str]] = []

    def add(self, system: str, code: str, value: str) -> None:
        if code.endswith("*"):
            self._prefix.append((system, code[:-1], value))
        else:
            self._exact[(system, code)] = value

    def get(self, system: object, code: object) -> str | None:
        """The value of ``(system, code)``; None unless both are strings (a coding as decoded may hold anything)."""
        if type(system) is not str or type(code) is not str:
            return None
        hit = self._exact.get((system, code))
        if hit is not None or not self._prefix:
            return hit
        for psys, pfx, value in self._prefix:
            if psys == system and code.startswith(pfx):
                return value
        return None

"""A site's ConceptMaps (FHIR R4) as a source of local-code mappings beside ``codes.toml``.

A hospital maintains the mapping of its local codes where it already keeps them: a ConceptMap whose source is
the site's code system and whose target is a standard code the rules know (LOINC, SNOMED, ...). Each local code
mapped to a code that a list of ``codes.toml`` holds is added to that list, so the rules use it and the published
ValueSets show it, as if the site had written it into ``codes.toml``. Only mappings that keep the meaning count
(equivalence ``equivalent``, ``equal``, ``wider`` or ``subsumes``: the standard code means the local one or
more); the others are left out and counted. Pure: the shell reads the files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

from fhiradapter.core.protocol import AETerm, CodesFile, ConceptCodes, Mappings, StopReasonCodes
from fhiradapter.errors import ConfigError

KEEPS_MEANING = frozenset({"equivalent", "equal", "wider", "subsumes"})
_Listed = TypeVar("_Listed", ConceptCodes, StopReasonCodes, AETerm)  # a codes.toml entry with a code list


class _Json(msgspec.Struct, frozen=True, rename="camel", kw_only=True):
    """The ConceptMap elements read (the rest of the resource is skipped unread)."""


class MapTarget(_Json, frozen=True, kw_only=True):
    code: str | None = None
    equivalence: str | None = None


class MapElement(_Json, frozen=True, kw_only=True):
    code: str | None = None
    target: tuple[MapTarget, ...] = ()


class MapGroup(_Json, frozen=True, kw_only=True):
    source: str | None = None
    target: str | None = None
    element: tuple[MapElement, ...] = ()


class ConceptMap(_Json, frozen=True, kw_only=True):
    resource_type: str
    id: str | None = None
    url: str | None = None
    group: tuple[MapGroup, ...] = ()


class LocalCode(msgspec.Struct, frozen=True):
    """A site's code mapped to a standard one: ``(system, code)`` pairs."""

    local_system: str
    local_code: str
    standard_system: str
    standard_code: str


class ConceptMapReading(msgspec.Struct, frozen=True):
    mapped: tuple[LocalCode, ...]  # the mappings that keep the meaning
    left_out: int  # mappings of another equivalence (narrower, inexact, unmatched, ...)


def parse_concept_map(data: bytes, where: str) -> ConceptMap:
    """A ConceptMap's JSON, typed; ConfigError naming the file and what is wrong."""
    try:
        cmap = msgspec.json.decode(data, type=ConceptMap)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{where}: not a FHIR ConceptMap: {exc}") from None
    if cmap.resource_type != "ConceptMap":
        raise ConfigError(f"{where}: resourceType is {cmap.resource_type!r}, not 'ConceptMap'")
    return cmap


def read_mappings(cmap: ConceptMap, where: str) -> ConceptMapReading:
    """The local-to-standard mappings a ConceptMap states, each group's source and target systems named."""
    mapped: list[LocalCode] = []
    left_out = 0
    for n, group in enumerate(cmap.group):
        if not group.source or not group.target:
            raise ConfigError(f"{where}: ConceptMap.group[{n}] needs a source and a target code system")
        for m, element in enumerate(group.element):
            if not element.code:
                raise ConfigError(f"{where}: ConceptMap.group[{n}].element[{m}] has no code")
            for target in element.target:
                if target.code and target.equivalence in KEEPS_MEANING:
                    mapped.append(LocalCode(group.source, element.code, group.target, target.code))
                else:
                    left_out += 1
    return ConceptMapReading(tuple(mapped), left_out)


def _extended(
    codes: list[str], resolve: Callable[[str], tuple[str, str]], local: dict[tuple[str, str], list[str]]
) -> list[str]:
    """A code list with the local codes mapped to any of its codes appended (each once, in the maps' order)."""
    added = [entry for code in codes for entry in local.get(resolve(code), ())]
    return codes + [entry for entry in dict.fromkeys(added) if entry not in codes]


def with_local_codes(mappings: Mappings, local_codes: Sequence[LocalCode]) -> tuple[Mappings, int]:
    """The mappings with each local code added to every ``codes.toml`` list that holds its standard code.

    Returns the new mappings and how many local codes found a list (the others map codes the rules do not use).
    """
    codes = mappings.codes
    systems = codes.systems

    def resolve(entry: str) -> tuple[str, str]:
        system, _bar, code = entry.rpartition("|")
        return systems.get(system, system), code

    local: dict[tuple[str, str], list[str]] = {}
    for item in local_codes:
        local.setdefault((item.standard_system, item.standard_code), []).append(
            f"{item.local_system}|{item.local_code}"
        )
    if not local:
        return mappings, 0
    known = {resolve(c) for c in _all_codes(codes)}
    used = [k for k in local if k in known]

    def lists(entries: Sequence[_Listed]) -> list[_Listed]:
        return [e.model_copy(update={"codes": _extended(e.codes, resolve, local)}) for e in entries]

    new_codes = codes.model_copy(
        update={
            "observation": lists(codes.observation),
            "answer": lists(codes.answer),
            "condition": lists(codes.condition),
            "medication": lists(codes.medication),
            "stop_reason": lists(codes.stop_reason),
            "ae_term": lists(codes.ae_term),
            "tumor": codes.tumor.model_copy(
                update={
                    "longest": _extended(codes.tumor.longest, resolve, local),
                    "perpendicular": _extended(codes.tumor.perpendicular, resolve, local),
                }
            ),
            "consent": codes.consent.model_copy(update={"research": _extended(codes.consent.research, resolve, local)}),
        }
    )
    return Mappings(mappings.protocol, new_codes, mappings.units), sum(len(local[k]) for k in used)


def _all_codes(codes: CodesFile) -> list[str]:
    lists: list[list[str]] = [
        *(e.codes for e in codes.observation),
        *(e.codes for e in codes.answer),
        *(e.codes for e in codes.condition),
        *(e.codes for e in codes.medication),
        *(e.codes for e in codes.stop_reason),
        *(e.codes for e in codes.ae_term),
    ]
    return [
        *(c for entry in lists for c in entry),
        *codes.tumor.longest,
        *codes.tumor.perpendicular,
        *codes.consent.research,
    ]

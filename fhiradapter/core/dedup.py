"""Which copy of a resource counts when the input holds several (docs/protocol.md §4 of the data rules).

Exports overlap: a resource may come twice, in two files or two versions. The copy kept is the one with the
higher numeric ``meta.versionId``, then the later ``meta.lastUpdated`` (compared as the instant it names, in
UTC), then the one seen last. Every other copy is superseded, with the rule that decided in words.

``lastUpdated`` is kept as written in :class:`Version` and turned into an instant only when two copies of
one resource meet, which is rare: most resources come once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from fhiradapter.core.fhir_json import utc_instant
from fhiradapter.core.fhir_types import Resource
from fhiradapter.core.mappers import Record
from fhiradapter.core.model import Issue, Origin


class Version(NamedTuple):
    """What a resource's ``meta`` says about which copy is newer."""

    number: int  # a numeric versionId, else -1 (an opaque versionId does not order)
    last_updated: str  # as written ("" when absent)
    version_id: str  # as written ("" when absent)

    def instant(self) -> str:
        """``last_updated`` as a fixed-width UTC text that sorts as the moments do ("" when it is no instant)."""
        return utc_instant(self.last_updated) if self.last_updated else ""


NO_VERSION = Version(-1, "", "")


def version_of(resource: Resource | dict[str, Any]) -> Version:  # JSON edge: a Bundle entry, as parsed
    """What a resource's ``meta`` says about which copy is newer, decoded or as its JSON."""
    if isinstance(resource, dict):
        meta = resource.get("meta")
        if not isinstance(meta, dict):
            return NO_VERSION
        vid, updated = meta.get("versionId"), meta.get("lastUpdated")
    elif resource.meta is None:
        return NO_VERSION
    else:
        vid, updated = resource.meta.version_id, resource.meta.last_updated
    return Version(
        int(vid) if isinstance(vid, str) and vid.isascii() and vid.isdecimal() else -1,
        updated if isinstance(updated, str) else "",
        vid if isinstance(vid, str) else "",
    )


class InputRecord(NamedTuple):
    """One input resource on its way through the pipeline: its mapped record (None when it could not be used),
    what decides between copies of it, and where it came from."""

    ref: str  # "Type/id"
    version: Version
    seen: int  # the order in which the input was read: the last-seen tie-breaker
    record: Record | None
    issues: list[Issue]
    origin: Origin
    patient: str | None  # "Patient/id" whose record this is; None for study-wide resources


def _order(item: InputRecord) -> tuple[int, str, int]:
    return (item.version.number, item.version.instant(), item.seen)


def newer(a: InputRecord, b: InputRecord) -> bool:
    """Whether copy ``a`` supersedes copy ``b`` of the same resource."""
    return _order(a) > _order(b)


def superseded_reason(older: InputRecord, newer: InputRecord) -> str:
    """Why a copy was set aside for another copy of the same resource: the rule that decided, in words."""
    old, new = older.version, newer.version
    if old.number != new.number:
        rule = f"the higher meta.versionId ({new.version_id})"
    elif old.instant() != new.instant():
        rule = f"the later meta.lastUpdated ({new.instant().replace('.000000Z', 'Z')} UTC)"
    else:
        rule = "the copy seen last, as neither copy's meta tells which is newer"
    where = f"{newer.origin[0]} {newer.origin[1]}"
    return f"another copy of {older.ref} supersedes this one (kept: {rule}, {where})"


def keep_newest(items: Iterable[InputRecord]) -> Iterator[tuple[InputRecord, InputRecord | None]]:
    """For each resource, the copy that counts: yields ``(kept, None)`` for it and ``(superseded, kept)``
    for every other copy. Copies come out grouped by resource, in reference order."""
    by_ref: dict[str, list[InputRecord]] = {}
    for item in items:
        by_ref.setdefault(item.ref, []).append(item)
    for ref in sorted(by_ref):
        copies = by_ref[ref]
        if len(copies) == 1:
            yield copies[0], None
            continue
        copies.sort(key=_order)
        winner = copies[-1]
        for older in copies[:-1]:
            yield older, winner
        yield winner, None

"""Small accessors over decoded FHIR R4 elements (:mod:`fhir_types`): references, dates, codings.

Nothing here raises on odd input: a missing element or an unreadable date reads as ``None`` and the mapper
decides whether that is an issue. Dates stay as written (``2004-07``, ``2005-03-31``): never shifted through
UTC, and partial dates keep their precision.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, TypeVar

import msgspec

from fhiradapter.core import dates
from fhiradapter.core.dates import PartialDate
from fhiradapter.core.fhir_types import CodeableConcept, Element, Reference, Resource, get_path

E = TypeVar("E", bound=Element)

_DATE = re.compile(r"^(\d{4})(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?")
RESOURCE_ID = re.compile(r"[A-Za-z0-9\-\.]{1,64}")  # FHIR R4 id
MAX_MAGNITUDE = 1e12  # no measurement the protocol reads comes near; beyond it a value is an error of the source


def local_date(value: object) -> str | None:
    """The calendar date written in a FHIR date/dateTime/instant, never shifted through UTC.

    ``2005-03-31T08:00:00+09:00`` -> ``2005-03-31``; a partial ``2004-07`` stays ``2004-07``.
    Anything that does not start with a valid date gives ``None``.
    """
    if not isinstance(value, str):
        return None
    return _local_date(value)


@lru_cache(maxsize=1 << 16)
def _local_date(value: str) -> str | None:
    # Memoised: a cohort repeats its timestamps (visits, lab runs), and the regex is the costly part.
    m = _DATE.match(value)
    if m is None:
        return None
    end = m.end()
    rest = value[end:]
    if rest and not rest.startswith("T"):
        return None
    if end == 10:
        try:
            date.fromisoformat(value[:10])  # the pattern lets 2005-02-30 through; the calendar does not
        except ValueError:
            return None
    return value[:end]


def partial_date(value: str | None) -> PartialDate | None:
    """The calendar date written in a FHIR date/dateTime/instant, as precise as written (see local_date)."""
    text = local_date(value)
    return dates.partial_date(text) if text is not None else None


def unreadable_date(resource: Resource) -> str | None:
    """The FHIR path of the first date the mappers read that is present but no calendar date (2005-02-30,
    2005-13), else None: such a record is a reject (``bad-date``), never a date shifted into another."""
    for path in resource.DATES:
        value = get_path(resource, path)
        if type(value) is str and _local_date(value) is None:
            return path
    return None


def plausible_number(value: object) -> bool:
    """A JSON number a measurement can be: finite, and within ``MAX_MAGNITUDE`` (not 1e308, not 30 digits)."""
    if type(value) is int:
        return -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE
    if type(value) is float:
        return -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE  # NaN and infinities fail both comparisons
    return True  # not a number: other checks say what is wrong with it


def normalise_reference(ref: object, aliases: dict[str, str] | None = None) -> str | None:
    """``Type/id`` for a relative, absolute or versioned reference; Bundle ``urn:uuid:`` via ``aliases``.

    Contained references (``#id``) are returned unchanged; the caller resolves them in its resource.
    """
    if type(ref) is not str or not ref:
        return None
    slash = ref.find("/")
    if 0 < slash == ref.rfind("/") and ref[0].isupper() and slash < len(ref) - 1:
        return ref  # already "Type/id": the common case
    if ref.startswith("#"):
        return ref
    if aliases and ref in aliases:
        return aliases[ref]
    if ref.startswith("urn:"):
        return None
    if "/_history/" in ref:
        ref = ref.split("/_history/", 1)[0]
    parts = ref.rstrip("/").split("/")
    if len(parts) < 2 or not parts[-2][:1].isupper() or not parts[-1]:
        return None
    return f"{parts[-2]}/{parts[-1]}"


def local_reference(
    element: Reference | None, aliases: dict[str, str] | None, bases: tuple[str, ...]
) -> tuple[str | None, str | None]:
    """``(Type/id, None)`` for a reference to a resource of this data set, else ``(None, why)``.

    Stricter than :func:`reference_of`, for the references that decide whose data a record is: a path that
    walks (``../Patient/x``), an absolute URL on a server not in ``bases`` (another hospital's
    ``Patient/x`` is not ours), or an id outside R4's ``[A-Za-z0-9-.]{1,64}`` is no local reference.
    """
    ref = element.reference if element is not None else None
    if not ref:
        return None, None
    if aliases and ref in aliases:
        return aliases[ref], None
    if ref.startswith("urn:"):
        return None, "a urn: reference that no entry of its Bundle names"
    if "://" in ref:
        base = next((b for b in bases if ref.startswith(b.rstrip("/") + "/")), None)
        if base is None:
            origin = ref.split("://", 1)[0] + "://" + ref.split("://", 1)[1].split("/", 1)[0]
            return None, f"an absolute reference to another server ({origin}), not one declared as this data's"
        ref = ref[len(base.rstrip("/")) + 1 :]
    if "/_history/" in ref:
        ref = ref.split("/_history/", 1)[0]
    parts = ref.split("/")
    if len(parts) != 2 or not parts[0][:1].isupper() or not parts[0].isalpha():
        return None, "not a Type/id reference (a path that walks, or a malformed one)"
    if not RESOURCE_ID.fullmatch(parts[1]):
        return None, "the id breaks FHIR R4's rule [A-Za-z0-9-.]{1,64}"
    return ref, None


def reference_of(element: Reference | None, aliases: dict[str, str] | None = None) -> str | None:
    if element is None:
        return None
    ref = element.reference
    if aliases and ref is not None and ref in aliases:
        return aliases[ref]
    return normalise_reference(ref, aliases)


def codings(concept: CodeableConcept | None) -> Iterator[tuple[str | None, str | None]]:
    """``(system, code)`` pairs of a CodeableConcept."""
    if concept is not None and concept.coding:
        for coding in concept.coding:
            yield coding.system, coding.code


def concept_text(concept: CodeableConcept | None) -> str | None:
    if concept is None:
        return None
    if concept.text:
        return concept.text
    for coding in concept.coding or ():
        if coding.display is not None:
            return coding.display
    return None


def first_code(concept: CodeableConcept | None) -> str | None:
    for _system, code in codings(concept):
        if code:
            return code
    return None


def contained(
    items: list[dict[str, Any]] | None,  # JSON edge: a resource's contained resources, as read
    local_ref: str,
    resource_type: str,
    kind: type[E],
) -> E | None:
    """The contained resource of ``resource_type`` a ``#id`` reference names, read as ``kind`` (a Struct of
    only the fields read there, so that another field of the wrong type does not hide it); None when it is
    absent or those fields are unreadable."""
    wanted = local_ref[1:]
    for item in items or ():
        if isinstance(item, dict) and item.get("id") == wanted and item.get("resourceType") == resource_type:
            try:
                return msgspec.convert(item, kind)
            except msgspec.ValidationError:
                return None
    return None


def utc_instant(value: str) -> str:
    """A FHIR instant as a fixed-width UTC text that sorts as the moments do ("" when it is no instant)."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:  # an instant always has a zone; without one the moment is unknown
            return ""
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (ValueError, OverflowError):  # no instant, or one that leaves the calendar in UTC (year 1 or 9999)
        return ""


def resolve_aliases(value: Any, aliases: dict[str, str] | None) -> Any:  # JSON edge: any JSON in, its copy out
    """A copy of a resource with Bundle-internal references (``urn:uuid:``) replaced by ``Type/id``."""
    if not aliases:
        return value
    if isinstance(value, dict):
        return {
            k: (aliases.get(v, v) if k == "reference" and isinstance(v, str) else resolve_aliases(v, aliases))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [resolve_aliases(v, aliases) for v in value]
    return value

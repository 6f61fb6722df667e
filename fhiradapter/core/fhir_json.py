"""Small, tolerant accessors over raw FHIR R4 JSON dicts: references, dates, codings, extensions.

Nothing here raises on odd input: a missing or mistyped element reads as ``None`` and the mapper decides
whether that is an issue. camelCase FHIR names live only here and in the mappers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

_DATE = re.compile(r"^(\d{4})(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?")
RESOURCE_ID = re.compile(r"[A-Za-z0-9\-\.]{1,64}")  # FHIR R4 id
MAX_MAGNITUDE = 1e12  # no measurement the protocol reads comes near; beyond it a value is an error of the source
# The dates the mappers read, as paths of nested keys: one that is present but no calendar date (2005-02-30,
# 2005-13) makes the record a reject (``bad-date``), never a date shifted into another.
DATE_PATHS: tuple[tuple[str, ...], ...] = (
    ("birthDate",),
    ("deceasedDateTime",),
    ("effectiveDateTime",),
    ("effectivePeriod", "start"),
    ("effectivePeriod", "end"),
    ("date",),
    ("detected",),
    ("recordedDate",),
    ("onsetDateTime",),
    ("onsetPeriod", "start"),
    ("dateTime",),
    ("period", "start"),
    ("period", "end"),
    ("authoredOn",),
)


def local_date(value: Any) -> str | None:
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


def unreadable_date(resource: dict[str, Any]) -> str | None:
    """The path of the first date the mappers read that is present but no calendar date, else None."""
    for path in DATE_PATHS:
        value: Any = resource
        for key in path:
            value = value.get(key) if type(value) is dict else None
        if type(value) is str and _local_date(value) is None:
            return ".".join(path)
    return None


def plausible_number(value: Any) -> bool:
    """A JSON number a measurement can be: finite, and within ``MAX_MAGNITUDE`` (not 1e308, not 30 digits)."""
    if type(value) is int:
        return -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE
    if type(value) is float:
        return -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE  # NaN and infinities fail both comparisons
    return True  # not a number: other checks say what is wrong with it


def is_full_date(value: str | None) -> bool:
    return value is not None and len(value) == 10


def normalise_reference(ref: Any, aliases: dict[str, str] | None = None) -> str | None:
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
    element: Any, aliases: dict[str, str] | None, bases: tuple[str, ...]
) -> tuple[str | None, str | None]:
    """``(Type/id, None)`` for a reference to a resource of this data set, else ``(None, why)``.

    Stricter than :func:`reference_of`, for the references that decide whose data a record is: a path that
    walks (``../Patient/x``), an absolute URL on a server not in ``bases`` (another hospital's
    ``Patient/x`` is not ours), or an id outside R4's ``[A-Za-z0-9-.]{1,64}`` is no local reference.
    """
    ref = element.get("reference") if type(element) is dict else None
    if type(ref) is not str or not ref:
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


def reference_of(element: Any, aliases: dict[str, str] | None = None) -> str | None:
    if type(element) is dict:
        ref = element.get("reference")
        if aliases and type(ref) is str and ref in aliases:
            return aliases[ref]
        return normalise_reference(ref, aliases)
    return None


def codings(concept: Any) -> Iterator[tuple[str | None, str | None]]:
    """``(system, code)`` pairs of a CodeableConcept (or of a bare Coding)."""
    if not isinstance(concept, dict):
        return
    items = concept.get("coding")
    if items is None and "code" in concept:
        items = [concept]
    if not isinstance(items, list):
        return
    for coding in items:
        if isinstance(coding, dict):
            system, code = coding.get("system"), coding.get("code")
            yield (system if isinstance(system, str) else None, code if isinstance(code, str) else None)


def concept_text(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    text = concept.get("text")
    if isinstance(text, str) and text:
        return text
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            return str(coding["display"])
    return None


def first_code(concept: Any) -> str | None:
    for _system, code in codings(concept):
        if code:
            return code
    return None


def extension_values(resource: dict[str, Any], url: str) -> Iterator[Any]:
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            yield ext


def number(value: Any) -> float | None:
    """A JSON number as float; strings and booleans are not numbers."""
    kind = type(value)  # exact types: a bool is not a number (and JSON parsers give no subclasses)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return float(value)
    return None


def contained(resource: dict[str, Any], local_ref: str) -> dict[str, Any] | None:
    wanted = local_ref[1:]
    for item in resource.get("contained") or []:
        if isinstance(item, dict) and item.get("id") == wanted:
            return item
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


def resolve_aliases(value: Any, aliases: dict[str, str] | None) -> Any:
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

"""JSON as it comes from a FHIR server or a file, and as the adapter patches it: a recursive type for values that
really are arbitrary JSON (a resource read from a server, a Bundle line, an existing ResearchSubject the
write-back updates without knowing all its elements), and small readers that narrow it where a field is needed.

Typed values pass between our modules; these are for what is JSON at the edge, before it is decoded into a typed
value (``core/fhir_types``) or written as it is (a pulled resource goes to NDJSON or the store untouched).
"""

from __future__ import annotations

JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]
JsonObject = dict[str, JsonValue]


def as_object(value: JsonValue) -> JsonObject:
    """``value`` when it is a JSON object, else an empty one (an element of the wrong type reads as empty)."""
    return value if isinstance(value, dict) else {}


def member(value: JsonValue, key: str) -> JsonObject | None:
    """The object under ``key`` of ``value``, if both are JSON objects."""
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, dict) else None


def items(value: JsonValue, key: str) -> list[JsonObject]:
    """The objects in the array under ``key`` of ``value`` (anything else in it left out)."""
    found = value.get(key) if isinstance(value, dict) else None
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def text(value: JsonValue, key: str) -> str | None:
    """The string under ``key`` of ``value``, if it is one."""
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, str) else None

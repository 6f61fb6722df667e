"""Typed reading of JSON the adapter returns as ``JsonValue`` (bundles, resources, plan entries): each step
checks the type it needs, so a test fails on a wrong shape instead of mypy being told the shape is ``Any``."""

from __future__ import annotations

from fhiradapter.core.json_types import JsonObject, JsonValue


def at(value: JsonValue, *path: str | int) -> JsonValue:
    """The value at ``path`` (object keys and array indexes) under ``value``; KeyError/IndexError if absent."""
    for step in path:
        if isinstance(step, int):
            assert isinstance(value, list), f"not an array at {step!r}: {value!r}"
            value = value[step]
        else:
            assert isinstance(value, dict), f"not an object at {step!r}: {value!r}"
            value = value[step]
    return value


def obj(value: JsonValue, *path: str | int) -> JsonObject:
    """The JSON object at ``path`` under ``value``."""
    found = at(value, *path)
    assert isinstance(found, dict), f"not an object: {found!r}"
    return found


def objs(value: JsonValue, *path: str | int) -> list[JsonObject]:
    """The array of JSON objects at ``path`` under ``value``."""
    found = at(value, *path)
    assert isinstance(found, list), f"not an array: {found!r}"
    assert all(isinstance(item, dict) for item in found), f"not an array of objects: {found!r}"
    return [item for item in found if isinstance(item, dict)]


def string(value: JsonValue, *path: str | int) -> str:
    """The string at ``path`` under ``value``."""
    found = at(value, *path)
    assert isinstance(found, str), f"not a string: {found!r}"
    return found

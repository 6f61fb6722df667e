"""Shared pytest fixtures: the embedded mappings and a mapping context."""

from __future__ import annotations

import pytest

from fhiradapter.core.mappers import MapContext
from fhiradapter.core.protocol import Mappings
from fhiradapter.shell.mappings_io import load_mappings, ucum_factor


@pytest.fixture(scope="session")
def mappings() -> Mappings:
    return load_mappings()[0]


@pytest.fixture(scope="session")
def ctx(mappings: Mappings) -> MapContext:
    return MapContext(mappings, ucum_factor)

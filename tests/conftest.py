"""Shared pytest fixtures: the embedded mappings, a mapping context, and a throwaway PostgreSQL cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator

import hypothesis  # noqa: F401 - imported now, not lazily at the session's end (see below)
import pytest
from pg_server import pg_bin, postgres_cluster

from fhiradapter.core.mappers import MapContext
from fhiradapter.core.protocol import Mappings
from fhiradapter.shell.common.mappings_io import load_mappings, ucum_factor

# hypothesis's pytest plugin imports hypothesis in its terminal summary when no test has yet. A run of only
# some tests then rewrote its modules there, deep in the session's end, and on CPython 3.11.7 that
# intermittently failed with "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905)
# after every test had passed. Importing it here, at collection, avoids that.


@pytest.fixture(scope="session")
def mappings() -> Mappings:
    return load_mappings()[0]


@pytest.fixture(scope="session")
def ctx(mappings: Mappings) -> MapContext:
    return MapContext(mappings, ucum_factor)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One PostgreSQL cluster for the session (each test makes its own database in it)."""
    if pg_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs it from Debian packages")
        pytest.skip("PostgreSQL is not installed (initdb not found); CI installs it")
    with postgres_cluster() as url:
        yield url

"""Fixtures shared by test modules in several directories."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgserver import PgServer, pg_server


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """One real PostgreSQL server for the whole session (skips when it is not installed)."""
    with pg_server() as server:
        yield server

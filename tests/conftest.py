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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `soak` (long acceptance runs, e.g. 10 controller fail-overs: > 60 s) run
    only when asked for: `-m soak` (make test-soak) or I2NSF_SOAK=1; `make test` skips
    them so that it stays fast."""
    import os

    if "soak" in (config.getoption("-m") or "") or os.environ.get("I2NSF_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak test (> 60 s): run with make test-soak "
                                   "(pytest -m soak) or I2NSF_SOAK=1")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)

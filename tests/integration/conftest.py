"""Fixtures of the integration tests beyond the session's servers (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.stack import LocalPostgres


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    """A PostgreSQL server of the test's own, for tests that stop and start it."""
    server = LocalPostgres(tmp_path / "pg")
    server.start()
    try:
        yield server
    finally:
        server.stop(mode="immediate")

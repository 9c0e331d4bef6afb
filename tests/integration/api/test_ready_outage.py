"""/ready follows PostgreSQL down and back up; reads answer 503 (not 500) meanwhile.

The test runs its own PostgreSQL server, so stopping it cannot disturb any other test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from devtools.stack import LocalPostgres
from pipeline.core.settings import Settings
from tests.api_harness import eventually, serve

pytestmark = pytest.mark.integration


async def _ready(client: httpx.AsyncClient, expected: int) -> dict[str, Any] | None:
    response = await client.get("/ready")
    return response.json() if response.status_code == expected else None


async def test_ready_turns_503_while_postgresql_is_down_and_200_when_it_returns(
    make_settings: Callable[..., Settings], own_postgres: LocalPostgres
) -> None:
    settings = make_settings(PIPELINE_ROLES="none", DATABASE_URL=own_postgres.url)
    async with serve(settings) as client:
        assert (await client.get("/ready")).status_code == 200

        await asyncio.to_thread(own_postgres.stop, "fast")
        down = await eventually(lambda: _ready(client, 503), 10, "/ready answers 503")
        checks = down["detail"]["checks"]
        assert checks["postgres"]["ok"] is False
        assert "PostgreSQL unreachable" in checks["postgres"]["detail"]
        assert checks["kafka"]["ok"] is True

        symbols = await client.get("/symbols")
        price = await client.get("/prices/BTCUSDT")
        assert symbols.status_code == 503
        assert symbols.json() == {"detail": "PostgreSQL is unavailable; retry later"}
        assert price.status_code == 503
        assert (await client.get("/health")).status_code == 200

        await asyncio.to_thread(own_postgres.start)
        up = await eventually(lambda: _ready(client, 200), 15, "/ready back to 200")
        assert up["status"] == "ready"
        assert (await client.get("/symbols")).status_code == 200

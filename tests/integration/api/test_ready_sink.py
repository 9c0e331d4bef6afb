"""/ready and /pipeline/status show a sink that cannot store although PostgreSQL answers.

PostgreSQL up but refusing every write (read-only, as after a failover onto a standby): the
postgres check passes, so only the sink's own check can tell that nothing is being stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from pipeline.core.settings import Settings
from pipeline.core.trades import TradeEvent
from pipeline.kafka.admin import ensure_topics
from pipeline.kafka.producer import EventProducer
from tests.api_harness import eventually, serve
from tests.factories import make_trades
from tests.services import execute_sql

pytestmark = pytest.mark.integration


async def _produce(settings: Settings, trades: list[TradeEvent]) -> None:
    producer = EventProducer(settings.kafka)
    running = asyncio.create_task(producer.run())
    try:
        for trade in trades:
            await producer.publish(trade)
        assert await producer.drain(30)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def _ready(client: httpx.AsyncClient, expected: int) -> dict[str, Any] | None:
    response = await client.get("/ready")
    return response.json() if response.status_code == expected else None


async def test_ready_and_status_name_the_sink_while_postgresql_refuses_writes(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(PIPELINE_ROLES="consumer", PIPELINE_ISOLATION="task")
    await ensure_topics(settings.kafka)
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        name = await connection.fetchval("SELECT current_database()")
    finally:
        await connection.close()
    async with serve(settings) as client:
        up = await eventually(lambda: _ready(client, 200), 30, "/ready 200")
        assert up["checks"]["sink"]["ok"] is True

        # From now on new connections are read-only; the sink opens its first with the first
        # batch.
        await execute_sql(
            settings, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'
        )
        await _produce(settings, make_trades(["BTCUSDT"], 20))
        down = await eventually(lambda: _ready(client, 503), 30, "/ready 503")
        sink = down["detail"]["checks"]["sink"]
        assert sink["ok"] is False
        assert "25006" in sink["detail"]
        assert down["detail"]["checks"]["postgres"]["ok"] is True
        consumer = (await client.get("/pipeline/status")).json()["consumer"]
        assert consumer["sink_up"] is False
        assert "25006" in consumer["last_error"]
        assert consumer["stored"] == 0

        await execute_sql(
            settings,
            "SET default_transaction_read_only = off",  # this session is read-only too
            f'ALTER DATABASE "{name}" RESET default_transaction_read_only',
        )
        again = await eventually(lambda: _ready(client, 200), 30, "/ready back to 200")
        assert again["checks"]["sink"]["ok"] is True

        async def all_stored() -> dict[str, Any] | None:
            consumer = (await client.get("/pipeline/status")).json()["consumer"]
            return consumer if consumer["stored"] == 20 else None

        consumer = await eventually(all_stored, 30, "every trade stored")
        assert consumer["sink_up"] is True

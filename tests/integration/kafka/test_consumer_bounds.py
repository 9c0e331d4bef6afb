"""Records beyond what the table stores or what is plausible never reach PostgreSQL.

On the real broker and database: records written straight to the topic (as a foreign producer or
kcat would) with a price PostgreSQL's NUMERIC cannot hold, a trade dated in the year 5000, 19
digits after the point, a time before Binance existed. Each goes to the DLQ with its reason; every
valid record around them is stored, and the consumer never stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.core.settings import Settings
from pipeline.kafka.admin import consumer_lag, ensure_topics
from pipeline.kafka.consumer import TradeConsumer
from pipeline.storage.sink import PostgresSink
from tests.factories import keys, make_trades
from tests.services import dead_letters
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

YEAR_5000_MS = 95_617_584_000_000


def _poison(base: dict[str, Any]) -> dict[bytes, str]:
    """Out-of-bounds record values, each with the start of the reason it must be dead-lettered
    with (pydantic's words for the field that is out of bounds)."""
    now = time.time_ns() // 1_000_000
    cases = [
        ({"price": "1E-20000"}, "price: Decimal input should have no more than 18 digits"),
        ({"trade_time": YEAR_5000_MS}, "trade_time: Input should be at most"),
        ({"event_time": now + 3_600_000}, "event_time: Input should be at most"),
        ({"price": "37123.4500000000000000000"}, "price: Decimal input should have no more"),
        ({"quantity": "1E+20"}, "quantity: Input should be less than 1E+20"),
        ({"event_time": 1_498_780_800_000}, "event_time: Input should be greater than or equal"),
    ]
    return {orjson.dumps({**base, **change}): reason for change, reason in cases}


async def stored_rows(settings: Settings) -> dict[tuple[str, int], tuple[Decimal, Decimal, int]]:
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        rows = await connection.fetch(
            "SELECT symbol, trade_id, price, quantity, trade_time FROM crypto_prices"
        )
    finally:
        await connection.close()
    return {
        (r["symbol"], r["trade_id"]): (r["price"], r["quantity"], r["trade_time"]) for r in rows
    }


@contextlib.asynccontextmanager
async def consuming(settings: Settings) -> AsyncIterator[TradeConsumer]:
    sink = PostgresSink(settings.database)
    consumer = TradeConsumer(settings.kafka, sink)
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.close()


async def test_records_out_of_bounds_are_dead_lettered_and_the_rest_is_stored(
    settings: Settings,
) -> None:
    await ensure_topics(settings.kafka)
    trades = make_trades(["BTCUSDT"], 60)
    poison = _poison(orjson.loads(trades[0].to_kafka_value()) | {"trade_id": 10**9})
    raw = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await raw.start()
    try:
        values = [trade.to_kafka_value() for trade in trades]
        for i, value in enumerate(poison):  # interleaved with the valid ones
            values.insert(10 * i + 5, value)
        for value in values:
            await raw.send_and_wait(settings.kafka.topic, value, key=b"BTCUSDT")
    finally:
        await raw.stop()

    async with consuming(settings) as consumer:

        async def all_stored_and_no_lag() -> bool:
            return (
                len(await stored_rows(settings)) >= len(trades)
                and (await consumer_lag(settings.kafka)).total_lag == 0
            )

        await wait_until(all_stored_and_no_lag, 60, "valid records stored, lag 0")
        assert consumer.status().dead_letters == len(poison)

    table = await stored_rows(settings)
    assert set(table) == keys(trades)
    assert table == {(t.symbol, t.trade_id): (t.price, t.quantity, t.trade_time) for t in trades}
    got = {record.value: dict(record.headers) for record in await dead_letters(settings, 6)}
    assert set(got) == set(poison)
    for value, reason in poison.items():
        assert got[value]["source"] == b"kafka"
        assert got[value]["error"].decode().startswith(reason), got[value]["error"]

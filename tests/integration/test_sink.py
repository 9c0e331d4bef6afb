"""PostgresSink: a batch in one transaction, each (symbol, trade_id) stored once, nothing rounded."""

import asyncpg
import pytest

from pipeline.settings import Settings
from pipeline.sink import PostgresSink
from tests.factories import keys, make_trades

pytestmark = pytest.mark.integration


async def stored(settings: Settings) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        return await connection.fetch("SELECT * FROM crypto_prices ORDER BY symbol, trade_id")
    finally:
        await connection.close()


async def test_batch_is_stored_with_exact_decimals(settings: Settings) -> None:
    trades = make_trades(["BTCUSDT", "ETHUSDT"], 500)
    sink = PostgresSink(settings.database)
    try:
        assert await sink.write(trades) == 1000
    finally:
        await sink.close()
    rows = await stored(settings)
    assert {(r["symbol"], r["trade_id"]) for r in rows} == keys(trades)
    by_key = {(t.symbol, t.trade_id): t for t in trades}
    for row in rows:
        trade = by_key[(row["symbol"], row["trade_id"])]
        assert (row["price"], row["quantity"]) == (trade.price, trade.quantity)
        assert str(row["price"]) == str(trade.price)


async def test_duplicates_inside_and_across_batches_are_stored_once(settings: Settings) -> None:
    trades = make_trades(["SOLUSDT"], 300)
    sink = PostgresSink(settings.database)
    try:
        first = await sink.write(trades[:200] + trades[:50])
        replay = await sink.write(trades)
    finally:
        await sink.close()
    assert (first, replay) == (200, 100)
    rows = await stored(settings)
    assert len(rows) == 300
    assert {(r["symbol"], r["trade_id"]) for r in rows} == keys(trades)


async def test_sink_session_keeps_synchronous_commit_on(settings: Settings) -> None:
    sink = PostgresSink(settings.database)
    try:
        await sink.write(make_trades(["BTCUSDT"], 1))
        pool = await sink._get_pool()
        async with pool.acquire() as connection:
            assert await connection.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await sink.close()

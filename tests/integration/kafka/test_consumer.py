"""Producer → Kafka → consumer → PostgreSQL on the real broker and database: exactly once in the table."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.core.settings import Settings
from pipeline.core.trades import TradeEvent
from pipeline.kafka.admin import consumer_lag, ensure_topics
from pipeline.kafka.consumer import TradeConsumer
from pipeline.kafka.producer import EventProducer
from pipeline.storage.sink import PostgresSink
from tests.factories import keys, make_trades, rows_of
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


async def stored_keys(settings: Settings) -> list[tuple[str, int]]:
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        rows = await connection.fetch("SELECT symbol, trade_id FROM crypto_prices")
    finally:
        await connection.close()
    return [(row["symbol"], row["trade_id"]) for row in rows]


@contextlib.asynccontextmanager
async def running(*coroutines: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def produce_all(settings: Settings, trades: list[TradeEvent]) -> None:
    producer = EventProducer(settings.kafka)
    async with running(producer.run()):
        for trade in trades:
            await producer.publish(trade)
        assert await producer.drain(60)


async def consume_until_stored(settings: Settings, expected: int) -> None:
    sink = PostgresSink(settings.database)
    consumer = TradeConsumer(settings.kafka, sink)
    try:
        async with running(consumer.run()):

            async def all_stored() -> bool:
                return len(await stored_keys(settings)) >= expected

            await wait_until(all_stored, 60, "every record stored")

            async def lag_is_zero() -> bool:
                return (await consumer_lag(settings.kafka)).total_lag == 0

            await wait_until(lag_is_zero, 60, "consumer lag 0")
    finally:
        await sink.close()


async def test_every_published_trade_is_stored_exactly_once(settings: Settings) -> None:
    await ensure_topics(settings.kafka)
    trades = make_trades(SYMBOLS, 2_000)
    with_duplicates = trades + trades[::20]  # 5 % sent twice
    await produce_all(settings, with_duplicates)
    await consume_until_stored(settings, len(trades))
    rows = await stored_keys(settings)
    assert len(rows) == len(trades)
    assert set(rows) == keys(trades)


async def test_replay_from_offset_zero_adds_no_row(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    await ensure_topics(settings.kafka)
    trades = make_trades(SYMBOLS, 500)
    await produce_all(settings, trades)
    await consume_until_stored(settings, len(trades))
    # A second group starts at offset 0 of the same topic: everything is read again.
    replay = make_settings(
        KAFKA_TOPIC=settings.kafka.topic,
        DATABASE_URL=settings.database.url,
        KAFKA__GROUP_ID=f"{settings.kafka.group_id}-replay",
    )
    await consume_until_stored(replay, len(trades))
    rows = await stored_keys(settings)
    assert len(rows) == len(trades)
    assert set(rows) == keys(trades)


async def test_batch_stored_before_a_crash_is_replayed_without_duplicates(
    settings: Settings,
) -> None:
    """The crash window: the DB committed a batch, the consumer died before committing offsets."""
    await ensure_topics(settings.kafka)
    trades = make_trades(SYMBOLS, 400)
    await produce_all(settings, trades)
    sink = PostgresSink(settings.database)
    try:
        assert await sink.write(rows_of(trades[:700])) == 700  # what the dead consumer had stored
    finally:
        await sink.close()
    lag = await consumer_lag(settings.kafka)
    assert lag.total_lag == len(trades) and all(p.committed is None for p in lag.partitions)
    await consume_until_stored(settings, len(trades))
    rows = await stored_keys(settings)
    assert len(rows) == len(trades)
    assert set(rows) == keys(trades)


async def test_undecodable_record_goes_to_dlq_and_the_rest_is_stored(settings: Settings) -> None:
    await ensure_topics(settings.kafka)
    trades = make_trades(["BTCUSDT"], 50)
    raw = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await raw.start()
    try:
        for trade in trades[:25]:
            await raw.send_and_wait(settings.kafka.topic, trade.to_kafka_value(), key=b"BTCUSDT")
        await raw.send_and_wait(
            settings.kafka.topic, b'{"symbol": "BTCUSDT", "price": oops', key=b"BTCUSDT"
        )
        for trade in trades[25:]:
            await raw.send_and_wait(settings.kafka.topic, trade.to_kafka_value(), key=b"BTCUSDT")
    finally:
        await raw.stop()
    await consume_until_stored(settings, len(trades))
    assert set(await stored_keys(settings)) == keys(trades)

    dlq = AIOKafkaConsumer(
        settings.kafka.dlq_topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
    )
    await dlq.start()
    try:
        record = await asyncio.wait_for(dlq.getone(), 30)
    finally:
        await dlq.stop()
    headers = dict(record.headers)
    assert record.value == b'{"symbol": "BTCUSDT", "price": oops'
    assert headers["source"] == b"kafka"
    assert headers["error"]


async def test_producer_holds_the_source_back_while_kafka_is_unreachable(
    make_settings: Callable[..., Settings],
) -> None:
    from devtools.stack.common import free_port

    settings = make_settings(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}", KAFKA__QUEUE_SIZE="100"
    )
    producer = EventProducer(settings.kafka)
    trades = make_trades(["BTCUSDT"], 101)
    async with running(producer.run()):
        for trade in trades[:100]:
            await asyncio.wait_for(producer.publish(trade), 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(producer.publish(trades[100]), 1)
        status = producer.status()
    assert status.kafka_up is False
    assert status.queued + status.in_flight == 100


class FailingSink(PostgresSink):
    """A sink with a bug (not an outage: SinkUnavailable would be retried)."""

    async def write(self, batch: Any) -> int:
        raise RuntimeError("bug in the sink")


async def test_a_batch_that_cannot_be_stored_stops_the_consumer_at_once_and_commits_nothing(
    settings: Settings,
) -> None:
    await ensure_topics(settings.kafka)
    trades = make_trades(["BTCUSDT"], 100)  # one batch, and no next one to bring the error up
    await produce_all(settings, trades)
    sink = FailingSink(settings.database)
    try:
        with pytest.raises(RuntimeError, match="bug in the sink"):
            await asyncio.wait_for(TradeConsumer(settings.kafka, sink).run(), 30)
    finally:
        await sink.close()
    lag = await consumer_lag(settings.kafka)
    assert lag.total_lag == len(trades)  # replayed by the restarted role

"""Producer → Kafka → consumer → PostgreSQL on the real broker and database: exactly once in the table."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.core.settings import Settings
from pipeline.core.status import ConsumerStatus
from pipeline.core.trades import TradeEvent
from pipeline.kafka.admin import consumer_lag, ensure_topics
from pipeline.kafka.consumer import TradeConsumer
from pipeline.kafka.producer import EventProducer
from pipeline.storage.sink import PostgresSink
from tests.factories import keys, make_trades, rows_of
from tests.services import dead_letters, execute_sql
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


# --- no single record, and no refusal of the database or the DLQ, stops the consumer ----------


@contextlib.asynccontextmanager
async def consuming(settings: Settings) -> AsyncIterator[tuple[TradeConsumer, asyncio.Task[None]]]:
    """A consumer running in a task of its own: a crash ends the task (the supervisor would
    restart the role), so a task still running at the end never crashed."""
    sink = PostgresSink(settings.database)
    consumer = TradeConsumer(settings.kafka, sink)
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer, task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.close()


async def until_status(
    consumer: TradeConsumer, task: asyncio.Task[None], condition: Callable[[ConsumerStatus], bool]
) -> ConsumerStatus:
    async def reached() -> bool:
        assert not task.done(), task  # crashed
        return condition(consumer.status())

    await wait_until(reached, 60, "consumer status")
    return consumer.status()


async def until_lag_zero(task: asyncio.Task[None], settings: Settings) -> None:
    async def lag_is_zero() -> bool:
        assert not task.done(), task  # crashed
        return (await consumer_lag(settings.kafka)).total_lag == 0

    await wait_until(lag_is_zero, 60, "consumer lag 0")


async def test_a_trade_postgresql_refuses_is_dead_lettered_and_the_rest_stored_exactly_once(
    settings: Settings,
) -> None:
    """Poison isolation. The trades PostgreSQL refuses are valid ones (the validators have no
    reason to stop them) that this database's CHECK constraint forbids: the same refusal as
    numeric's range or any other constraint, whatever the validators come to check."""
    await ensure_topics(settings.kafka)
    await execute_sql(
        settings,
        "ALTER TABLE crypto_prices ADD CONSTRAINT price_below_a_million CHECK (price < 1000000)",
    )
    trades = make_trades(SYMBOLS, 300)  # BTCUSDT, ETHUSDT, SOLUSDT: ids 1..300 each
    poison = [
        trades[0].model_copy(update={"trade_id": 10_001, "price": Decimal("2000000")}),
        trades[450].model_copy(update={"trade_id": 10_002, "price": Decimal("5000000.5")}),
    ]
    await produce_all(
        settings, trades[:150] + poison[:1] + trades[150:600] + poison[1:] + trades[600:]
    )

    async with consuming(settings) as (consumer, task):
        await until_lag_zero(task, settings)
        status = consumer.status()
        assert not task.done()

    rows = await stored_keys(settings)
    assert len(rows) == len(trades)
    assert set(rows) == keys(trades)
    letters = await dead_letters(settings, len(poison))
    assert sorted(record.value for record in letters) == sorted(
        trade.to_kafka_value() for trade in poison
    )
    for record in letters:
        headers = dict(record.headers)
        assert headers["source"] == b"sink"
        assert b"23514" in headers["error"]
        assert b"price_below_a_million" in headers["error"]
    assert (status.stored, status.rejected, status.dead_letters) == (len(trades), 2, 2)
    assert status.sink_up and status.dlq_up


async def test_a_read_only_database_holds_the_offsets_and_shows_why_until_it_is_writable(
    settings: Settings,
) -> None:
    """Not a row's fault (read-only after a failover, 25006): no row is dead-lettered, the batch
    waits with its offsets like in an outage, and the status says why."""
    await ensure_topics(settings.kafka)
    trades = make_trades(SYMBOLS, 200)
    await produce_all(settings, trades)
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        name = await connection.fetchval("SELECT current_database()")
    finally:
        await connection.close()
    await execute_sql(settings, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')

    async with consuming(settings) as (consumer, task):
        failing = await until_status(
            consumer, task, lambda s: not s.sink_up and "25006" in (s.last_error or "")
        )
        await asyncio.sleep(1.5)  # a few retries
        lag = await consumer_lag(settings.kafka)
        assert lag.total_lag == len(trades)
        assert all(partition.committed is None for partition in lag.partitions)
        assert await stored_keys(settings) == []
        assert (failing.rejected, failing.dead_letters) == (0, 0)
        assert not task.done()

        await execute_sql(
            settings,
            "SET default_transaction_read_only = off",  # this session is read-only too
            f'ALTER DATABASE "{name}" RESET default_transaction_read_only',
        )
        await until_lag_zero(task, settings)
        status = consumer.status()

    rows = await stored_keys(settings)
    assert len(rows) == len(trades)
    assert set(rows) == keys(trades)
    assert status.sink_up
    assert (status.stored, status.dead_letters) == (len(trades), 0)


async def test_an_undeliverable_dead_letter_holds_the_offsets_until_the_dlq_takes_it(
    make_settings: Callable[..., Settings],
) -> None:
    """The DLQ topic is missing (the broker never auto-creates): the dead letter is retried, the
    offsets stay before it, and once the topic exists it is delivered and the rest stored."""
    settings = make_settings(KAFKA__REQUEST_TIMEOUT_MS="2000")
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(settings.kafka.topic, settings.kafka.partitions, 1)]
        )  # the trade topic only
    finally:
        await admin.close()
    trades = make_trades(["BTCUSDT"], 50)
    garbage = b'{"symbol": "BTCUSDT", "price": oops'
    raw = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await raw.start()
    try:
        for value in (
            [t.to_kafka_value() for t in trades[:25]]
            + [garbage]
            + [t.to_kafka_value() for t in trades[25:]]
        ):
            await raw.send_and_wait(settings.kafka.topic, value, key=b"BTCUSDT")
    finally:
        await raw.stop()

    async with consuming(settings) as (consumer, task):
        failing = await until_status(consumer, task, lambda s: not s.dlq_up)
        assert failing.last_error and failing.last_error.startswith("DLQ: ")
        await asyncio.sleep(3)  # a retry or two
        assert (await consumer_lag(settings.kafka)).total_lag >= 26  # the garbage and after
        assert not task.done()

        assert await ensure_topics(settings.kafka) == [settings.kafka.dlq_topic]
        await until_lag_zero(task, settings)
        status = consumer.status()

    assert set(await stored_keys(settings)) == keys(trades)
    letters = await dead_letters(settings, 1)
    assert [record.value for record in letters][:1] == [garbage]
    assert dict(letters[0].headers)["source"] == b"kafka"
    assert status.dlq_up
    assert status.dead_letters >= 1

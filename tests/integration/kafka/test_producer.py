"""EventProducer on the real broker: where its batches land, in what order, and what a failed
delivery does. The producer builds its own batches (one per partition per turn), so these pin
down what aiokafka's per-record `send()` used to guarantee by itself."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord, TopicPartition

from devtools.stack import LocalKafka
from pipeline.core.settings import KafkaSettings, load_settings
from pipeline.core.trades import TradeEvent
from pipeline.kafka import producer as producer_module
from pipeline.kafka.admin import ensure_topics
from pipeline.kafka.producer import EventProducer
from tests.factories import make_trades, service_env

pytestmark = pytest.mark.integration

# Many keys, so that every partition gets several and collisions of the hash are exercised.
SYMBOLS = [f"S{i}USDT" for i in range(40)]
PARTITIONS = 5


@pytest.fixture
def make_kafka_settings(kafka_broker: LocalKafka) -> Callable[..., KafkaSettings]:
    """Kafka settings with a topic of their own; no database is involved here."""
    base = service_env(kafka_broker.bootstrap_servers, "postgresql+asyncpg://u:p@127.0.0.1:1/x")

    def build(**overrides: str) -> KafkaSettings:
        return load_settings({**base, "KAFKA__PARTITIONS": str(PARTITIONS), **overrides}).kafka

    return build


@contextlib.asynccontextmanager
async def running(producer: EventProducer) -> AsyncIterator[EventProducer]:
    task = asyncio.create_task(producer.run())
    try:
        yield producer
        # run() ends only when cancelled; had it died, drain() would just have timed out.
        assert not task.done(), task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def produce(settings: KafkaSettings, trades: list[TradeEvent]) -> EventProducer:
    producer = EventProducer(settings)
    async with running(producer):
        for trade in trades:
            await producer.publish(trade)
        assert await producer.drain(60)
    return producer


async def read_topic(settings: KafkaSettings, topic: str) -> list[ConsumerRecord]:
    """Every record of `topic` (all written before the call), from offset 0 of each partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(60):
            for tp, end in ends.items():
                while await consumer.position(tp) < end:
                    fetched = await consumer.getmany(tp, timeout_ms=1000)
                    records.extend(fetched.get(tp, []))
    finally:
        await consumer.stop()
    return records


def kafka_default_partition(key: bytes, partitions: int) -> int:
    """Kafka's DefaultPartitioner for a keyed record (Java: toPositive(murmur2(key)) % n)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def trade_ids_by_symbol(records: list[ConsumerRecord]) -> dict[str, list[int]]:
    """In the order of each record's partition (Kafka orders nothing across partitions)."""
    by_symbol: dict[str, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        trade = TradeEvent.model_validate_json(record.value)
        by_symbol[trade.symbol].append(trade.trade_id)
    return by_symbol


async def test_every_key_lands_on_the_partition_of_kafkas_default_partitioner(
    make_kafka_settings: Callable[..., KafkaSettings],
) -> None:
    settings = make_kafka_settings()
    await ensure_topics(settings)
    trades = make_trades(SYMBOLS, 20)
    await produce(settings, trades)

    records = await read_topic(settings, settings.topic)
    assert len(records) == len(trades)
    landed = {(record.key, record.partition) for record in records}
    assert landed == {
        (key, kafka_default_partition(key, PARTITIONS))
        for key in {symbol.encode() for symbol in SYMBOLS}
    }
    # And where aiokafka's own `send()` with its default partitioner puts each key.
    plain = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await plain.start()
    try:
        for key, partition in landed:
            metadata = await plain.send_and_wait(settings.dlq_topic, b"probe", key=key)
            assert metadata.partition == partition, key
    finally:
        await plain.stop()


async def test_records_of_one_key_keep_their_order_in_their_partition(
    make_kafka_settings: Callable[..., KafkaSettings],
) -> None:
    # Small batches: each turn fills several per partition, which must follow one another.
    settings = make_kafka_settings(KAFKA__MAX_BATCH_SIZE="4096")
    await ensure_topics(settings)
    trades = make_trades(SYMBOLS[:6], 1_500)
    trades.sort(key=lambda t: (t.trade_id, t.symbol))  # interleaved, as from the exchange
    await produce(settings, trades)

    records = await read_topic(settings, settings.topic)
    assert len(records) == len(trades)
    published: dict[str, list[int]] = defaultdict(list)
    for trade in trades:
        published[trade.symbol].append(trade.trade_id)
    assert trade_ids_by_symbol(records) == published


async def test_dead_letters_reach_the_dlq_topic_with_their_headers_and_source_as_key(
    make_kafka_settings: Callable[..., KafkaSettings],
) -> None:
    # A dead letter bigger than a whole batch still goes out (alone in its batch).
    settings = make_kafka_settings(KAFKA__MAX_BATCH_SIZE="16384")
    await ensure_topics(settings)
    big = b"x" * 100_000
    producer = EventProducer(settings)
    async with running(producer):
        await producer.publish(make_trades(["BTCUSDT"], 1)[0])
        await producer.dead_letter(b"not json", "invalid JSON", "ws")
        await producer.dead_letter(big, "too big", "ws")
        assert await producer.drain(60)

    status = producer.status()
    assert (status.delivered, status.dead_letters) == (3, 2)
    records = await read_topic(settings, settings.dlq_topic)
    assert sorted(record.value for record in records) == sorted([b"not json", big])
    for record in records:
        headers = dict(record.headers)
        assert record.key == b"ws"
        assert headers["source"] == b"ws"
        assert headers["error"] in (b"invalid JSON", b"too big")


class FailFirstBatch:
    """`build_producer` whose first producer reports its first batch as failed (after Kafka
    has in fact stored it, as after a timeout): what a broken idempotence state looks like."""

    def __init__(self) -> None:
        self.producers: list[AIOKafkaProducer] = []
        self.build = producer_module.build_producer

    def __call__(self, settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
        producer = self.build(settings, **overrides)
        self.producers.append(producer)
        if len(self.producers) == 1:
            send_batch = producer.send_batch
            failed_one = False

            async def fail_first(batch: Any, topic: str, *, partition: int) -> Any:
                nonlocal failed_one
                delivered = await send_batch(batch, topic, partition=partition)
                if failed_one:
                    return delivered
                failed_one = True
                failure = asyncio.get_running_loop().create_future()
                delivered.add_done_callback(
                    lambda _: failure.set_exception(KafkaError("injected delivery failure"))
                )
                return failure

            producer.send_batch = fail_first
        return producer


async def test_a_failed_batch_is_delivered_again_by_a_new_producer_in_order(
    make_kafka_settings: Callable[..., KafkaSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_kafka_settings(KAFKA__MAX_BATCH_SIZE="4096")
    await ensure_topics(settings)
    factory = FailFirstBatch()
    monkeypatch.setattr(producer_module, "build_producer", factory)
    trades = make_trades(SYMBOLS[:6], 500)
    trades.sort(key=lambda t: (t.trade_id, t.symbol))
    producer = await produce(settings, trades)

    status = producer.status()
    assert len(factory.producers) == 2  # the first one was replaced
    assert status.delivery_failures > 0
    assert (status.delivered, status.queued, status.in_flight) == (len(trades), 0, 0)
    # Sent again means possibly stored twice (the sink is idempotent); nothing is missing, and
    # per key the first time each record appears follows the order it was published in.
    records = await read_topic(settings, settings.topic)
    published: dict[str, list[int]] = defaultdict(list)
    for trade in trades:
        published[trade.symbol].append(trade.trade_id)
    seen = {
        symbol: list(dict.fromkeys(ids)) for symbol, ids in trade_ids_by_symbol(records).items()
    }
    assert seen == published


async def test_a_replaced_producer_leaves_no_failure_for_asyncio_to_report(
    make_kafka_settings: Callable[..., KafkaSettings],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its batches are failed on purpose when it is dropped: asyncio must not log them as
    "Future exception was never retrieved" errors once they are garbage."""
    settings = make_kafka_settings(KAFKA__MAX_BATCH_SIZE="4096")
    await ensure_topics(settings)
    factory = FailFirstBatch()
    monkeypatch.setattr(producer_module, "build_producer", factory)
    await produce(settings, make_trades(SYMBOLS[:6], 500))
    assert len(factory.producers) == 2
    factory.producers.clear()  # the last reference to the replaced producer and its batches
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []

"""TradeTail reads the topic from its end without a group; SinkProgress reports the sink group's
committed offsets. Real broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from pipeline.core.settings import Settings
from pipeline.kafka.admin import ensure_topics
from pipeline.kafka.tail import SinkProgress, TailBatch, TradeTail
from tests.factories import make_trades

pytestmark = pytest.mark.integration


async def produce(settings: Settings, symbols: list[str], per_symbol: int, first_id: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for trade in make_trades(symbols, per_symbol, first_id=first_id):
            await producer.send(
                settings.kafka.topic, trade.to_kafka_value(), key=trade.symbol.encode()
            )
        await producer.flush()
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def tailing(tail: TradeTail) -> AsyncIterator[asyncio.Queue[TailBatch]]:
    batches: asyncio.Queue[TailBatch] = asyncio.Queue()

    async def read() -> None:
        async for batch in tail.batches():
            batches.put_nowait(batch)

    task = asyncio.create_task(read())
    try:
        yield batches
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_tail_starts_at_the_end_and_reads_what_comes_after_with_its_position(
    settings: Settings,
) -> None:
    await ensure_topics(settings.kafka)
    await produce(settings, ["BTCUSDT"], 20, first_id=1)  # before the tail: not its to read
    tail = TradeTail(settings.kafka, lambda key: key == b"BTCUSDT")
    async with tailing(tail) as batches:
        first = await asyncio.wait_for(batches.get(), 30)
        assert first.records == [] and not first.reset
        assert sum(first.positions.values()) == 20
        assert len(first.positions) == settings.kafka.partitions
        await produce(settings, ["BTCUSDT", "ETHUSDT"], 30, first_id=101)
        seen: list[int] = []
        positions = first.positions
        while len(seen) < 30:
            batch = await asyncio.wait_for(batches.get(), 30)
            seen += [record.row()[1] for record in batch.records]
            assert {record.key for record in batch.records} <= {b"BTCUSDT"}
            for record in batch.records:
                assert record.trade_id() == record.row()[1]
                assert batch.positions[record.partition] > record.offset
            positions = batch.positions
    assert seen == list(range(101, 131))  # one symbol's trades: one partition, in order
    await asyncio.sleep(0)
    # Every record read or skipped (ETHUSDT's) is behind the position.
    assert sum(positions.values()) >= 20 + 30


async def test_the_sink_progress_is_the_group_commits_and_zero_without_any(
    settings: Settings,
) -> None:
    await ensure_topics(settings.kafka)
    progress = SinkProgress(settings.kafka)
    partitions = list(range(settings.kafka.partitions))
    try:
        assert await progress.committed(partitions) == dict.fromkeys(partitions, 0)
        committer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            group_id=settings.kafka.group_id,
            enable_auto_commit=False,
        )
        await committer.start()
        try:
            tp = TopicPartition(settings.kafka.topic, 1)
            committer.assign([tp])
            await committer.commit({tp: OffsetAndMetadata(7, "")})
        finally:
            await committer.stop()
        assert await progress.committed(partitions) == {0: 0, 1: 7, 2: 0}
    finally:
        await progress.close()

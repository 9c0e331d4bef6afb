"""Direct access to a test's real services, beside the code under test: SQL on the test's own
database, and what its dead-letter topic holds."""

from __future__ import annotations

import time

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from pipeline.core.settings import Settings


async def execute_sql(settings: Settings, *statements: str) -> None:
    """Run each statement on the test's database, outside the pipeline's own connections."""
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def dead_letters(
    settings: Settings, count: int, timeout_s: float = 20
) -> list[ConsumerRecord]:
    """The records of the DLQ topic: once there are `count` (then a second more, so that an
    extra one shows), or all there are after `timeout_s`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        partitions = [
            TopicPartition(settings.kafka.dlq_topic, p) for p in range(settings.kafka.partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        for batch in (await consumer.getmany(timeout_ms=1000)).values():
            records.extend(batch)
    finally:
        await consumer.stop()
    return records

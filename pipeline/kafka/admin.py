"""Kafka administration the service needs: create its topics, and measure consumer lag."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    NotCoordinatorError,
    TopicAlreadyExistsError,
    for_code,
)

from pipeline.core.retry import Backoff
from pipeline.core.settings import KafkaSettings
from pipeline.kafka.client import start_within

logger = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 10.0
# Between asks for a group's offsets while its coordinator is not ready.
COORDINATOR_RETRY_S = (0.1, 1.0)
_COORDINATOR_NOT_READY = (
    CoordinatorNotAvailableError,
    CoordinatorLoadInProgressError,
    NotCoordinatorError,
)


def _admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=int(ADMIN_TIMEOUT_S * 1000),
    )


async def ensure_topics(settings: KafkaSettings) -> list[str]:
    """Create the trade and DLQ topics if missing (the broker never auto-creates); return created."""
    admin = _admin(settings)
    try:
        await start_within(admin.start(), ADMIN_TIMEOUT_S)
        existing = set(await admin.list_topics())
        wanted = [settings.topic, settings.dlq_topic]
        missing = [
            NewTopic(name, settings.partitions, settings.replication_factor)
            for name in wanted
            if name not in existing
        ]
        if not missing:
            return []
        response = await admin.create_topics(missing)
        for name, code, *_ in response.topic_errors:
            error = for_code(code)
            if code and error is not TopicAlreadyExistsError:
                raise error(f"cannot create topic {name}")
        created = [topic.name for topic in missing]
        logger.info("created kafka topics %s", created)
        return created
    finally:
        await admin.close()


@dataclass(frozen=True, slots=True)
class PartitionLag:
    partition: int
    committed: int | None
    end_offset: int
    lag: int


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    group: str
    topic: str
    total_lag: int
    partitions: list[PartitionLag]


async def consumer_lag(settings: KafkaSettings) -> ConsumerLag:
    """Committed offset vs end offset per partition of the topic, for the sink's group.

    A partition the group never committed counts its whole log as lag.
    """
    admin = _admin(settings)
    try:
        await start_within(admin.start(), ADMIN_TIMEOUT_S)
        described = await asyncio.wait_for(admin.describe_topics([settings.topic]), ADMIN_TIMEOUT_S)
        partitions = sorted(
            p["partition"]
            for topic in described
            if not topic["error_code"]
            for p in topic["partitions"]
        )
        # Group-less: reading end offsets must not join (and rebalance) the sink's group.
        reader = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=f"{settings.client_id}-lag",
            enable_auto_commit=False,
            request_timeout_ms=int(ADMIN_TIMEOUT_S * 1000),
        )
        try:
            await start_within(reader.start(), ADMIN_TIMEOUT_S)
            tps = [TopicPartition(settings.topic, p) for p in partitions]
            ends = await asyncio.wait_for(reader.end_offsets(tps), ADMIN_TIMEOUT_S)
            begins = await asyncio.wait_for(reader.beginning_offsets(tps), ADMIN_TIMEOUT_S)
        finally:
            await reader.stop()
        # The group coordinator is briefly unknown for a new group or while the broker starts.
        backoff = Backoff(*COORDINATOR_RETRY_S)
        give_up_at = time.monotonic() + ADMIN_TIMEOUT_S
        while True:
            try:
                committed = await asyncio.wait_for(
                    admin.list_consumer_group_offsets(settings.group_id, partitions=tps),
                    ADMIN_TIMEOUT_S,
                )
                break
            except _COORDINATOR_NOT_READY:
                if time.monotonic() >= give_up_at:
                    raise
                await backoff.pause()
    finally:
        await admin.close()
    rows = []
    for tp in tps:
        meta = committed.get(tp)
        offset = meta.offset if meta is not None and meta.offset >= 0 else None
        start = offset if offset is not None else begins[tp]
        rows.append(PartitionLag(tp.partition, offset, ends[tp], max(ends[tp] - start, 0)))
    return ConsumerLag(settings.group_id, settings.topic, sum(row.lag for row in rows), rows)

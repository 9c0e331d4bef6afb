"""aiokafka clients: how producers are built, and starting one so that cutting the start short
leaves no connection open."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from pipeline.core.settings import KafkaSettings
from pipeline.kafka import _aiokafka_compat

# Seconds to wait for one aiokafka call while the broker may be gone (aiokafka #1101, #759).
KAFKA_CALL_TIMEOUT_S = 10.0
# A broker that is up answers the bootstrap's metadata request within milliseconds.
BOOTSTRAP_GRACE_S = 1.0


async def start_within(start: Coroutine[Any, Any, object], timeout_s: float) -> None:
    """Await `start` (a client's start() or bootstrap()); TimeoutError if it takes too long.

    aiokafka leaks the bootstrap connection when it is cancelled while its first metadata
    request is in flight (aiokafka #715, `AIOKafkaClient.bootstrap`): the socket stays open
    until the event loop is gone, and garbage collection then warns. So `start` runs as a task
    of its own, and when `timeout_s` or a cancellation from above cuts it short it gets
    BOOTSTRAP_GRACE_S to finish before it is cancelled. A start that finishes within the grace
    after the timeout counts as started (slow, not failed: a retry must not start the same
    client twice). On any error the caller stops the client. A broker slower than the grace
    can still leave that one socket to the garbage collector.
    """
    starting = asyncio.ensure_future(start)
    try:
        await asyncio.wait({starting}, timeout=timeout_s)
    except asyncio.CancelledError:
        await _settle(starting)
        if not starting.cancelled():
            starting.exception()  # retrieved, so never logged: the cancellation is what counts
        raise
    if not starting.done():
        await _settle(starting)
        if starting.cancelled():
            raise TimeoutError(f"not started within {timeout_s + BOOTSTRAP_GRACE_S:g} s")
    starting.result()  # the start's own error, if it failed


async def _settle(starting: asyncio.Future[object]) -> None:
    """Give a start that was cut short the grace to finish; cancel it if it has not by then."""
    await asyncio.wait({starting}, timeout=BOOTSTRAP_GRACE_S)
    if not starting.done():
        starting.cancel()
        await asyncio.wait({starting})


class CachedPartitioner:
    """Kafka's default murmur2 key partitioner, computed once per (key, partition count).

    aiokafka's murmur2 is pure Python; with a handful of symbols the cache makes it free, and
    the partition a key lands on stays the same as with any other Kafka client.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        cache_key = (key, len(all_partitions))
        partition = self._cache.get(cache_key)
        if partition is None:
            partition = int(DefaultPartitioner()(key, all_partitions, available))
            self._cache[cache_key] = partition
        return partition


def build_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent aiokafka producer (idempotence implies acks=all) configured from settings."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "acks": "all",
        "enable_idempotence": True,
        # For per-record send() (the consumer's DLQ); EventProducer lingers itself (see
        # _send_forever) and hands aiokafka closed batches.
        "linger_ms": settings.linger_ms,
        "max_batch_size": settings.max_batch_size,
        "compression_type": None if settings.compression == "none" else settings.compression,
        "request_timeout_ms": settings.request_timeout_ms,
        "partitioner": CachedPartitioner(),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


async def discard_producer(producer: AIOKafkaProducer) -> None:
    """Stop a producer whose deliveries failed, without a flush: its batches would never be
    delivered. aiokafka's stop() flushes first, so its sender is stopped and its batches failed
    beforehand (aiokafka internals)."""
    sender_task = _aiokafka_compat.sender_task(producer)
    if sender_task is not None:
        sender_task.cancel()
        # Until it has ended: stop() would otherwise cancel and await it again, get its
        # CancelledError, and leave the connections open.
        await asyncio.wait({sender_task}, timeout=KAFKA_CALL_TIMEOUT_S)
    _aiokafka_compat.fail_all_batches(producer, KafkaError("producer replaced"))
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), KAFKA_CALL_TIMEOUT_S)

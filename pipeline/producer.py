"""EventProducer: validated trades and dead letters into Kafka, idempotently, with bounded memory.

The source hands events to `publish()`, which only enqueues; one sender task moves them into
aiokafka (acks=all, idempotence, linger/batch, compression). Memory is bounded twice: the queue
(`queue_size`) and the records handed to aiokafka but not yet acknowledged (the same bound).
When Kafka is down, both fill up and `publish()` waits, which holds the source back. A record
whose delivery fails is sent again; duplicates cost nothing because the sink is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from pipeline import metrics
from pipeline.models import TradeEvent
from pipeline.settings import KafkaSettings

logger = logging.getLogger(__name__)

# Seconds to wait for one aiokafka call while the broker may be gone (aiokafka #1101, #759).
KAFKA_CALL_TIMEOUT_S = 10.0
RETRY_BACKOFF_S = (0.2, 5.0)
# A dead letter's value at most; an input frame may be up to binance.max_frame_bytes (1 MiB).
DEAD_LETTER_MAX_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class _Record:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    # Labels the delivered-counter; empty for dead letters.
    symbol: str = ""


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
        "linger_ms": settings.linger_ms,
        "max_batch_size": settings.max_batch_size,
        "compression_type": None if settings.compression == "none" else settings.compression,
        "request_timeout_ms": settings.request_timeout_ms,
        "partitioner": CachedPartitioner(),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def dead_letter_record(
    settings: KafkaSettings, raw: bytes, reason: str, source: str
) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    """Topic, value and headers of a DLQ record: the raw input, why it failed, where it came from."""
    if len(raw) > DEAD_LETTER_MAX_BYTES:
        # Kafka refuses a record over max_request_size for good, and a refused dead letter
        # would hold up every record behind it: keep the start of the input, and say so.
        reason = f"{reason} [first {DEAD_LETTER_MAX_BYTES} of {len(raw)} bytes kept]"
        raw = raw[:DEAD_LETTER_MAX_BYTES]
    headers = [("error", reason.encode("utf-8", "replace")), ("source", source.encode())]
    return settings.dlq_topic, raw, headers


@dataclass(frozen=True, slots=True)
class ProducerStatus:
    kafka_up: bool
    queued: int
    in_flight: int
    delivered: int
    dead_letters: int
    delivery_failures: int
    last_error: str | None


class EventProducer:
    """Implements the source's TradePublisher: `publish()` and `dead_letter()`, then `run()`.

    One budget of `queue_size` records covers everything accepted and not yet acknowledged by
    Kafka (waiting here or inside aiokafka); `publish()` waits for room in it.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._budget = asyncio.Semaphore(settings.queue_size)
        self._pending: deque[_Record] = deque()
        self._has_pending = asyncio.Event()
        self._unacked = 0
        # Records inside the current aiokafka producer, by their delivery future.
        self._in_flight: dict[asyncio.Future[Any], _Record] = {}
        # A delivery failed: the aiokafka producer must be replaced (see run()).
        self._broken = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._kafka_up = False
        self._delivered = 0
        self._dead_letters = 0
        self._failures = 0
        self._last_error: str | None = None

    async def publish(self, event: TradeEvent) -> None:
        """Accept a valid trade; waits while the budget is used up (backpressure on the source)."""
        await self._accept(
            _Record(
                self._settings.topic,
                event.symbol.encode(),
                event.to_kafka_value(),
                symbol=event.symbol,
            )
        )

    async def dead_letter(self, raw: bytes, reason: str, source: str) -> None:
        """Accept an invalid input for the DLQ topic, with its reason."""
        topic, value, headers = dead_letter_record(self._settings, raw, reason, source)
        metrics.TRADES_REJECTED.labels(source).inc()
        await self._accept(_Record(topic, source.encode(), value, tuple(headers)))

    async def _accept(self, record: _Record) -> None:
        await self._budget.acquire()
        self._unacked += 1
        self._drained.clear()
        self._pending.append(record)
        self._has_pending.set()

    def status(self) -> ProducerStatus:
        return ProducerStatus(
            kafka_up=self._kafka_up,
            queued=len(self._pending),
            in_flight=self._unacked - len(self._pending),
            delivered=self._delivered,
            dead_letters=self._dead_letters,
            delivery_failures=self._failures,
            last_error=self._last_error,
        )

    async def run(self) -> None:
        """Connect (retrying while Kafka is down) and send until cancelled; then close, bounded.

        A failed delivery means the aiokafka producer's idempotence state no longer matches the
        broker's: a batch that expired while its partition had no leader (a broker outage longer
        than request_timeout_ms) used up sequence numbers, and every later batch would fail with
        OutOfOrderSequenceNumber, forever (aiokafka #1017). So that producer is replaced by a new
        one (a new producer id) and everything it held is sent again.
        """
        while True:
            producer = build_producer(self._settings)
            try:
                await self._start(producer)
                await self._send_forever(producer)  # returns when a delivery failed
            except BaseException:
                await self._close(producer)
                raise
            await self._replace(producer)

    async def _start(self, producer: AIOKafkaProducer) -> None:
        delay = RETRY_BACKOFF_S[0]
        while True:
            try:
                await asyncio.wait_for(producer.start(), KAFKA_CALL_TIMEOUT_S)
            except (KafkaError, OSError, TimeoutError) as exc:
                self._mark_down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_BACKOFF_S[1])
            else:
                self._mark_up()
                return

    async def _send_forever(self, producer: AIOKafkaProducer) -> None:
        while not self._broken:
            if not self._pending:
                self._has_pending.clear()
                await self._has_pending.wait()
                continue
            metrics.PRODUCER_QUEUE.set(len(self._pending))
            await self._send(producer, self._pending.popleft())

    async def _send(self, producer: AIOKafkaProducer, record: _Record) -> None:
        delay = RETRY_BACKOFF_S[0]
        while True:
            try:
                # asyncio.timeout, not wait_for: this runs per record, and wait_for wraps each
                # call in a new Task (measured as a large share of the producer's cost).
                async with asyncio.timeout(KAFKA_CALL_TIMEOUT_S):
                    future = await producer.send(
                        record.topic, record.value, key=record.key, headers=list(record.headers)
                    )
            except (KafkaError, TimeoutError) as exc:
                # The accumulator is full or metadata is unavailable: Kafka is not taking data.
                self._mark_down(exc)
                if self._broken:
                    self._pending.appendleft(record)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_BACKOFF_S[1])
                continue
            self._in_flight[future] = record
            future.add_done_callback(self._on_delivery)
            return

    def _on_delivery(self, future: asyncio.Future[Any]) -> None:
        record = self._in_flight.pop(future, None)
        if record is None:
            return  # held by a replaced producer: already queued again
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            # Send it again; it keeps its place in the budget until Kafka acknowledges it.
            self._failures += 1
            self._mark_down(error or asyncio.CancelledError())
            self._pending.append(record)
            self._broken = True
            self._has_pending.set()
            return
        self._mark_up()
        self._delivered += 1
        if record.symbol:
            metrics.TRADES_PRODUCED.labels(record.symbol).inc()
        else:
            self._dead_letters += 1
            metrics.DLQ_PRODUCED.labels(record.key.decode()).inc()
        self._unacked -= 1
        self._budget.release()
        if self._unacked == 0:
            self._drained.set()

    def _mark_up(self) -> None:
        if not self._kafka_up:
            logger.info("kafka reachable at %s", self._settings.bootstrap_servers)
        self._kafka_up = True
        metrics.KAFKA_UP.set(1)

    def _mark_down(self, error: BaseException) -> None:
        self._last_error = f"{type(error).__name__}: {error}"
        if self._kafka_up or self._failures <= 1:
            logger.warning("kafka unavailable, holding events: %s", self._last_error)
        self._kafka_up = False
        metrics.KAFKA_UP.set(0)

    async def drain(self, timeout: float) -> bool:
        """Wait until every accepted record is acknowledged; False if the timeout ran out."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _replace(self, producer: AIOKafkaProducer) -> None:
        """Drop a producer whose deliveries fail; queue what it held again, oldest first."""
        held = list(self._in_flight.values())
        self._in_flight.clear()
        self._pending.extendleft(reversed(held))
        self._broken = False
        self._has_pending.set()
        logger.warning(
            "replacing the kafka producer after a failed delivery (%s); %d in flight sent again",
            self._last_error,
            len(held),
        )
        # No flush: its batches would never be delivered. aiokafka's stop() flushes first, so
        # its sender is stopped and its batches failed beforehand (private API, aiokafka 0.14).
        sender_task = producer._sender.sender_task if producer._sender is not None else None
        if sender_task is not None:
            sender_task.cancel()
        producer._message_accumulator.fail_all(KafkaError("producer replaced"))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), KAFKA_CALL_TIMEOUT_S)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        # aiokafka's stop() flushes, and can hang while the broker is gone: bound it.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), KAFKA_CALL_TIMEOUT_S)
        if self._unacked:
            # Not lost for good: after the restart the source backfills them by trade id.
            logger.warning("producer stopped with %d records unacknowledged", self._unacked)

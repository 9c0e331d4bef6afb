"""EventProducer: validated trades and dead letters into Kafka, idempotently, with bounded memory.

The source hands events to `publish()`, which only enqueues; one sender task hands them to
aiokafka (acks=all, idempotence, compression) in batches it builds itself: each turn, whatever
is pending goes out as one batch per partition (more where one reaches max_batch_size), so that
aiokafka's costly per-record `send()` is not on the path. Memory is bounded by one budget,
`queue_size`, of records accepted and not yet acknowledged, queued here or inside aiokafka.
When Kafka is down it fills up and `publish()` waits, which holds the source back. A batch
whose delivery fails is sent again; duplicates cost nothing because the sink is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client import Counter as MetricCounter

from pipeline.core import metrics
from pipeline.core.retry import Backoff
from pipeline.core.settings import KafkaSettings
from pipeline.core.status import ProducerStatus
from pipeline.core.trades import TradeEvent
from pipeline.kafka.client import (
    KAFKA_CALL_TIMEOUT_S,
    CachedPartitioner,
    build_producer,
    discard_producer,
    start_within,
)
from pipeline.kafka.dead_letters import dead_letter_record
from pipeline.kafka.outage import is_outage

logger = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.2, 5.0)
# A turn that finds this many records pending sends them at once, without lingering.
LINGER_UNLESS_RECORDS = 1000


# Not frozen: one is built per trade, and a frozen dataclass's __init__ costs twice as much.
@dataclass(slots=True)
class _Record:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    # Labels the delivered-counter; empty for dead letters.
    symbol: str = ""


# What the delivered-counters are labelled by: a trade's symbol, or a dead letter's source (key).
_SYMBOL = attrgetter("symbol")


@dataclass(slots=True)
class _Batch:
    """Records for one topic partition, in the order accepted, and the aiokafka batch they fill."""

    topic: str
    partition: int
    builder: BatchBuilder
    records: list[_Record] = field(default_factory=list)

    def append(self, record: _Record) -> bool:
        """Add the record; False if the batch is full (it is then closed for good)."""
        added = self.builder.append(
            timestamp=None, key=record.key, value=record.value, headers=list(record.headers)
        )
        if added is None:
            return False
        self.records.append(record)
        return True


class EventProducer:
    """Implements the source's TradePublisher: `publish()` and `dead_letter()`, then `run()`.

    One budget of `queue_size` records covers everything accepted and not yet acknowledged by
    Kafka (waiting here or inside aiokafka); `publish()` waits for room in it.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        # The budget: room for this many more records. A counter and an event rather than a
        # semaphore, so that taking room and giving a whole batch's back cost no await each.
        self._room = settings.queue_size
        self._room_freed = asyncio.Event()
        self._pending: deque[_Record] = deque()
        self._has_pending = asyncio.Event()
        self._unacked = 0
        # Batches inside the current aiokafka producer, by their delivery future, oldest first.
        self._in_flight: dict[asyncio.Future[Any], _Batch] = {}
        self._partitioner = CachedPartitioner()
        self._produced_counters: dict[str, MetricCounter] = {}
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
        if self._room <= 0:
            await self._wait_for_room()
        self._accept(
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
        if self._room <= 0:
            await self._wait_for_room()
        self._accept(_Record(topic, source.encode(), value, tuple(headers)))

    async def _wait_for_room(self) -> None:
        while self._room <= 0:
            self._room_freed.clear()
            await self._room_freed.wait()

    def _accept(self, record: _Record) -> None:
        self._room -= 1
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
        backoff = Backoff(*RETRY_BACKOFF_S)
        while True:
            try:
                await start_within(producer.start(), KAFKA_CALL_TIMEOUT_S)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._mark_down(exc)
                await backoff.pause()
            else:
                self._mark_up()
                return

    async def _send_forever(self, producer: AIOKafkaProducer) -> None:
        backoff = Backoff(*RETRY_BACKOFF_S)
        while not self._broken:
            if not self._pending:
                self._has_pending.clear()
                await self._has_pending.wait()
                continue
            if len(self._pending) < LINGER_UNLESS_RECORDS:
                # Kafka's linger, done here since we close our own batches: a few ms for more
                # records to join, so a trickle is not sent as one request per record. Under
                # load a turn finds plenty pending and nobody waits.
                await asyncio.sleep(self._settings.linger_ms / 1000)
            metrics.PRODUCER_QUEUE.set(len(self._pending))
            try:
                await self._send_pending(producer)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                # Metadata is unavailable or the accumulator stayed full: Kafka is not taking
                # data. What was not handed over is back in `_pending`; try again later.
                self._mark_down(exc)
                if not self._broken:
                    await backoff.pause()
            else:
                backoff.reset()

    async def _send_pending(self, producer: AIOKafkaProducer) -> None:
        """Hand everything pending to aiokafka: a batch per partition, more where one fills up.

        A batch leaves `batches` only once aiokafka has taken it; if sending stops early (Kafka
        not taking data, a failed delivery, cancellation), the rest goes back to `_pending`.
        """
        partitions = await self._partitions(producer)
        batches = self._take_pending(producer, partitions)
        try:
            while batches and not self._broken:
                await self._send_batch(producer, batches[0])
                batches.popleft()
        finally:
            unsent = [record for batch in batches for record in batch.records]
            self._pending.extendleft(reversed(unsent))

    async def _partitions(self, producer: AIOKafkaProducer) -> dict[str, list[int]]:
        """The partition ids of each topic pending, from the producer's cluster metadata.

        Sorted: Kafka's default partitioner picks `partitions[murmur2(key) % count]`, which is
        partition number `murmur2(key) % count` only when the list is in order.
        """
        partitions: dict[str, list[int]] = {}
        for topic in {record.topic for record in self._pending}:
            # Returns at once while the metadata is known; it waits for it otherwise.
            async with asyncio.timeout(KAFKA_CALL_TIMEOUT_S):
                partitions[topic] = sorted(await producer.partitions_for(topic))
        return partitions

    def _take_pending(
        self, producer: AIOKafkaProducer, partitions: dict[str, list[int]]
    ) -> deque[_Batch]:
        """Move the pending records into batches, each for one (topic, partition).

        Records keep the order they were accepted in within their partition: a batch that is
        full is closed and the next record of its partition starts a batch after it.
        """
        batches: deque[_Batch] = deque()
        filling: dict[tuple[str, int], _Batch] = {}
        pending = self._pending
        while pending:
            record = pending[0]
            topic_partitions = partitions.get(record.topic)
            if topic_partitions is None:
                break  # published while the partitions were looked up: next turn
            # Every record has a key, so the partitioner never needs the available partitions.
            target = (record.topic, self._partitioner(record.key, topic_partitions, []))
            batch = filling.get(target)
            if batch is None or not batch.append(record):
                batch = _Batch(*target, producer.create_batch())
                batch.append(record)  # an empty batch takes a record of any size
                filling[target] = batch
                batches.append(batch)
            pending.popleft()
        return batches

    async def _send_batch(self, producer: AIOKafkaProducer, batch: _Batch) -> None:
        # Closed, it goes out as soon as its partition has no request in flight: an open one
        # would linger `linger_ms` in aiokafka, and the next batch of its partition would wait
        # for that here, holding up every other partition's records too.
        batch.builder.close()
        # aiokafka waits while the previous batch of this partition is still queued (at most
        # one per partition waits there): that is where a slow or absent Kafka holds us back.
        async with asyncio.timeout(KAFKA_CALL_TIMEOUT_S):
            future = await producer.send_batch(
                batch.builder, batch.topic, partition=batch.partition
            )
        self._in_flight[future] = batch
        future.add_done_callback(self._on_delivery)

    def _on_delivery(self, future: asyncio.Future[Any]) -> None:
        error = None if future.cancelled() else future.exception()  # retrieved, so never logged
        batch = self._in_flight.get(future)
        if batch is None:
            return  # held by a replaced producer: already queued again
        if future.cancelled() or error is not None:
            # It stays in `_in_flight`, and in the budget: `_replace()` queues it again with
            # the rest this producer holds, oldest first.
            self._failures += len(batch.records)
            self._mark_down(error or asyncio.CancelledError())
            self._broken = True
            self._has_pending.set()  # wakes the sender, which then replaces the producer
            return
        del self._in_flight[future]
        self._mark_up()
        self._count_delivered(batch.records)
        self._room += len(batch.records)
        self._room_freed.set()
        self._unacked -= len(batch.records)
        if self._unacked == 0:
            self._drained.set()

    def _count_delivered(self, records: list[_Record]) -> None:
        """Per acknowledged batch: one metric increment per symbol (or DLQ source), not per record."""
        self._delivered += len(records)
        by_symbol = Counter(map(_SYMBOL, records))
        dead_letters = by_symbol.pop("", 0)
        for symbol, count in by_symbol.items():
            self._produced_counter(symbol).inc(count)
        if dead_letters:
            self._dead_letters += dead_letters
            sources = Counter(record.key for record in records if not record.symbol)
            for source, count in sources.items():
                metrics.DLQ_PRODUCED.labels(source.decode()).inc(count)

    def _produced_counter(self, symbol: str) -> MetricCounter:
        # labels() takes a lock and builds a key on every call: look each child up once.
        counter = self._produced_counters.get(symbol)
        if counter is None:
            counter = self._produced_counters[symbol] = metrics.TRADES_PRODUCED.labels(symbol)
        return counter

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
        # In the order sent: a partition's batches keep their order, failed or not.
        held = [record for batch in self._in_flight.values() for record in batch.records]
        self._in_flight.clear()
        self._pending.extendleft(reversed(held))
        self._broken = False
        self._has_pending.set()
        logger.warning(
            "replacing the kafka producer after a failed delivery (%s); %d in flight sent again",
            self._last_error,
            len(held),
        )
        await discard_producer(producer)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        # aiokafka's stop() flushes, and can hang while the broker is gone: bound it.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), KAFKA_CALL_TIMEOUT_S)
        if self._unacked:
            # Not lost for good: after the restart the source backfills them by trade id.
            logger.warning("producer stopped with %d records unacknowledged", self._unacked)

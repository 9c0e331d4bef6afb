"""The trade topic read live by one process for its push-feed clients, and how far the sink got.

TradeTail: a consumer without a group (group_id None). It joins no group, commits nothing and
assigns itself every partition, so any number of API processes tail the topic side by side
without touching the sink's group or each other. It starts at the end of every partition (what
was there before is the table's to serve) and yields batches of records together with the
position reached in every partition: the next offset it will read there. A reader that takes
each batch in full before asking for the next knows exactly which records it has seen. A record
is decoded (`row()`, records.py's decoder) only when the reader needs the trade: a reader that
samples a symbol looks at one record of it per interval, not at all of them.

Kafka going away and coming back loses nothing: aiokafka reconnects by itself, and when the
consumer has to be rebuilt it resumes at the positions the tail reached. Only a position that
is no longer in the log (retention removed it meanwhile) makes the tail start over at the end;
that batch says so (`reset`), and whatever lay in between was never delivered.

SinkProgress: the sink's committed offsets (its consumer group's), read with an admin client.
The sink commits a batch only after PostgreSQL committed it, so a committed offset c means every
record of that partition below c is in the table: where the table's answers end and the tail's
begin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    NotCoordinatorError,
    OffsetOutOfRangeError,
)

from pipeline.core.retry import Backoff
from pipeline.core.settings import KafkaSettings
from pipeline.core.trades import Row
from pipeline.kafka.client import KAFKA_CALL_TIMEOUT_S, start_within
from pipeline.kafka.outage import is_outage
from pipeline.kafka.records import row_from_kafka

logger = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.2, 5.0)
COORDINATOR_RETRY_S = (0.1, 1.0)
_COORDINATOR_NOT_READY = (
    CoordinatorNotAvailableError,
    CoordinatorLoadInProgressError,
    NotCoordinatorError,
)
POLL_TIMEOUT_MS = 500
MAX_RECORDS = 2_000

_TRADE_ID_FIELD = b'"trade_id":'
# Which records to decode, by their key (the symbol); the others are skipped but counted as read.
KeyFilter = Callable[[bytes | None], bool]


def _every_key(key: bytes | None) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class TailRecord:
    partition: int
    offset: int
    timestamp_ms: int  # the record's timestamp (the producer's send time)
    key: bytes | None  # the symbol
    value: bytes | None

    def row(self) -> Row:
        """The trade; InvalidTrade for a record that is not one (the sink dead-letters it)."""
        return row_from_kafka(self.value)

    def trade_id(self) -> int | None:
        """The trade id, read from the value without decoding the rest (a tenth of row()'s
        cost), to tell the newest of many records apart; None where it cannot be read, and
        only row() says whether the record is a trade."""
        value = self.value
        if value is None:
            return None
        start = value.find(_TRADE_ID_FIELD)
        if start < 0:
            return None
        start += len(_TRADE_ID_FIELD)
        end = start
        while end < len(value) and 48 <= value[end] <= 57:  # ASCII digits
            end += 1
        return int(value[start:end]) if end > start else None


@dataclass(frozen=True, slots=True)
class TailBatch:
    """Trades read, in partition order, and then the next offset to read in every partition.

    The first batch after a (re)start has no records: it carries the starting positions.
    `reset`: the positions started over at the end of the log; records between the previous
    batch's positions and these were not read.
    """

    records: list[TailRecord]
    positions: dict[int, int]
    reset: bool = False
    skipped: int = field(default=0)  # records whose key was not wanted


class TopicMissing(Exception):
    """The topic does not exist (yet): nothing has produced to it."""


class TradeTail:
    def __init__(
        self,
        settings: KafkaSettings,
        wanted: KeyFilter = _every_key,
        max_records: int = MAX_RECORDS,
    ) -> None:
        self._settings = settings
        self._wanted = wanted
        self._max_records = max_records
        self._positions: dict[int, int] = {}

    async def batches(self) -> AsyncIterator[TailBatch]:
        """Batches until the caller stops iterating (or cancels). Outages are waited out."""
        backoff = Backoff(*RETRY_BACKOFF_S)
        reported: str | None = None
        reset = False
        while True:
            consumer: AIOKafkaConsumer | None = None
            try:
                consumer, reset_now = await self._start()
                reset = reset or reset_now
                backoff.reset()
                if reported is not None:
                    logger.info("stream feed reading %s again", self._settings.topic)
                    reported = None
                yield TailBatch([], dict(self._positions), reset)
                reset = False
                while True:
                    yield await self._next(consumer)
            except OffsetOutOfRangeError as exc:
                logger.warning(
                    "stream feed position gone from the log, starting at the end: %s", exc
                )
                self._positions.clear()
                reset = True
            except Exception as exc:
                if not (isinstance(exc, TopicMissing) or is_outage(exc)):
                    raise
                reason = f"{type(exc).__name__}: {exc}"
                if reported is None:
                    logger.warning(
                        "stream feed cannot read %s, retrying: %s", self._settings.topic, reason
                    )
                reported = reason
            finally:
                if consumer is not None:
                    await _stop(consumer)
            await backoff.pause()

    async def _start(self) -> tuple[AIOKafkaConsumer, bool]:
        """A consumer at the tail's positions (at the end of the log the first time); and
        whether the positions started over (a partition the tail had no position for)."""
        partitions = await topic_partitions(self._settings)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=f"{self._settings.client_id}-tail",
            group_id=None,
            enable_auto_commit=False,
            # A position that fell out of the log must not be skipped silently: a gap.
            auto_offset_reset="none",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            request_timeout_ms=int(KAFKA_CALL_TIMEOUT_S * 1000),
        )
        try:
            await start_within(consumer.start(), KAFKA_CALL_TIMEOUT_S)
            tps = [TopicPartition(self._settings.topic, p) for p in partitions]
            consumer.assign(tps)
            new = [tp for tp in tps if tp.partition not in self._positions]
            reset = bool(self._positions) and bool(new)
            if new:
                await asyncio.wait_for(consumer.seek_to_end(*new), KAFKA_CALL_TIMEOUT_S)
            for tp in tps:
                if tp.partition in self._positions:
                    consumer.seek(tp, self._positions[tp.partition])
                else:
                    self._positions[tp.partition] = await asyncio.wait_for(
                        consumer.position(tp), KAFKA_CALL_TIMEOUT_S
                    )
        except BaseException:
            await _stop(consumer)
            raise
        return consumer, reset

    async def _next(self, consumer: AIOKafkaConsumer) -> TailBatch:
        fetched: dict[TopicPartition, list[ConsumerRecord]]
        while not (
            fetched := await consumer.getmany(
                timeout_ms=POLL_TIMEOUT_MS, max_records=self._max_records
            )
        ):
            pass
        records: list[TailRecord] = []
        skipped = 0
        wanted = self._wanted
        for tp, batch in fetched.items():
            partition = tp.partition
            for record in batch:
                if not wanted(record.key):
                    skipped += 1
                    continue
                records.append(
                    TailRecord(partition, record.offset, record.timestamp, record.key, record.value)
                )
            if batch:
                self._positions[partition] = batch[-1].offset + 1
        return TailBatch(records, dict(self._positions), skipped=skipped)


async def topic_partitions(settings: KafkaSettings) -> list[int]:
    """The topic's partitions; TopicMissing when it does not exist."""
    admin = _admin(settings)
    try:
        await start_within(admin.start(), KAFKA_CALL_TIMEOUT_S)
        described = await asyncio.wait_for(
            admin.describe_topics([settings.topic]), KAFKA_CALL_TIMEOUT_S
        )
    finally:
        await admin.close()
    partitions = sorted(
        p["partition"]
        for topic in described
        if not topic["error_code"]
        for p in topic["partitions"]
    )
    if not partitions:
        raise TopicMissing(f"topic {settings.topic} does not exist yet")
    return partitions


class SinkProgress:
    """The sink group's committed offsets: everything below them is in the table."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._admin: AIOKafkaAdminClient | None = None
        self.read_at = 0.0  # monotonic time of the last successful read

    async def committed(self, partitions: list[int]) -> dict[int, int]:
        """Committed offset per partition (0 where the group has committed nothing)."""
        if self._admin is None:
            admin = _admin(self._settings)
            try:
                await start_within(admin.start(), KAFKA_CALL_TIMEOUT_S)
            except BaseException:
                await admin.close()
                raise
            self._admin = admin
        tps = [TopicPartition(self._settings.topic, p) for p in partitions]
        # The group's coordinator is briefly unknown for a new group or while the broker starts.
        backoff = Backoff(*COORDINATOR_RETRY_S)
        give_up_at = time.monotonic() + KAFKA_CALL_TIMEOUT_S
        while True:
            try:
                offsets = await asyncio.wait_for(
                    self._admin.list_consumer_group_offsets(
                        self._settings.group_id, partitions=tps
                    ),
                    KAFKA_CALL_TIMEOUT_S,
                )
                break
            except _COORDINATOR_NOT_READY:
                if time.monotonic() >= give_up_at:
                    raise
                await backoff.pause()
            except BaseException:
                await self.close()  # a fresh client next time: its connection may be gone
                raise
        self.read_at = time.monotonic()
        result = dict.fromkeys(partitions, 0)
        for tp, meta in offsets.items():
            if meta is not None and meta.offset >= 0:
                result[tp.partition] = meta.offset
        return result

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                await asyncio.wait_for(admin.close(), KAFKA_CALL_TIMEOUT_S)
            except Exception as exc:
                if not is_outage(exc):
                    raise


def _admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-tail-admin",
        request_timeout_ms=int(KAFKA_CALL_TIMEOUT_S * 1000),
    )


async def _stop(consumer: AIOKafkaConsumer) -> None:
    try:
        await asyncio.wait_for(consumer.stop(), KAFKA_CALL_TIMEOUT_S)
    except Exception as exc:
        if not is_outage(exc):
            raise
        logger.warning("stream feed consumer did not stop cleanly: %s", exc)

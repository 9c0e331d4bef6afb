"""TradeConsumer: Kafka → a TradeSink (PostgreSQL), committing offsets only after the database committed.

The checkpoint order is the whole guarantee: (1) the batch's transaction commits in PostgreSQL,
(2) then the batch's offsets commit in Kafka. A crash between the two replays the batch, and the
idempotent sink turns the replay into no new rows. While PostgreSQL is down the batch is retried
with backoff and nothing is committed. A record that is not a trade goes to the DLQ first, so
committing past it loses nothing.

Batches are written one after the other and their offsets committed in the same order. Three
steps of consecutive batches overlap: while batch N is written, N+1 is fetched and decoded (our
CPU and PostgreSQL's at once), and while N+1 is written, N's offsets are committed (a round trip
to the group coordinator, kept off the critical path).

No single record can stop the consumer. A record PostgreSQL refuses for good (a value beyond
what the table stores, a constraint) is isolated (`isolation.store_isolating`: the rest of its
batch is stored) and dead-lettered with the database's reason, and the offsets move on only
once the rows are stored and the dead letters acknowledged. A database that refuses every write
(read-only after a failover, a revoked privilege) is retried with backoff like an outage, and so
is a DLQ that cannot be reached; both show in `status()` (and so in /ready) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError

from pipeline.core import metrics
from pipeline.core.errors import InvalidTrade, RowsRejected, SinkUnavailable
from pipeline.core.ports import TradeSink
from pipeline.core.retry import Backoff
from pipeline.core.settings import KafkaSettings
from pipeline.core.status import ConsumerStatus
from pipeline.core.trade_checks import DEFAULT_MAX_CLOCK_SKEW_MS, now_ms
from pipeline.core.trades import Row
from pipeline.kafka.client import (
    KAFKA_CALL_TIMEOUT_S,
    build_producer,
    discard_producer,
    start_within,
)
from pipeline.kafka.dead_letters import dead_letter_record
from pipeline.kafka.isolation import store_isolating
from pipeline.kafka.outage import is_outage
from pipeline.kafka.records import row_from_kafka

logger = logging.getLogger(__name__)

SINK_RETRY_BACKOFF_S = (0.2, 5.0)
KAFKA_RETRY_BACKOFF_S = (0.2, 5.0)
# A rebalance waits this long for the batches in hand to be stored and committed.
REVOKE_WAIT_S = 30.0
# Batches in hand at once: one whose offsets are being committed, one being written.
IN_HAND = 2
# The DLQ's `source` header of a record that is not a trade, and of one PostgreSQL refused.
DECODE_SOURCE = "kafka"
SINK_SOURCE = "sink"

# A record for the DLQ: its key, its value as read, why it is a dead letter.
_Letter = tuple[bytes | None, bytes, str]
# The same as sent: key, topic, value, headers.
_Outgoing = tuple[bytes | None, str, bytes, list[tuple[str, bytes]]]


@dataclass(slots=True)
class _Decoded:
    """A batch as it waits to be stored: its rows, each row's record value (the DLQ's, should
    PostgreSQL refuse the row), its poison records (for the DLQ, with the reason) and, per
    partition, the offset to commit after it."""

    rows: list[Row]
    values: list[bytes]
    poison: list[_Letter]
    offsets: dict[TopicPartition, int]


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets a rebalance happen only between batches, after the batches in hand are committed."""

    def __init__(self, in_hand: asyncio.Semaphore) -> None:
        self._in_hand = in_hand

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Every slot taken = no batch in hand; the semaphore is FIFO, so no new batch cuts in.
        taken = 0
        try:
            async with asyncio.timeout(REVOKE_WAIT_S):
                while taken < IN_HAND:
                    await self._in_hand.acquire()
                    taken += 1
        except TimeoutError:
            # The batches will be re-read by the next owner; the idempotent sink absorbs them.
            logger.warning("rebalance did not wait for the batches in hand (database slow or down)")
        finally:
            for _ in range(taken):
                self._in_hand.release()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        logger.info("assigned partitions %s", sorted(tp.partition for tp in assigned))


class TradeConsumer:
    def __init__(
        self,
        settings: KafkaSettings,
        sink: TradeSink,
        max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
    ) -> None:
        self._settings = settings
        self._sink = sink
        self._max_clock_skew_ms = max_clock_skew_ms  # binance.max_clock_skew_s
        self._in_hand = asyncio.Semaphore(IN_HAND)
        self._written = asyncio.Event()  # the newest batch handed over is in the database
        self._consumer: AIOKafkaConsumer | None = None
        self._dlq: AIOKafkaProducer | None = None
        self._consumed = 0
        self._stored = 0
        self._dead_letters = 0
        self._rejected = 0
        self._batches = 0
        self._sink_up = True
        self._dlq_up = True
        self._last_error: str | None = None
        self._last_commit_at: float | None = None

    def status(self) -> ConsumerStatus:
        assigned = (
            tuple(sorted(tp.partition for tp in self._consumer.assignment()))
            if self._consumer
            else ()
        )
        return ConsumerStatus(
            assigned=assigned,
            consumed=self._consumed,
            stored=self._stored,
            duplicates=self._consumed - self._stored - self._dead_letters,
            dead_letters=self._dead_letters,
            batches=self._batches,
            sink_up=self._sink_up,
            last_error=self._last_error,
            last_commit_at=self._last_commit_at,
            rejected=self._rejected,
            dlq_up=self._dlq_up,
        )

    async def run(self) -> None:
        """Consume until cancelled. Cancellation between batches loses nothing."""
        consumer = await self._start()
        in_hand: list[asyncio.Task[None]] = []  # oldest first, at most IN_HAND
        try:
            self._consumer = consumer
            while True:
                in_hand = _without_done(in_hand)  # a failed batch fails the role now
                decoded = await self._poll(consumer)
                if decoded is None:
                    continue
                if in_hand:
                    await self._written.wait()  # batch N is in the database before N+1 is written
                    in_hand = _without_done(in_hand)
                # Held until its offsets are committed: a rebalance waits for it.
                await self._in_hand.acquire()
                self._written.clear()
                previous = in_hand[-1] if in_hand else None
                in_hand.append(
                    asyncio.create_task(self._store_and_commit(consumer, decoded, previous))
                )
        finally:
            for task in in_hand:
                # Transactions roll back and offsets stay uncommitted: replayed later.
                task.cancel()
            await asyncio.gather(*in_hand, return_exceptions=True)
            self._consumer = None
            await self._close(consumer)

    def _build(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=f"{self._settings.client_id}-consumer",
            group_id=self._settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
        )
        consumer.subscribe([self._settings.topic], listener=_CommitOnRevoke(self._in_hand))
        return consumer

    async def _start(self) -> AIOKafkaConsumer:
        # A fresh consumer per attempt: start() also waits for the group's first assignment
        # (after a crash, up to the dead member's session timeout), and a consumer whose start()
        # timed out cannot be started again (aiokafka: "Did you call `start` twice?").
        backoff = Backoff(*KAFKA_RETRY_BACKOFF_S)
        while True:
            consumer = self._build()
            try:
                await start_within(consumer.start(), KAFKA_CALL_TIMEOUT_S)
                return consumer
            except BaseException as exc:
                await self._close(consumer)
                if not is_outage(exc):
                    raise
                self._last_error = f"kafka: {type(exc).__name__}: {exc}"
                logger.warning("consumer cannot reach kafka, retrying: %s", exc)
            await backoff.pause()

    async def _poll(self, consumer: AIOKafkaConsumer) -> _Decoded | None:
        """The next batch, decoded; None if nothing came within the poll timeout. The records
        themselves are dropped here: a batch in hand keeps only its rows, their values and
        offsets."""
        batches = await consumer.getmany(
            timeout_ms=self._settings.consumer_poll_timeout_ms,
            max_records=self._settings.consumer_max_records,
        )
        return self._decode(batches) if batches else None

    def _decode(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> _Decoded:
        """The batch's rows, the records that are not trades with the reason, and the offsets
        to commit once it is stored."""
        rows: list[Row] = []
        values: list[bytes] = []
        poison: list[_Letter] = []
        latest = now_ms() + self._max_clock_skew_ms  # a record dated later is poison
        for records in batches.values():
            for record in records:
                value = record.value
                try:
                    rows.append(row_from_kafka(value, latest))
                except InvalidTrade as exc:
                    poison.append((record.key, value or b"", str(exc)))
                else:
                    values.append(value)  # a row came from it, so it is not None
        count = sum(len(records) for records in batches.values())
        self._consumed += count
        metrics.RECORDS_CONSUMED.inc(count)
        offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
        return _Decoded(rows, values, poison, offsets)

    async def _store_and_commit(
        self,
        consumer: AIOKafkaConsumer,
        decoded: _Decoded,
        previous: asyncio.Task[None] | None,
    ) -> None:
        """Dead letters, then the rows in one transaction (or, around rows PostgreSQL refuses,
        several, and those rows dead-lettered; then `_written` is set), then the offsets, after
        `previous` batch's; frees the slot in hand that `run` took for it."""
        try:
            try:
                if decoded.poison:
                    await self._dead_letter(decoded.poison, DECODE_SOURCE)
                if decoded.rows:
                    await self._store(decoded)
                self._batches += 1
            finally:
                self._written.set()  # on failure too: `run` then finds this task failed
            if previous is not None:
                await previous  # its failure is this batch's too: offsets commit in order
            await self._commit(consumer, decoded.offsets)
        finally:
            self._in_hand.release()

    async def _store(self, decoded: _Decoded) -> None:
        """The batch's rows stored, and those PostgreSQL refuses for good dead-lettered."""
        rows = decoded.rows
        isolated = await store_isolating(self._write_with_retry, rows)
        self._stored += isolated.stored
        now_ms = time.time() * 1000
        # row[5] is trade_time (models.Row). One histogram update for the batch, not per row.
        metrics.observe_many(metrics.E2E_LATENCY, [max(now_ms - row[5], 0) / 1000 for row in rows])
        if isolated.rejected:
            logger.warning(
                "PostgreSQL refused %d of %d rows; dead-lettering them (first: %s)",
                len(isolated.rejected),
                len(rows),
                isolated.rejected[0][1],
            )
            self._rejected += len(isolated.rejected)
            await self._dead_letter(
                [
                    (rows[index][0].encode(), decoded.values[index], reason)
                    for index, reason in isolated.rejected
                ],
                SINK_SOURCE,
            )

    async def _write_with_retry(self, chunk: Sequence[Row]) -> int:
        """`chunk` stored: retried with backoff while the sink is unavailable; RowsRejected
        (the sink answered, so it is up) is for the caller."""
        backoff = Backoff(*SINK_RETRY_BACKOFF_S)
        while True:
            try:
                stored = await self._sink.write(chunk)
            except SinkUnavailable as exc:
                if self._sink_up:
                    logger.warning("sink unavailable, retrying without committing: %s", exc)
                self._sink_up = False
                self._last_error = str(exc)
                metrics.SINK_RETRIES.inc()
                await backoff.pause()
                continue
            except RowsRejected:
                self._mark_sink_up()
                raise
            self._mark_sink_up()
            return stored

    def _mark_sink_up(self) -> None:
        if not self._sink_up:
            logger.info("sink available again")
        self._sink_up = True

    async def _commit(
        self, consumer: AIOKafkaConsumer, next_offsets: dict[TopicPartition, int]
    ) -> None:
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in next_offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions: the next owner re-reads the batch; no row is doubled.
            logger.warning("offset commit refused after rebalance: %s", exc)
            return
        self._last_commit_at = time.time()

    async def _dead_letter(self, letters: list[_Letter], source: str) -> None:
        """Every letter acknowledged by Kafka. While that fails the DLQ producer is replaced and
        the letters not yet acknowledged are sent again after a backoff: the batch's offsets
        wait (a letter sent twice is kept twice; one never sent would be lost)."""
        pending: list[_Outgoing] = [
            (key, *dead_letter_record(self._settings, raw, reason, source))
            for key, raw, reason in letters
        ]
        backoff = Backoff(*KAFKA_RETRY_BACKOFF_S)
        while True:
            pending, error = await self._send_dead_letters(pending, source)
            if error is None:
                break
            self._last_error = f"DLQ: {type(error).__name__}: {error}"
            if self._dlq_up:
                logger.warning("dead letters not delivered, retrying without committing: %s", error)
            self._dlq_up = False
            if self._dlq is not None:
                dlq, self._dlq = self._dlq, None
                await discard_producer(dlq)  # its sequence numbers may be spoilt (aiokafka #1017)
            await backoff.pause()
        if not self._dlq_up:
            logger.info("dead letters delivered again")
        self._dlq_up = True
        logger.warning("sent %d records to the DLQ (source %s)", len(letters), source)

    async def _send_dead_letters(
        self, letters: list[_Outgoing], source: str
    ) -> tuple[list[_Outgoing], BaseException | None]:
        """Send the letters at once; those not acknowledged, and why (None when all were)."""
        sent: list[asyncio.Future[object]] = []
        try:
            dlq = await self._dlq_producer()
            async with asyncio.timeout(KAFKA_CALL_TIMEOUT_S):
                for key, topic, value, headers in letters:
                    sent.append(await dlq.send(topic, value, key=key, headers=headers))
                results = await asyncio.gather(*sent, return_exceptions=True)
        except Exception as exc:
            for future in sent:
                future.cancel()  # failed with the producer, and then nobody would retrieve it
            if not is_outage(exc):
                raise
            return letters, exc
        failed = [
            letter
            for letter, result in zip(letters, results, strict=True)
            if isinstance(result, BaseException)
        ]
        errors = [result for result in results if isinstance(result, BaseException)]
        delivered = len(letters) - len(failed)
        self._dead_letters += delivered
        metrics.DLQ_PRODUCED.labels(source).inc(delivered)
        for error in errors:
            if isinstance(error, Exception) and not is_outage(error):
                raise error
        return failed, errors[0] if errors else None

    async def _dlq_producer(self) -> AIOKafkaProducer:
        if self._dlq is None:
            dlq = build_producer(self._settings)
            try:
                await start_within(dlq.start(), KAFKA_CALL_TIMEOUT_S)
            except BaseException:
                await discard_producer(dlq)
                raise
            self._dlq = dlq
        return self._dlq

    async def _close(self, consumer: AIOKafkaConsumer) -> None:
        for client in (consumer, self._dlq):
            if client is None:
                continue
            try:
                await asyncio.wait_for(client.stop(), KAFKA_CALL_TIMEOUT_S)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                logger.warning("kafka client did not stop cleanly: %s", exc)
        self._dlq = None


def _without_done(tasks: list[asyncio.Task[None]]) -> list[asyncio.Task[None]]:
    """The tasks still running; raises the first failure among the finished ones."""
    for task in tasks:
        if task.done():
            task.result()
    return [task for task in tasks if not task.done()]

"""Ground truth and what was stored: the exchange's tape, PostgreSQL's table, Kafka's topics.

The window a scenario is judged on, per symbol: [first, last] where
* first = the first trade id executed after the service subscribed. The simulator is paused
  from its start until the service's connection is subscribed to every symbol, so nothing
  trades before the service can see it and `first` is exactly the tape's next id at `resume()`.
* last = the last id executed when the scenario pauses the simulator at its end.
Simulator ids are contiguous, so the expected set is every (symbol, id) in [first, last].
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from devtools.simulator import BinanceSimulator
from pipeline.kafka.client import start_within

Key = tuple[str, int]
DB_TIMEOUT_S = 5.0
KAFKA_TIMEOUT_S = 10.0


class Tape:
    """The simulator's trades of `symbols` inside the scenario's window."""

    def __init__(self, simulator: BinanceSimulator, symbols: Iterable[str]) -> None:
        self.simulator = simulator
        self.symbols = sorted(symbols)
        self.first: dict[str, int] = {}

    def open(self) -> None:
        """Mark the window's start: the next id of every symbol (call while paused)."""
        emitted = self.simulator.trades_emitted()
        start = self.simulator.config.start_trade_id
        self.first = {s: max(emitted[s], default=start - 1) + 1 for s in self.symbols}

    def last_ids(self) -> dict[str, int]:
        emitted = self.simulator.trades_emitted()
        return {s: max(emitted[s], default=self.first[s] - 1) for s in self.symbols}

    def ranges(self, last: dict[str, int] | None = None) -> dict[str, tuple[int, int]]:
        last = last if last is not None else self.last_ids()
        return {s: (self.first[s], last[s]) for s in self.symbols}

    def expected(self) -> set[Key]:
        emitted = self.simulator.trades_emitted()
        return {(s, i) for s in self.symbols for i in emitted[s] if i >= self.first[s]}


@dataclass(frozen=True)
class StoredRows:
    keys: set[Key]
    count: int  # count(*)
    distinct: int  # count(DISTINCT (symbol, trade_id))


class Store:
    """Read-only queries on the service's `crypto_prices`, each on a fresh connection (the
    database may be the thing that is down)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, timeout=DB_TIMEOUT_S, command_timeout=30)

    async def covered(self, ranges: dict[str, tuple[int, int]]) -> dict[str, int]:
        """Per symbol, how many ids of its range are stored."""
        symbols = sorted(ranges)
        connection = await self._connect()
        try:
            rows = await connection.fetch(
                """
                SELECT w.symbol, (
                    SELECT count(*) FROM crypto_prices c
                    WHERE c.symbol = w.symbol AND c.trade_id BETWEEN w.lo AND w.hi
                ) AS stored
                FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS w(symbol, lo, hi)
                """,
                symbols,
                [ranges[s][0] for s in symbols],
                [ranges[s][1] for s in symbols],
            )
        finally:
            await connection.close()
        return {row["symbol"]: int(row["stored"]) for row in rows}

    async def complete(self, ranges: dict[str, tuple[int, int]]) -> bool:
        """Every id of every range stored; False also while the database does not answer."""
        try:
            covered = await self.covered(ranges)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        return all(covered[s] == hi - lo + 1 for s, (lo, hi) in ranges.items())

    async def has_rows(self, symbols: Iterable[str]) -> bool:
        try:
            connection = await self._connect()
        except (OSError, TimeoutError, asyncpg.PostgresError):
            return False
        try:
            found = await connection.fetchval(
                "SELECT count(DISTINCT symbol) FROM crypto_prices WHERE symbol = ANY($1::text[])",
                list(symbols),
            )
        finally:
            await connection.close()
        return int(found) == len(list(symbols))

    async def rows(self, symbols: Iterable[str]) -> StoredRows:
        wanted = list(symbols)
        connection = await self._connect()
        try:
            records = await connection.fetch(
                "SELECT symbol, trade_id FROM crypto_prices WHERE symbol = ANY($1::text[])", wanted
            )
            count, distinct = await connection.fetchrow(
                "SELECT count(*), count(DISTINCT (symbol, trade_id)) FROM crypto_prices"
            )
        finally:
            await connection.close()
        return StoredRows({(r["symbol"], r["trade_id"]) for r in records}, count, distinct)

    async def mismatched_rows(
        self, symbols: Iterable[str], tape: dict[str, dict[int, tuple[str, str, bool]]]
    ) -> int:
        """Stored rows whose price, quantity or side differ from the exchange's trade."""
        connection = await self._connect()
        try:
            records = await connection.fetch(
                "SELECT symbol, trade_id, price::text AS price, quantity::text AS quantity, "
                "is_buyer_maker FROM crypto_prices WHERE symbol = ANY($1::text[])",
                list(symbols),
            )
        finally:
            await connection.close()
        wrong = 0
        for r in records:
            truth = tape.get(r["symbol"], {}).get(r["trade_id"])
            if truth is None:
                continue
            price, qty, maker = truth
            if (
                not _decimal_equal(r["price"], price)
                or not _decimal_equal(r["quantity"], qty)
                or r["is_buyer_maker"] != maker
            ):
                wrong += 1
        return wrong


def _decimal_equal(a: str, b: str) -> bool:
    return Decimal(a) == Decimal(b)


# -- Kafka ---------------------------------------------------------------------------------


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of `topic` (partitions never committed absent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await start_within(admin.start(), KAFKA_TIMEOUT_S)
        offsets = await asyncio.wait_for(admin.list_consumer_group_offsets(group), KAFKA_TIMEOUT_S)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == topic and meta.offset >= 0
    }


async def partitions(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await start_within(admin.start(), KAFKA_TIMEOUT_S)
        described = await asyncio.wait_for(admin.describe_topics([topic]), KAFKA_TIMEOUT_S)
    finally:
        await admin.close()
    return sorted(p["partition"] for t in described if not t["error_code"] for p in t["partitions"])


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every record of `topic` from the beginning to its current end (group-less)."""
    tps = [TopicPartition(topic, p) for p in await partitions(bootstrap, topic)]
    assert tps, f"topic {topic} does not exist"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    try:
        await start_within(consumer.start(), KAFKA_TIMEOUT_S)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + 60
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in 60 s")
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()

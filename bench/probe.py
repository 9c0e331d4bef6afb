"""Watching a database fill up, cheaply, and checking what it holds.

`StoredProbe.max_ids()` is one index probe per symbol (the newest trade id stored). A symbol's
trades travel in order through one Kafka partition and are stored in batches committed in that
order, so "newest stored id >= x" means every id <= x of that symbol is stored: polling it tells
when the last row landed without counting the table. The exact check (`check_rows`) compares the
stored (symbol, trade_id) set with the simulator's tape once, at the end.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import dataclass, field

import asyncpg

from pipeline.core.settings import KafkaSettings
from pipeline.kafka.admin import consumer_lag

_MAX_IDS = """
SELECT s.symbol, (SELECT max(c.trade_id) FROM crypto_prices c WHERE c.symbol = s.symbol)
FROM unnest($1::text[]) AS s(symbol)
"""
SAMPLE = 10  # differing keys shown when a check fails


@dataclass
class Poll:
    at_ms: float  # wall clock (epoch ms) when the query was sent
    max_ids: dict[str, int]


@dataclass
class RowCheck:
    """Stored rows vs sent trades for one database."""

    database: str
    expected: int
    stored: int
    missing: list[tuple[str, int]] = field(default_factory=list)
    unexpected: list[tuple[str, int]] = field(default_factory=list)
    missing_count: int = 0
    unexpected_count: int = 0

    @property
    def ok(self) -> bool:
        return self.missing_count == 0 and self.unexpected_count == 0

    def describe(self) -> str:
        if self.ok:
            return f"{self.database}: {self.stored} rows == {self.expected} unique trades sent"
        return (
            f"{self.database}: {self.stored} rows stored, {self.expected} unique trades sent; "
            f"{self.missing_count} missing (e.g. {self.missing}), "
            f"{self.unexpected_count} unexpected (e.g. {self.unexpected})"
        )


class StoredProbe:
    """A connection to one database that watches `crypto_prices` fill up."""

    def __init__(self, dsn: str, symbols: list[str], stall_s: float) -> None:
        self._dsn = dsn
        self._symbols = symbols
        self._stall_s = stall_s
        self._connection: asyncpg.Connection | None = None

    async def __aenter__(self) -> StoredProbe:
        self._connection = await asyncpg.connect(self._dsn)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def connection(self) -> asyncpg.Connection:
        assert self._connection is not None, "use `async with StoredProbe(...)`"
        return self._connection

    async def max_ids(self) -> dict[str, int]:
        rows = await self.connection.fetch(_MAX_IDS, self._symbols)
        return {row[0]: row[1] if row[1] is not None else -1 for row in rows}

    async def count(self) -> int:
        return int(await self.connection.fetchval("SELECT count(*) FROM crypto_prices"))

    async def wait_reached(
        self,
        targets: dict[str, int],
        interval: float,
        timeout: float,
        polls: list[Poll] | None = None,
    ) -> float:
        """Poll until every symbol's newest stored id reaches its target; return the
        perf_counter at which the successful query was sent (an upper bound of the moment the
        last row became visible, within `interval`). `targets` may be filled in while this
        runs: an empty dict is never reached. Fails after `timeout`, or sooner when no row was
        stored for the probe's `stall_s` while some are awaited."""
        deadline = time.monotonic() + timeout
        previous: dict[str, int] = {}
        progressed = time.monotonic()
        while True:
            sent = time.perf_counter()
            at_ms = time.time() * 1000
            current = await self.max_ids()
            if polls is not None:
                polls.append(Poll(at_ms, current))
            behind = {s: (current.get(s), t) for s, t in targets.items() if current.get(s, -1) < t}
            if targets and not behind:
                return sent
            now = time.monotonic()
            if current != previous:
                previous, progressed = current, now
            stalled = bool(behind) and now - progressed > self._stall_s
            if stalled or now > deadline:
                why = f"no row stored for {self._stall_s:.0f} s" if stalled else f"{timeout:.0f} s"
                raise TimeoutError(
                    f"rows not all stored ({why}); (newest stored, last sent) of symbols "
                    f"behind: {dict(list(behind.items())[:SAMPLE])}"
                )
            await asyncio.sleep(interval)

    async def trade_times(self, after: dict[str, int]) -> list[tuple[str, int, int]]:
        """(symbol, trade_id, trade_time) of the rows with trade_id > after[symbol]."""
        symbols = list(after)
        rows = await self.connection.fetch(
            "SELECT c.symbol, c.trade_id, c.trade_time FROM crypto_prices c "
            "JOIN unnest($1::text[], $2::bigint[]) AS a(symbol, after_id) "
            "ON c.symbol = a.symbol AND c.trade_id > a.after_id",
            symbols,
            [after[s] for s in symbols],
        )
        return [(row[0], row[1], row[2]) for row in rows]

    async def check_rows(self, database: str, sent: dict[str, set[int]]) -> RowCheck:
        """Exact comparison of the stored (symbol, trade_id) set with the trades sent."""
        rows = await self.connection.fetch("SELECT symbol, trade_id FROM crypto_prices")
        stored = {(row[0], row[1]) for row in rows}
        expected = {(symbol, trade_id) for symbol, ids in sent.items() for trade_id in ids}
        missing = expected - stored
        unexpected = stored - expected
        return RowCheck(
            database=database,
            expected=len(expected),
            stored=len(rows),
            missing=sorted(missing)[:SAMPLE],
            unexpected=sorted(unexpected)[:SAMPLE],
            missing_count=len(missing),
            unexpected_count=len(unexpected) + (len(rows) - len(stored)),
        )


async def wait_lag_zero(settings: KafkaSettings, timeout: float) -> int:
    """Poll the group's lag until it is 0; return the last lag seen (0 unless timed out)."""
    deadline = time.monotonic() + timeout
    while True:
        lag = (await consumer_lag(settings)).total_lag
        if lag == 0 or time.monotonic() > deadline:
            return lag
        await asyncio.sleep(0.25)


def visibility_latencies(polls: list[Poll], rows: list[tuple[str, int, int]]) -> list[float]:
    """Per row: (time of the first poll that saw it stored) - trade_time, in ms. An upper bound
    of the true latency, tighter than the poll interval."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for poll in polls:
        for symbol, newest in poll.max_ids.items():
            ids, times = series.setdefault(symbol, ([], []))
            ids.append(max(newest, ids[-1]) if ids else newest)  # never decreasing
            times.append(poll.at_ms)
    latencies: list[float] = []
    for symbol, trade_id, trade_time in rows:
        ids, times = series.get(symbol, ([], []))
        index = bisect.bisect_left(ids, trade_id)
        if index < len(ids):
            latencies.append(max(times[index] - trade_time, 0.0))
    return latencies

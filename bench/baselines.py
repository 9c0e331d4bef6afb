"""The baselines of perf.md, on the rows the end-to-end run stored, on the same server.

Each writes into `crypto_prices` of its own fresh database (same table, same indexes), so the
ratios compare ways of writing, not table shapes:

* per-row: the original design's consumer, one INSERT + COMMIT per message (asyncpg,
  autocommit; a prepared statement, synchronous_commit on like the sink) — on a sample;
* COPY: `copy_records_to_table` of all rows in one transaction, into the empty table (the
  ceiling for the sink); also into a bare copy of the table without indexes, for reference;
* sink: `PostgresSink.write` in batches of `consumer_max_records`, the consumer's exact path
  minus Kafka (TradeEvents are built before the clock starts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from pipeline.db import CRYPTO_PRICES_COLUMNS
from pipeline.models import TradeEvent
from pipeline.settings import DatabaseSettings
from pipeline.sink import PostgresSink

Row = tuple[str, int, Decimal, Decimal, int, int, bool, int]

_COLUMNS = ", ".join(CRYPTO_PRICES_COLUMNS)
_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, len(CRYPTO_PRICES_COLUMNS) + 1))
_INSERT_ONE = (
    f"INSERT INTO crypto_prices ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
    "ON CONFLICT (symbol, trade_id) DO NOTHING"
)
BARE_TABLE = "crypto_prices_bare"


@dataclass(frozen=True)
class Rate:
    rows: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.per_s),
        }


async def fetch_rows(dsn: str, ranges: dict[str, tuple[int, int]]) -> list[Row]:
    """The stored rows with first <= trade_id <= last per symbol, in arrival order."""
    symbols = list(ranges)
    connection = await asyncpg.connect(dsn)
    try:
        records = await connection.fetch(
            f"SELECT {', '.join('c.' + c for c in CRYPTO_PRICES_COLUMNS)} FROM crypto_prices c "
            "JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(symbol, first_id, last_id) "
            "ON c.symbol = r.symbol AND c.trade_id BETWEEN r.first_id AND r.last_id "
            "ORDER BY c.processed_at, c.trade_time, c.symbol, c.trade_id",
            symbols,
            [ranges[s][0] for s in symbols],
            [ranges[s][1] for s in symbols],
        )
    finally:
        await connection.close()
    return [tuple(record) for record in records]


async def per_row(dsn: str, rows: list[Row]) -> Rate:
    """One INSERT + COMMIT per message."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SET synchronous_commit = on")
        started = time.perf_counter()
        for row in rows:
            await connection.execute(_INSERT_ONE, *row)
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    return Rate(len(rows), elapsed)


async def raw_copy(dsn: str, rows: list[Row], *, bare: bool = False) -> Rate:
    """COPY of all rows into the empty table (`bare`: a copy without primary key or index)."""
    table = BARE_TABLE if bare else "crypto_prices"
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SET synchronous_commit = on")
        if bare:
            await connection.execute(f"CREATE TABLE {BARE_TABLE} (LIKE crypto_prices)")
        started = time.perf_counter()
        await connection.copy_records_to_table(
            table, records=rows, columns=list(CRYPTO_PRICES_COLUMNS)
        )
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    return Rate(len(rows), elapsed)


async def sink(url: str, rows: list[Row], batch_size: int) -> Rate:
    """PostgresSink.write in consumer-sized batches; checks every row was new."""
    events = [TradeEvent(**dict(zip(CRYPTO_PRICES_COLUMNS, row, strict=True))) for row in rows]
    writer = PostgresSink(DatabaseSettings(url=url))
    stored = 0
    try:
        started = time.perf_counter()
        for start in range(0, len(events), batch_size):
            stored += await writer.write(events[start : start + batch_size])
        elapsed = time.perf_counter() - started
    finally:
        await writer.close()
    if stored != len(rows):
        raise RuntimeError(f"sink baseline stored {stored} of {len(rows)} new rows")
    return Rate(len(rows), elapsed)

"""The baselines of perf.md, on the rows the end-to-end run stored, on the same server.

Each writes into `crypto_prices` of its own fresh database (same table, same indexes), so the
ratios compare ways of writing, not table shapes. Every connection has synchronous_commit on
(startup parameter, like the sink), so every COMMIT waits for the WAL flush.

The headline figures — the ones `ratios.*` divide by — follow the definitions of the spec's
reference table ("a 2-core machine like ours"), so that our ratios mean what the spec's do:

* per-row, "the original design's consumer: one INSERT + COMMIT per message" (`per_row`): an
  explicit transaction per message, BEGIN, INSERT, COMMIT — what the original psycopg2 /
  SQLAlchemy consumer did (a session commit per message) — on a sample of the rows;
* raw COPY, "the ceiling for the sink" (`copy_batches`): COPY of the same rows into the empty
  table in batches of `consumer_max_records` (the sink's batch size), one transaction per batch,
  from the same row tuples the sink is given (the consumer decodes records straight into them).
  It is what the sink does minus everything that makes it idempotent, so sink ÷ COPY says what
  the idempotence costs, at the same batch size and commit count. It is asyncpg's
  `copy_records_to_table` (binary COPY), the reference table's "raw COPY" (it was measured with
  asyncpg).

The more favourable variants the harness used as headlines before are still measured and
reported as extra figures (`rates.*`, `raw.variants[].baselines`), so nothing is hidden:

* `per_row_autocommit`: the same INSERT in autocommit, a prepared statement, one round trip
  per row instead of three (BEGIN, INSERT, COMMIT) — still one WAL flush per row, so faster
  than the headline by the two round trips (1.1 to 1.9x in our runs, least when the disk is busy);
* `raw_copy`: ONE `copy_records_to_table` of all rows in one transaction, from pre-built
  tuples (one commit, one COPY), into the empty table and into a bare copy of it without
  primary key or index — 1.2 to 2.3x the batched COPY in our runs; a consumer that commits
  Kafka offsets per batch cannot write that way, so it is no ceiling for the sink;
* `copy_text`: the batched COPY in text format, the lines written by `pipeline.storage.sink.copy_text`
  — the encoding the sink itself uses, cheaper for the client than asyncpg's binary encoding
  of Decimals; its ratios are reported beside the headline ones.

Finally `sink`: `PostgresSink.write` in batches of `consumer_max_records`, the consumer's exact
path minus Kafka and the decoding of the records into rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from pipeline.core.settings import DatabaseSettings
from pipeline.core.trades import Row
from pipeline.storage.sink import PostgresSink, copy_text, copy_text_into
from pipeline.storage.tables import CRYPTO_PRICES_COLUMNS

_COLUMNS = ", ".join(CRYPTO_PRICES_COLUMNS)
_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, len(CRYPTO_PRICES_COLUMNS) + 1))
_INSERT_ONE = (
    f"INSERT INTO crypto_prices ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
    "ON CONFLICT (symbol, trade_id) DO NOTHING"
)
_SERVER_SETTINGS = {"synchronous_commit": "on"}
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


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings=_SERVER_SETTINGS)


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


async def per_row(dsn: str, rows: Sequence[Row]) -> Rate:
    """Headline: one INSERT + COMMIT per message, an explicit transaction each (BEGIN, INSERT,
    COMMIT: the original consumer's session commit per message)."""
    connection = await _connect(dsn)
    try:
        started = time.perf_counter()
        for row in rows:
            async with connection.transaction():
                await connection.execute(_INSERT_ONE, *row)
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    return Rate(len(rows), elapsed)


async def per_row_autocommit(dsn: str, rows: Sequence[Row]) -> Rate:
    """Extra: the same INSERT in autocommit, a prepared statement, one round trip per row."""
    connection = await _connect(dsn)
    try:
        started = time.perf_counter()
        for row in rows:
            await connection.execute(_INSERT_ONE, *row)
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    return Rate(len(rows), elapsed)


async def copy_batches(
    dsn: str, rows: Sequence[Row], batch_size: int, *, text: bool = False
) -> Rate:
    """Headline: COPY into the empty table in the sink's batches, one transaction each (binary,
    by asyncpg; `text`: the extra variant in text format)."""
    connection = await _connect(dsn)
    columns = list(CRYPTO_PRICES_COLUMNS)
    try:
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            async with connection.transaction():
                if text:
                    await copy_text_into(connection, "crypto_prices", copy_text(batch))
                else:
                    await connection.copy_records_to_table(
                        "crypto_prices", records=batch, columns=columns
                    )
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    return Rate(len(rows), elapsed)


async def raw_copy(dsn: str, rows: Sequence[Row], *, bare: bool = False) -> Rate:
    """Extra: ONE COPY of all rows (pre-built tuples) in one transaction into the empty table
    (`bare`: a copy of the table without primary key or index)."""
    table = BARE_TABLE if bare else "crypto_prices"
    connection = await _connect(dsn)
    try:
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


async def sink(url: str, rows: Sequence[Row], batch_size: int) -> Rate:
    """PostgresSink.write in consumer-sized batches; checks every row was new."""
    writer = PostgresSink(DatabaseSettings(url=url))
    stored = 0
    try:
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            stored += await writer.write(rows[start : start + batch_size])
        elapsed = time.perf_counter() - started
    finally:
        await writer.close()
    if stored != len(rows):
        raise RuntimeError(f"sink baseline stored {stored} of {len(rows)} new rows")
    return Rate(len(rows), elapsed)

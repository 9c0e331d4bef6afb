"""PostgresSink: one transaction per batch, bulk and idempotent.

A batch is deduplicated in memory (duplicates inside a batch never reach the database), then
stored in one transaction by one of two paths:

* fast path (the normal case: every row is new): inside the transaction, a SAVEPOINT, then the
  batch is COPYed straight into `crypto_prices`. The primary key rejects the whole COPY if any
  row is already stored; nothing else but a refused value (below) can fail it, so on success
  every row was new and the per-symbol counts come from the batch itself.
* staging path (a replay, or duplicates across batches): on `UniqueViolationError` the
  transaction rolls back to the savepoint; the batch is COPYed into a per-connection temporary
  table and moved with `INSERT … SELECT … ON CONFLICT (symbol, trade_id) DO NOTHING RETURNING`,
  which counts exactly the rows that were new, per symbol.

Both COPY the batch in PostgreSQL's text format, written here (`copy_text`): asyncpg's binary
COPY of the same tuples encodes each Decimal in Python-level code, several times the client CPU
of writing the text lines, and the server parses either at the same cost.

Either way a batch is stored whole or not at all, and a replay adds no row. The fast path runs
close to a plain COPY of the same batches; the staging path is slower but still well ahead of
`unnest` or a row per transaction (docs/perf.md has the measurements). The SAVEPOINT costs one
round trip each way per batch. Which path a batch takes is decided by `_PathChooser`.

A batch that is not stored says why in one of two ways (anything else is a bug, raised as it is):

* SinkUnavailable: worth retrying, the same batch may be stored later. PostgreSQL is down
  (`outage.is_outage`), or it is up and refuses every write whatever the rows: read-only after a
  failover (25006), a revoked privilege (42501), a serialization failure.
* RowsRejected: PostgreSQL refuses a value of the batch (SQLSTATE class 22, data exception:
  e.g. a price beyond numeric's range; class 23, a CHECK, NOT NULL or unique constraint). The
  same rows will always be refused; the consumer splits the batch to find them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import itemgetter

import asyncpg

from pipeline.core import metrics
from pipeline.core.errors import RowsRejected, SinkUnavailable
from pipeline.core.settings import DatabaseSettings
from pipeline.core.trade_checks import is_symbol
from pipeline.core.trades import CRYPTO_PRICES_COLUMNS, Row
from pipeline.storage.outage import is_outage

logger = logging.getLogger(__name__)

TABLE = "crypto_prices"
STAGING_TABLE = "crypto_prices_staging"
_COLUMNS = ", ".join(CRYPTO_PRICES_COLUMNS)
_CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} "
    f"(LIKE {TABLE} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_MOVE_STAGED = f"""
WITH stored AS (
    INSERT INTO {TABLE} ({_COLUMNS})
    SELECT {_COLUMNS} FROM {STAGING_TABLE}
    ON CONFLICT (symbol, trade_id) DO NOTHING
    RETURNING symbol
)
SELECT symbol, count(*) FROM stored GROUP BY symbol
"""

_symbol_of = itemgetter(0)

# SQLSTATE classes of an error about the values of the rows, not the state of the server: 22
# data exception, 23 integrity constraint violation. Everything else the server answers (25
# read-only, 40 serialization, 42 privilege or a missing table, P0 a trigger's RAISE) would fail
# any batch alike: splitting the batch would dead-letter every row of it.
ROW_SQLSTATE_CLASSES = frozenset({"22", "23"})

# synchronous_commit=off would acknowledge a batch the server can still lose on a crash, after
# the consumer committed its offsets: the guarantee needs it on. Sent as a startup parameter, not
# SET: it outranks ALTER DATABASE/ROLE defaults and survives the RESET ALL that asyncpg's pool
# runs on every release (which silently undid a SET after the first batch).
_SERVER_SETTINGS = {"synchronous_commit": "on"}


async def _prepare_connection(connection: asyncpg.Connection) -> None:
    await connection.execute(_CREATE_STAGING)


def copy_text(rows: Iterable[Row]) -> bytes:
    """The rows as the body of a `COPY … FROM STDIN` in text format (tab-separated, one line each).

    No value needs escaping: rows are validated trades, whose only text is the symbol (checked
    per batch against SYMBOL_PATTERN in `write`), and a finite Decimal, an int or a bool never
    prints a tab, newline or backslash. str(Decimal) keeps the scale ("0.96900000") and may use
    an exponent ("1.5E-7"), both of which PostgreSQL's numeric input reads exactly.
    """
    return "".join(
        [
            f"{symbol}\t{trade_id}\t{price!s}\t{quantity!s}\t{event_time}\t{trade_time}\t"
            f"{'t' if is_buyer_maker else 'f'}\t{processed_at}\n"
            for (
                symbol,
                trade_id,
                price,
                quantity,
                event_time,
                trade_time,
                is_buyer_maker,
                processed_at,
            ) in rows
        ]
    ).encode()


def unique_rows(rows: Sequence[Row]) -> list[Row]:
    """The first row of each (symbol, trade_id), in arrival order: COPY + ON CONFLICT needs no
    twins inside a batch."""
    seen: set[tuple[str, int]] = set()
    unique: list[Row] = []
    for row in rows:
        key = (row[0], row[1])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


class _PathChooser:
    """Whether the next batch tries the fast path.

    A conflicting fast attempt is not free: asyncpg encodes and sends the whole batch before the
    server reports the violation, and then it is rolled back, before the staging path runs. On
    a replay of a whole topic every batch conflicts, and trying the fast path first in every
    batch ran clearly slower than the staging path alone, while this rule runs at the staging
    path's own rate (docs/perf.md). A batch sent to the staging path needlessly costs less than
    a wasted COPY. Hence:

    * a batch goes to staging while the previous batch had conflicts (known exactly from the
      staging path's count), so a long replay pays one failed attempt at its start and one
      staging batch after its end; no window size to tune;
    * on top, each failed attempt since the last successful one doubles the batches kept on the
      staging path afterwards (up to `MAX_BACKOFF`), so batches that alternate between fresh
      and replayed rows cannot make every other batch a failed attempt.
    """

    MAX_BACKOFF = 64

    def __init__(self) -> None:
        self._staging_left = 0  # batches still to take the staging path
        self._backoff = 1  # staging batches after the next failed attempt

    def try_fast(self) -> bool:
        if self._staging_left == 0:
            return True
        self._staging_left -= 1
        return False

    def fast_stored(self) -> None:
        self._backoff = 1

    def fast_conflicted(self) -> None:
        self._staging_left = self._backoff
        self._backoff = min(self._backoff * 2, self.MAX_BACKOFF)

    def staging_stored(self, conflicts: bool) -> None:
        if conflicts:
            self._staging_left = max(self._staging_left, 1)


class PostgresSink:
    """`write(rows)` stores a batch in one transaction and returns the rows that were new."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self._chooser = _PathChooser()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(
                    self._settings.asyncpg_dsn,
                    min_size=1,
                    max_size=2,
                    init=_prepare_connection,
                    server_settings=_SERVER_SETTINGS,
                    command_timeout=60,
                )
            except Exception as exc:
                # Not about rows: the pool's init runs no insert (a read-only server refuses
                # its CREATE TEMPORARY TABLE, 25006).
                if not is_outage(exc) and not isinstance(exc, asyncpg.PostgresError):
                    raise
                raise SinkUnavailable(f"cannot connect to PostgreSQL: {reason(exc)}") from exc
        return self._pool

    async def write(self, batch: Sequence[Row]) -> int:
        """Store the batch (rows in CRYPTO_PRICES_COLUMNS order, e.g. `TradeEvent.as_row()`)
        atomically; raise SinkUnavailable (nothing stored) when the DB is down or refuses every
        write, RowsRejected (nothing stored) when it refuses a value of the batch."""
        rows = unique_rows(batch)
        if not rows:
            return 0
        by_symbol = Counter(map(_symbol_of, rows))
        if not all(map(is_symbol, by_symbol)):
            # copy_text needs it. A validated trade always passes, but should a validator ever
            # let one through, it is that row's fault: dead-lettered, not a halt of the sink.
            raise RowsRejected(f"not a symbol: {sorted(filter(_not_symbol, by_symbol))[:10]}")
        data = copy_text(rows)
        pool = await self._get_pool()
        started = time.perf_counter()
        try:
            async with pool.acquire() as connection, connection.transaction():
                stored_by_symbol = None
                if self._chooser.try_fast():
                    stored_by_symbol = await self._fast(connection, data, by_symbol)
                if stored_by_symbol is None:
                    stored_by_symbol = await self._staged(connection, data, len(rows))
        except Exception as exc:
            # InternalClientError: a connection out of step with its server, as when the server
            # ended it (pg_terminate_backend) while it sat in the pool; the pool replaces it.
            if is_outage(exc) or isinstance(exc, asyncpg.InternalClientError):
                raise SinkUnavailable(f"PostgreSQL unavailable: {reason(exc)}") from exc
            if not isinstance(exc, asyncpg.PostgresError):
                raise
            if exc.sqlstate[:2] in ROW_SQLSTATE_CLASSES:
                raise RowsRejected(f"PostgreSQL rejected a row: {reason(exc)}") from exc
            raise SinkUnavailable(f"PostgreSQL refuses writes: {reason(exc)}") from exc
        # Only now is the batch committed: the counters never count a rolled-back row.
        elapsed = time.perf_counter() - started
        stored = 0
        for symbol, count in stored_by_symbol:
            metrics.ROWS_STORED.labels(symbol).inc(count)
            stored += count
        metrics.ROWS_DUPLICATE.inc(len(batch) - stored)
        metrics.SINK_BATCH_SIZE.observe(len(rows))
        metrics.SINK_LATENCY.observe(elapsed)
        return stored

    async def _fast(
        self, connection: asyncpg.Connection, data: bytes, by_symbol: Counter[str]
    ) -> list[tuple[str, int]] | None:
        """COPY straight into the table under a savepoint; None (rolled back) on a conflict."""
        try:
            async with connection.transaction():  # nested: SAVEPOINT … RELEASE / ROLLBACK TO
                await copy_text_into(connection, TABLE, data)
        except asyncpg.UniqueViolationError:
            self._chooser.fast_conflicted()
            logger.debug("batch of %d rows has stored ones: staging path", by_symbol.total())
            return None
        self._chooser.fast_stored()
        return list(by_symbol.items())

    async def _staged(
        self, connection: asyncpg.Connection, data: bytes, rows: int
    ) -> list[tuple[str, int]]:
        """COPY into the staging table, move what is new; the count per symbol of those rows."""
        await copy_text_into(connection, STAGING_TABLE, data)
        stored_by_symbol = [(r[0], r[1]) for r in await connection.fetch(_MOVE_STAGED)]
        self._chooser.staging_stored(sum(count for _, count in stored_by_symbol) < rows)
        return stored_by_symbol

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


def _not_symbol(symbol: str) -> bool:
    return not is_symbol(symbol)


def reason(exc: BaseException) -> str:
    """The database's reason for `exc`, as the DLQ and the status show it: SQLSTATE, error
    class, message, and PostgreSQL's detail and context (the failing row, the COPY line)."""
    if not isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__}: {exc}"
    parts = [f"{exc.sqlstate} {type(exc).__name__}: {exc}"]
    parts += [part for part in (exc.detail, exc.context) if part]
    return "; ".join(parts)


async def copy_text_into(connection: asyncpg.Connection, table: str, data: bytes) -> None:
    """COPY `copy_text`'s lines into `table` (the columns of `crypto_prices`)."""
    # A memoryview: asyncpg would take bytes for a file path.
    await connection.copy_to_table(
        table, source=memoryview(data), columns=CRYPTO_PRICES_COLUMNS, format="text"
    )

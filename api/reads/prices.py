"""The /prices reads: an asyncpg pool of their own, and rows encoded straight to JSON.

GET /prices/{symbol} is the hot read (docs/perf.md); its latest answer per
symbol is kept briefly (RecentAnswers) and the route sends it. Through the SQLAlchemy engine
most of a read's CPU went to building and compiling the statement, the pooled connection's
pre-ping and transaction, and response-model validation; this path skips what buys nothing
for a single-statement read:

* no SQLAlchemy: the statements are fixed SQL (api.reads.trades, api.reads.candles) that
  asyncpg prepares once per connection; no statement building, compiling or result wrapping
  per request;
* no explicit transaction and no pre-ping: a lone SELECT is atomic on its own, and a dead
  connection fails the query (→ 503 like any outage, api.errors) and is replaced by the pool;
* no reset query when a connection goes back to the pool: these connections only ever run
  those SELECTs, so there is no session state to clear (asyncpg still rolls back an open
  transaction, were there one);
* no response-model validation: the columns are named and ordered as the response models'
  fields and typed by the table (NOT NULL columns, decimals cast to text in SQL), so a row is
  its JSON object as is; orjson encodes it.

These reads run on the sink's database, so none may hold it for long: every connection runs
with PostgreSQL's `statement_timeout` at `api.read_timeout_ms` (a read past it is cancelled and
raises ReadTimedOut: 503), and the range reads (history, candles: the ones whose cost grows
with the range) have a small pool of their own (`api.range_pool_size`), so that however many
arrive, the latest-price reads keep theirs. A range read waits for one of its connections at
most `api.read_timeout_ms` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson

from api.reads import trades
from api.reads.candles import CANDLES
from api.reads.cursor import Cursor
from api.reads.recent import RecentAnswers
from pipeline.core.settings import ApiSettings, DatabaseSettings

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0
# The client's own bound beyond the server's statement_timeout: a server that stops answering
# (a network partition) cannot hold a connection forever either.
CLIENT_TIMEOUT_GRACE_S = 2.0

Row = dict[str, Any]


class ReadTimedOut(Exception):
    """A read PostgreSQL cancelled at `api.read_timeout_ms`, or a range read that found none of
    its connections free within that time; the message says which, for the client."""


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to reset (see the module docstring)."""


async def _open_pool(dsn: str, size: int, timeout_ms: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=size,
        reset=_keep_session,
        server_settings={"statement_timeout": str(timeout_ms)},
        command_timeout=timeout_ms / 1000 + CLIENT_TIMEOUT_GRACE_S,
    )


class PriceReads:
    """The stored-trade reads; one per service, opened and closed by the lifespan."""

    def __init__(
        self, pool: asyncpg.Pool, ranges: asyncpg.Pool, latest_ttl_s: float, timeout_ms: int
    ) -> None:
        """`pool` for the latest-price reads, `ranges` for history and candles; both with
        `statement_timeout` = `timeout_ms` (see open())."""
        self._pool = pool
        self._ranges = ranges
        self._timeout_ms = timeout_ms
        self._latest = RecentAnswers(self._fetch_latest_trade, latest_ttl_s)

    @classmethod
    async def open(cls, database: DatabaseSettings, api: ApiSettings) -> PriceReads:
        pool = await _open_pool(database.asyncpg_dsn, database.pool_size, api.read_timeout_ms)
        try:
            ranges = await _open_pool(
                database.asyncpg_dsn, api.range_pool_size, api.read_timeout_ms
            )
        except BaseException:
            pool.terminate()
            raise
        return cls(pool, ranges, api.latest_cache_ms / 1000, api.read_timeout_ms)

    async def close(self) -> None:
        for pool in (self._pool, self._ranges):
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                logger.warning(
                    "read pool did not close within %.0f s; terminating", CLOSE_TIMEOUT_S
                )
                pool.terminate()

    async def latest_trade(self, symbol: str) -> bytes | None:
        """The symbol's newest stored trade as its JSON object (orjson's bytes of the row), at
        most `latest_ttl_s` old (see RecentAnswers); None if the symbol has no trades."""
        return await self._latest.get(symbol)

    async def _fetch_latest_trade(self, symbol: str) -> bytes | None:
        # Kept encoded: a kept answer is sent many times, and encoded once.
        with self._cancelled_is_timed_out():
            row = await self._pool.fetchrow(trades.LATEST_TRADE, symbol)
        return None if row is None else orjson.dumps(dict(row))

    async def latest_trades(self) -> list[Row]:
        with self._cancelled_is_timed_out():
            return [dict(row) for row in await self._pool.fetch(trades.LATEST_TRADES)]

    async def is_tracked(self, symbol: str) -> bool:
        with self._cancelled_is_timed_out():
            return bool(await self._pool.fetchval(trades.IS_TRACKED, symbol))

    async def history(
        self, symbol: str, start: int | None, end: int | None, after: Cursor | None, limit: int
    ) -> list[Row]:
        sql, args = trades.history(symbol, start, end, after, limit)
        return await self._range_read(sql, *args)

    async def newest_trade_time(self, symbol: str) -> int | None:
        with self._cancelled_is_timed_out():
            value = await self._pool.fetchval(trades.NEWEST_TRADE_TIME, symbol)
        return None if value is None else int(value)

    async def candles(
        self, symbol: str, interval_ms: int, start: int, end: int, limit: int
    ) -> list[Row]:
        return await self._range_read(CANDLES, symbol, interval_ms, start, end, limit)

    async def _range_read(self, sql: str, *args: object) -> list[Row]:
        """`sql` on a connection of the range pool, waiting for one at most the read timeout."""
        try:
            connection = await self._ranges.acquire(timeout=self._timeout_ms / 1000)
        except TimeoutError:
            raise ReadTimedOut(
                f"too many history and candles reads at once: none started within "
                f"{self._timeout_ms} ms (api.read_timeout_ms); retry later"
            ) from None
        try:
            with self._cancelled_is_timed_out():
                return [dict(row) for row in await connection.fetch(sql, *args)]
        finally:
            await self._ranges.release(connection)

    @contextlib.contextmanager
    def _cancelled_is_timed_out(self) -> Iterator[None]:
        try:
            yield
        except asyncpg.QueryCanceledError:
            raise ReadTimedOut(
                f"the read took longer than {self._timeout_ms} ms (api.read_timeout_ms) and was "
                "cancelled; narrow the time range, or retry later"
            ) from None

    # The push feed's resume (api.stream): trades by id, oldest first.

    async def trades_by_id(self, symbol: str, first_id: int, last_id: int, limit: int) -> list[Row]:
        rows = await self._pool.fetch(trades.TRADES_BY_ID, symbol, first_id, last_id, limit)
        return [dict(row) for row in rows]

    async def newest_trade_by_id(self, symbol: str) -> Row | None:
        row = await self._pool.fetchrow(trades.NEWEST_TRADE_BY_ID, symbol)
        return None if row is None else dict(row)

    async def newest_trade_ids(self, symbols: list[str]) -> dict[str, int | None]:
        rows = await self._pool.fetch(trades.NEWEST_TRADE_IDS, symbols)
        return {row["symbol"]: row["trade_id"] for row in rows}

"""The /prices reads: an asyncpg pool of their own, and rows encoded straight to JSON.

GET /prices/{symbol} is the hot read (≥ 1,000 req/s, docs/perf.md); its latest answer per
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
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import orjson

from api.reads import trades
from api.reads.candles import CANDLES
from api.reads.cursor import Cursor
from api.reads.recent import RecentAnswers
from pipeline.core.settings import DatabaseSettings

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0

Row = dict[str, Any]


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to reset (see the module docstring)."""


class PriceReads:
    """The stored-trade reads; one per service, opened and closed by the lifespan."""

    def __init__(self, pool: asyncpg.Pool, latest_ttl_s: float = 0.0) -> None:
        self._pool = pool
        self._latest = RecentAnswers(self._fetch_latest_trade, latest_ttl_s)

    @classmethod
    async def open(cls, settings: DatabaseSettings, latest_ttl_s: float = 0.0) -> PriceReads:
        pool = await asyncpg.create_pool(
            settings.asyncpg_dsn,
            min_size=1,
            max_size=settings.pool_size,
            reset=_keep_session,
        )
        return cls(pool, latest_ttl_s)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            logger.warning("read pool did not close within %.0f s; terminating", CLOSE_TIMEOUT_S)
            self._pool.terminate()

    async def latest_trade(self, symbol: str) -> bytes | None:
        """The symbol's newest stored trade as its JSON object (orjson's bytes of the row), at
        most `latest_ttl_s` old (see RecentAnswers); None if the symbol has no trades."""
        return await self._latest.get(symbol)

    async def _fetch_latest_trade(self, symbol: str) -> bytes | None:
        # Kept encoded: a kept answer is sent many times, and encoded once.
        row = await self._pool.fetchrow(trades.LATEST_TRADE, symbol)
        return None if row is None else orjson.dumps(dict(row))

    async def latest_trades(self) -> list[Row]:
        return [dict(row) for row in await self._pool.fetch(trades.LATEST_TRADES)]

    async def is_tracked(self, symbol: str) -> bool:
        return bool(await self._pool.fetchval(trades.IS_TRACKED, symbol))

    async def history(
        self, symbol: str, start: int | None, end: int | None, after: Cursor | None, limit: int
    ) -> list[Row]:
        sql, args = trades.history(symbol, start, end, after, limit)
        return [dict(row) for row in await self._pool.fetch(sql, *args)]

    async def newest_trade_time(self, symbol: str) -> int | None:
        value = await self._pool.fetchval(trades.NEWEST_TRADE_TIME, symbol)
        return None if value is None else int(value)

    async def candles(
        self, symbol: str, interval_ms: int, start: int, end: int, limit: int
    ) -> list[Row]:
        rows = await self._pool.fetch(CANDLES, symbol, interval_ms, start, end, limit)
        return [dict(row) for row in rows]

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

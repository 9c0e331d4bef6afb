"""The /prices reads: an asyncpg pool of their own, and rows encoded straight to JSON.

GET /prices/{symbol} is the hot read (≥ 1,000 req/s, docs/perf.md); its latest answer per
symbol is kept briefly (RecentAnswers) and the route sends it. Through the SQLAlchemy engine
most of a read's CPU went to building and compiling the statement, the pooled connection's
pre-ping and transaction, and response-model validation; this path skips what buys nothing
for a single-statement read:

* no SQLAlchemy: the statements are fixed SQL (api.queries) that asyncpg prepares once per
  connection; no statement building, compiling or result wrapping per request;
* no explicit transaction and no pre-ping: a lone SELECT is atomic on its own, and a dead
  connection fails the query (→ 503 like any outage, api.errors) and is replaced by the pool;
* no reset query when a connection goes back to the pool: these connections only ever run
  the SELECTs below, so there is no session state to clear (asyncpg still rolls back an open
  transaction, were there one);
* no response-model validation: the columns are named and ordered as the response models'
  fields and typed by the table (NOT NULL columns, decimals cast to text in SQL), so a row is
  its JSON object as is; orjson encodes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import asyncpg
import orjson
from starlette.responses import Response

from api.reads import trades
from api.reads.trades import Cursor
from pipeline.core.settings import DatabaseSettings

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0

Row = dict[str, Any]
T = TypeVar("T")


class OrjsonResponse(Response):
    """`application/json`, encoded by orjson: the same bytes as FastAPI's for these shapes
    (compact separators; keys in insertion order; strings, ints, bools and null only)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class RecentAnswers(Generic[T]):
    """A symbol's answer reused for `ttl_s`, and fetched once for all the requests waiting on it.

    The hot read is one symbol asked a thousand times a second: each asking PostgreSQL costs the
    database and the event loop far more than the answer changes. Only found answers are kept
    (the symbols with trades, a bounded set), so requests for unknown symbols cannot grow it.

    Refreshed ahead: a request that finds its answer past half its life starts the next fetch
    in the background and still gets the kept answer, so while the symbol is asked for, no
    request waits for PostgreSQL (under full ingest a fetch takes milliseconds, and every
    request arriving meanwhile used to wait for it). An answer is still never older than
    `ttl_s`: past that, requests wait for the fetch, as the first one does.
    """

    def __init__(self, fetch: Callable[[str], Awaitable[T | None]], ttl_s: float) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        # symbol → (monotonic time of the fetch, the answer)
        self._answers: dict[str, tuple[float, T]] = {}
        self._fetching: dict[str, asyncio.Task[T | None]] = {}

    async def get(self, symbol: str) -> T | None:
        if self._ttl_s <= 0:
            return await self._fetch(symbol)
        kept = self._fresh(symbol)
        if kept is not None:
            return kept
        # Shielded: a client that goes away must not cancel the fetch the others wait for.
        return await asyncio.shield(self._refreshing(symbol))

    def _fresh(self, symbol: str) -> T | None:
        kept = self._answers.get(symbol)
        if kept is None:
            return None
        fetched_at, answer = kept
        age = time.monotonic() - fetched_at
        if age >= self._ttl_s:
            return None
        if age >= self._ttl_s / 2 and symbol not in self._fetching:
            self._refreshing(symbol).add_done_callback(_retrieve)
        return answer

    def _refreshing(self, symbol: str) -> asyncio.Task[T | None]:
        """The symbol's fetch in progress, started if there is none."""
        task = self._fetching.get(symbol)
        if task is None:
            task = asyncio.create_task(self._refresh(symbol))
            self._fetching[symbol] = task
        return task

    async def _refresh(self, symbol: str) -> T | None:
        started = time.monotonic()
        try:
            answer = await self._fetch(symbol)
        finally:
            del self._fetching[symbol]
        if answer is not None:
            self._answers[symbol] = (started, answer)
        else:
            self._answers.pop(symbol, None)
        return answer


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A refresh ahead that failed (database down): the kept answer expires, and the requests
    after it wait for a fetch of their own, which reports the error."""
    if not task.cancelled() and task.exception() is not None:
        logger.debug("refresh ahead failed: %s", task.exception())


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
        rows = await self._pool.fetch(trades.CANDLES, symbol, interval_ms, start, end, limit)
        return [dict(row) for row in rows]

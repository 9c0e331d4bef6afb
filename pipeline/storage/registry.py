"""SymbolRegistry: the tracked symbols in PostgreSQL, shared by every instance of the service.

POST/DELETE /symbols change the table; every producer instance polls it (cheap primary-key
scan) and re-subscribes within `POLL_INTERVAL_S`, whichever instance took the request.
Polling rather than LISTEN/NOTIFY: it survives database restarts without extra state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.storage.outage import is_outage
from pipeline.storage.tables import crypto_prices, tracked_symbols

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
# The stored id right before the first missing one, among a symbol's ids >= :since.
_FIRST_HOLE = text(
    """
    SELECT trade_id FROM (
        SELECT trade_id, lead(trade_id) OVER (ORDER BY trade_id) AS next_id
        FROM crypto_prices WHERE symbol = :symbol AND trade_id >= :since
    ) AS ids
    WHERE next_id > trade_id + 1
    ORDER BY trade_id
    LIMIT 1
    """
)


@dataclass(frozen=True, slots=True)
class TrackedSymbol:
    symbol: str
    added_at: datetime
    source: str


class SymbolRegistry:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def seed(self, symbols: Iterable[str], source: str = "settings") -> int:
        """Fill an empty registry (first start); later starts keep what users changed."""
        async with self._engine.begin() as connection:
            if await connection.scalar(select(func.count()).select_from(tracked_symbols)):
                return 0
            rows = [{"symbol": symbol, "source": source} for symbol in symbols]
            if rows:
                await connection.execute(insert(tracked_symbols).on_conflict_do_nothing(), rows)
            return len(rows)

    async def list(self) -> list[TrackedSymbol]:
        async with self._engine.connect() as connection:
            result = await connection.execute(select(tracked_symbols).order_by("symbol"))
            return [TrackedSymbol(*row) for row in result]

    async def symbols(self) -> frozenset[str]:
        async with self._engine.connect() as connection:
            return frozenset(await connection.scalars(select(tracked_symbols.c.symbol)))

    async def add(self, symbol: str, source: str = "api") -> bool:
        """Track a symbol; False when it was tracked already."""
        statement = (
            insert(tracked_symbols)
            .values(symbol=symbol, source=source)
            .on_conflict_do_nothing()
            .returning(tracked_symbols.c.symbol)
        )
        async with self._engine.begin() as connection:
            return (await connection.scalar(statement)) is not None

    async def remove(self, symbol: str) -> bool:
        """Stop tracking a symbol; False when it was not tracked. Its stored trades stay."""
        statement = delete(tracked_symbols).where(tracked_symbols.c.symbol == symbol)
        async with self._engine.begin() as connection:
            return (await connection.execute(statement)).rowcount > 0

    async def follow(self) -> AsyncIterator[frozenset[str]]:
        """Yield the tracked set now and again whenever it changes; rides out database outages."""
        current: frozenset[str] | None = None
        while True:
            try:
                latest = await self.symbols()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                logger.warning("cannot read tracked symbols, keeping %s: %s", current, exc)
            else:
                if latest != current:
                    current = latest
                    yield current
            await asyncio.sleep(POLL_INTERVAL_S)

    async def resume_points(self, symbols: Iterable[str], window: int) -> dict[str, int]:
        """Per symbol, the trade id a restarted source resumes from (its first live trade
        backfills everything after it).

        The newest stored id — unless the newest `window` ids have a hole: a crash in the middle
        of a backfill stores later live trades but not the rest of the gap. Then the id before
        the first hole, so that the gap is fetched again (ids stored since come as duplicates).
        """
        found: dict[str, int] = {}
        async with self._engine.connect() as connection:
            for symbol in symbols:
                # Index probes and one range scan of the primary key per symbol.
                newest = await connection.scalar(
                    select(func.max(crypto_prices.c.trade_id)).where(
                        crypto_prices.c.symbol == symbol
                    )
                )
                if newest is None:
                    continue
                before_hole = await connection.scalar(
                    _FIRST_HOLE, {"symbol": symbol, "since": int(newest) - window}
                )
                found[symbol] = int(before_hole if before_hole is not None else newest)
        return found

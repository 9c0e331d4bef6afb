"""SymbolRegistry: the tracked symbols in PostgreSQL, shared by every instance of the service.

POST/DELETE /symbols change the table; every producer instance polls it (cheap primary-key
scan) and re-subscribes within `POLL_INTERVAL_S`, whichever instance took the request.
Polling rather than LISTEN/NOTIFY: it survives database restarts without extra state.

Each row says where it came from (`source`): `settings` (named by SYMBOLS at a start), `api`
(POST /symbols) or `exchange` (whole-market mode followed exchangeInfo). A row whose name is not
a valid symbol (written by an older version, or by hand) is never handed to the source: reads
skip it and report it once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.core.symbol_names import SkippedNames, is_valid_name
from pipeline.storage.outage import is_outage
from pipeline.storage.tables import crypto_prices, tracked_symbols

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
SETTINGS_SOURCE = "settings"
API_SOURCE = "api"
EXCHANGE_SOURCE = "exchange"
# What versions before `exchange` wrote for whole-market rows.
LEGACY_EXCHANGE_SOURCE = "exchangeInfo"
EXCHANGE_SOURCES = (EXCHANGE_SOURCE, LEGACY_EXCHANGE_SOURCE)
# Rows per INSERT/DELETE statement: the whole market is a few thousand symbols, and a statement
# has at most 32767 bind parameters.
_CHUNK = 1_000
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


@dataclass(frozen=True, slots=True)
class SettingsApplied:
    added: list[str]  # named by SYMBOLS and not tracked before
    released: list[str]  # tracked only because whole-market mode had added them


class SymbolRegistry:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._skipped = SkippedNames("registry")

    async def track(self, symbols: Iterable[str], source: str) -> list[str]:
        """Track each of `symbols` that is not tracked yet, as coming from `source`; the ones
        added, in order. A tracked symbol keeps its row (and the source that added it first)."""
        names = list(dict.fromkeys(symbols))
        for name in names:
            if not is_valid_name(name):
                raise ValueError(f"not a symbol: {name!r}")
        added: list[str] = []
        async with self._engine.begin() as connection:
            for start in range(0, len(names), _CHUNK):
                rows = [
                    {"symbol": name, "source": source} for name in names[start : start + _CHUNK]
                ]
                statement = (
                    insert(tracked_symbols)
                    .values(rows)
                    .on_conflict_do_nothing()
                    .returning(tracked_symbols.c.symbol)
                )
                added.extend(await connection.scalars(statement))
        order = {name: index for index, name in enumerate(names)}
        return sorted(added, key=order.__getitem__)

    async def release(self, symbols: Iterable[str]) -> list[str]:
        """Stop tracking `symbols`; the ones that were tracked, sorted. Their trades stay."""
        names = sorted(set(symbols))
        released: list[str] = []
        async with self._engine.begin() as connection:
            for start in range(0, len(names), _CHUNK):
                statement = (
                    delete(tracked_symbols)
                    .where(tracked_symbols.c.symbol.in_(names[start : start + _CHUNK]))
                    .returning(tracked_symbols.c.symbol)
                )
                released.extend(await connection.scalars(statement))
        return sorted(released)

    async def apply_settings(self, symbols: Iterable[str]) -> SettingsApplied:
        """A start with explicit SYMBOLS, in one transaction (other instances never see a named
        symbol missing): each of `symbols` is tracked — added with source `settings` if missing,
        a whole-market row of it becomes `settings` —, and the symbols only whole-market mode
        had added are released. Rows from the API or earlier settings stay."""
        names = list(dict.fromkeys(symbols))
        for name in names:
            if not is_valid_name(name):
                raise ValueError(f"not a symbol: {name!r}")
        whole_market = tracked_symbols.c.source.in_(EXCHANGE_SOURCES)
        async with self._engine.begin() as connection:
            released = await connection.scalars(
                delete(tracked_symbols)
                .where(whole_market, tracked_symbols.c.symbol.not_in(names))
                .returning(tracked_symbols.c.symbol)
            )
            released_names = sorted(released)
            await connection.execute(
                update(tracked_symbols)
                .where(whole_market, tracked_symbols.c.symbol.in_(names))
                .values(source=SETTINGS_SOURCE)
            )
            added: set[str] = set()
            if names:
                added.update(
                    await connection.scalars(
                        insert(tracked_symbols)
                        .values([{"symbol": name, "source": SETTINGS_SOURCE} for name in names])
                        .on_conflict_do_nothing()
                        .returning(tracked_symbols.c.symbol)
                    )
                )
        return SettingsApplied([name for name in names if name in added], released_names)

    async def tracked(self) -> list[TrackedSymbol]:
        """The rows the source may subscribe to: invalid names are skipped and reported once."""
        rows = await self.list()
        valid = set(self._skipped.valid(row.symbol for row in rows))
        return [row for row in rows if row.symbol in valid]

    async def list(self) -> list[TrackedSymbol]:
        """Every row, valid name or not (what the table holds)."""
        async with self._engine.connect() as connection:
            result = await connection.execute(select(tracked_symbols).order_by("symbol"))
            return [TrackedSymbol(*row) for row in result]

    async def symbols(self) -> frozenset[str]:
        """The tracked names the source may subscribe to (invalid ones skipped and reported)."""
        async with self._engine.connect() as connection:
            names = await connection.scalars(select(tracked_symbols.c.symbol))
            return frozenset(self._skipped.valid(names))

    @property
    def skipped(self) -> tuple[str, ...]:
        """The invalid names found in the table so far (as logged)."""
        return self._skipped.names

    async def add(self, symbol: str, source: str = API_SOURCE) -> bool:
        """Track a symbol; False when it was tracked already."""
        return bool(await self.track([symbol], source))

    async def remove(self, symbol: str) -> bool:
        """Stop tracking a symbol; False when it was not tracked. Its stored trades stay."""
        return bool(await self.release([symbol]))

    async def follow(self) -> AsyncGenerator[frozenset[str], None]:
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

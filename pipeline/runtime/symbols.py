"""Which symbols the producer tracks: SYMBOLS applied at every start, and whole-market mode.

Explicit SYMBOLS (or `symbols:` in settings): at every start each named symbol is tracked —
added to the registry if missing, with source `settings` —, so a restart never streams less than
SYMBOLS names. Symbols added via the API stay, and so do symbols an earlier SYMBOLS named (the
registry is shared by every instance; DELETE /symbols releases them). A start with explicit
SYMBOLS ends whole-market mode: the symbols only that mode had added (source `exchange`) are
released — nobody named them. The `tracked symbols at start` log line lists the set by source.

SYMBOLS=ALL: `ListingsFollower` polls exchangeInfo every `binance.listings_poll_s`. The registry
then follows the exchange: every valid TRADING symbol is tracked (new listings with source
`exchange`), and every tracked symbol the exchange no longer lists as TRADING is released,
whoever added it — a delisted symbol cannot stream; the log line names it with its source, and
it comes back (as `exchange`) if it is listed again. Invalid names are skipped and reported
once each (`pipeline_symbols_skipped_total`). Nothing here stops the poll: an error keeps the
tracked set until the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from pipeline.core.settings import ALL_SYMBOLS, Settings
from pipeline.core.symbol_names import is_valid_name, shown
from pipeline.exchange.client import ExchangeClient, ExchangeError, ExchangeUnavailable
from pipeline.storage.outage import is_outage
from pipeline.storage.registry import EXCHANGE_SOURCE, SymbolRegistry, TrackedSymbol

logger = logging.getLogger(__name__)

# Names per source in one log line; the rest are counted.
LOGGED_NAMES = 30


def describe(rows: Iterable[TrackedSymbol]) -> str:
    """`settings=BTCUSDT,ETHUSDT api=ADAUSDT`: the symbols by the source that added them."""
    by_source: dict[str, list[str]] = {}
    for row in rows:
        by_source.setdefault(row.source, []).append(row.symbol)
    return " ".join(f"{source}={names_of(names)}" for source, names in sorted(by_source.items()))


def names_of(names: Sequence[str]) -> str:
    listed = ",".join(names[:LOGGED_NAMES])
    return listed + (f",...({len(names)} in all)" if len(names) > LOGGED_NAMES else "")


async def track_at_start(registry: SymbolRegistry, settings: Settings) -> frozenset[str]:
    """Apply the symbols setting to the registry and log what is tracked; the tracked names."""
    if settings.symbols == ALL_SYMBOLS:
        rows = await registry.tracked()
        logger.info(
            "tracked symbols at start count=%d %s (whole-market mode: exchangeInfo every %g s)",
            len(rows),
            describe(rows),
            settings.binance.listings_poll_s,
        )
        return frozenset(row.symbol for row in rows)
    applied = await registry.apply_settings(settings.symbols)
    if applied.released:
        logger.info(
            "released the symbols whole-market mode had added, SYMBOLS names them not count=%d %s",
            len(applied.released),
            names_of(applied.released),
        )
    rows = await registry.tracked()
    named = set(settings.symbols)
    logger.info(
        "tracked symbols at start count=%d %s (SYMBOLS=%s; added now: %s; not in SYMBOLS: %s)",
        len(rows),
        describe(rows),
        ",".join(settings.symbols),
        names_of(applied.added) or "none",
        names_of([row.symbol for row in rows if row.symbol not in named]) or "none",
    )
    return frozenset(row.symbol for row in rows)


def _logged(name: str) -> str:
    # A bad name written by an older version may hold anything, control characters included.
    return name if is_valid_name(name) else shown(name)


class ListingsFollower:
    """Whole-market mode: keeps the registry equal to the exchange's valid TRADING symbols."""

    def __init__(
        self, exchange: ExchangeClient, registry: SymbolRegistry, interval_s: float
    ) -> None:
        self._exchange = exchange
        self._registry = registry
        self._interval_s = interval_s

    async def run(self) -> None:
        """Sync now and every `interval_s` until cancelled; never raises otherwise."""
        while True:
            try:
                await self.sync()
            except (ExchangeError, ExchangeUnavailable) as exc:
                logger.warning("whole market: exchangeInfo unusable, tracked set kept: %s", exc)
            except Exception as exc:
                if is_outage(exc):
                    logger.warning("whole market: registry unreachable, tracked set kept: %s", exc)
                else:
                    # Not expected, and a restart would meet it again: reported, retried.
                    logger.exception("whole market: listings not synced, tracked set kept")
            await asyncio.sleep(self._interval_s)

    async def sync(self) -> tuple[list[str], list[str]]:
        """One poll: track new listings, release delisted symbols; (added, released)."""
        listings = await self._exchange.listings()
        if not listings.trading:
            # A listing without one tradable symbol is a broken answer, not the market closing.
            logger.warning(
                "whole market: exchangeInfo lists no valid TRADING symbol (%d entries), "
                "tracked set kept",
                listings.listed,
            )
            return [], []
        rows = await self._registry.list()
        tracked = {row.symbol: row.source for row in rows}
        added = await self._registry.track(
            sorted(listings.trading - tracked.keys()), EXCHANGE_SOURCE
        )
        released = await self._registry.release(set(tracked) - listings.trading)
        if added or released:
            logger.info(
                "whole market: listings changed added=%s released=%s trading=%d skipped=%d",
                names_of(added) or "none",
                names_of([f"{_logged(name)}({tracked[name]})" for name in released]) or "none",
                len(listings.trading),
                listings.skipped,
            )
        return added, released

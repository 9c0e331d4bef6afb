"""`Feed`: the exchange simulator as the benchmark drives it.

The simulator runs in the bench process with its clock at rate 0, so no trade happens unless
the bench asks: `prepare(n)` pre-renders n trades (before the clock starts) and `flood()` sends
them as fast as the service reads; `steady(rate, seconds)` runs the clock at a fixed total rate. The
simulator's tape (`trades_emitted()`) is the ground truth of what was sent.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from devtools.simulator import BinanceSimulator, SimulatorConfig

# Symbols with realistic price profiles in the simulator come first.
KNOWN_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT")


def symbols_for(count: int) -> list[str]:
    """`count` valid Binance-shaped symbols: the well-known ones, then S001USDT, S002USDT, …"""
    extra = [f"S{i:03d}USDT" for i in range(1, max(count - len(KNOWN_SYMBOLS), 0) + 1)]
    return [*KNOWN_SYMBOLS, *extra][:count]


@dataclass(frozen=True)
class Flood:
    trades: int  # unique trades executed (each sent once, ~duplicate_ratio of them twice)
    started: float  # perf_counter when the first frame went out
    sent: float  # perf_counter when the last frame was handed to the socket


class Feed:
    def __init__(self, symbols: list[str], duplicate_ratio: float, seed: int) -> None:
        self.symbols = symbols
        self.sim = BinanceSimulator(
            SimulatorConfig(
                symbols=list(symbols),
                rate_per_symbol=0.0,
                duplicate_ratio=duplicate_ratio,
                seed=seed,
            )
        )
        self._prepared = 0

    async def __aenter__(self) -> Self:
        await self.sim.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.sim.stop()

    @property
    def ws_url(self) -> str:
        return self.sim.ws_url

    @property
    def rest_url(self) -> str:
        return self.sim.rest_url

    async def wait_subscribed(self, timeout: float) -> None:
        """Until the service's connections carry every symbol's trade stream."""
        wanted = {f"{symbol.lower()}@trade" for symbol in self.symbols}
        deadline = time.monotonic() + timeout
        while not wanted <= {s for streams in self.sim.subscriptions() for s in streams}:
            if time.monotonic() > deadline:
                raise TimeoutError(f"service did not subscribe to all symbols in {timeout:.0f} s")
            await asyncio.sleep(0.05)

    def sent(self) -> dict[str, set[int]]:
        """Every trade id that happened per symbol: the rows the database must end up with."""
        return self.sim.trades_emitted()

    def last_ids(self) -> dict[str, int]:
        before_first = self.sim.config.start_trade_id - 1
        return {symbol: max(ids, default=before_first) for symbol, ids in self.sent().items()}

    def prepare(self, n: int) -> dict[str, int]:
        """Render about `n` trades (a multiple of the symbol count) for the next `flood()`,
        before any clock starts; return the last trade id per symbol once they are sent."""
        per_symbol = math.ceil(n / len(self.symbols))
        last = self.last_ids()
        self._prepared = self.sim.prepare(per_symbol)
        return {symbol: last[symbol] + per_symbol for symbol in self.symbols}

    async def flood(self) -> Flood:
        """Send the prepared trades as fast as the service reads them."""
        started = time.perf_counter()
        await self.sim.flood()
        sent = time.perf_counter()
        trades, self._prepared = self._prepared, 0
        return Flood(trades, started, sent)

    async def steady(self, rate: float, seconds: float) -> dict[str, int]:
        """Trades at `rate` per second over all symbols for `seconds`; the last ids after."""
        self.sim.config.rate_per_symbol = rate / len(self.symbols)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.sim.config.rate_per_symbol = 0.0
        await asyncio.sleep(0.05)  # one more clock tick: the fraction owed stays below 1 trade
        return self.last_ids()

"""`SimulatorConfig`: the knobs of the simulated exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from devtools.simulator.market import SYMBOL_RE

DEFAULT_SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]
# Names a real exchangeInfo could list that break ^[A-Z0-9]{2,20}$: a separator, lower case, a
# non-ASCII letter, too short, too long, a space, a slash, empty, line breaks (one trailing: a
# regex `$` without fullmatch lets it through).
ODD_LISTINGS = (
    "BTC-USDT",
    "btcusdt",
    "ÄBCUSDT",
    "X",
    "A" * 21,
    "ETH USDT",
    "SOL/USDT",
    "",
    "BAD\nNAME",
    "ETHUSDT\n",
)


@dataclass(frozen=True)
class ListingChange:
    """A listing change `at_s` seconds after start(): a symbol listed (it starts trading) or
    delisted (it stops trading; exchangeInfo shows it as BREAK)."""

    at_s: float
    action: Literal["list", "delist"]
    symbol: str


@dataclass
class SimulatorConfig:
    """Knobs of the simulated exchange. Rates, ratios and intervals may be changed at runtime
    (they are read on every tick / frame); `symbols`, `odd_listings` and `listing_changes` only
    at construction (at runtime: add_listing, delist, add_odd_listing)."""

    symbols: list[str] = field(default_factory=lambda: list(DEFAULT_SYMBOLS))
    rate_per_symbol: float = 10.0  # trades per second per listed symbol while running
    burst_every_s: float | None = None  # every so often, burst_size extra trades per symbol
    burst_size: int = 0
    disconnect_every_s: float | None = None  # close every WS connection periodically
    malformed_ratio: float = 0.0  # share of delivered trades whose frame is corrupted
    duplicate_ratio: float = 0.0  # share of delivered trades whose frame is sent twice
    ping_interval_s: float = 20.0
    history_size: int = 100_000  # trades kept per symbol for historicalTrades
    max_pending_frames: int = 10_000  # per-connection outbox bound (slow-consumer cut-off)
    # REST lags the stream: historicalTrades and trades serve only trades at least this old.
    rest_lag_s: float = 0.0
    # A trade happens on each symbol a connection subscribes to, as it subscribes: like a busy
    # market, a new connection has a frame waiting the moment it opens.
    trade_on_subscribe: bool = False
    seed: int = 0
    start_trade_id: int = 1_000_000
    # Listed in exchangeInfo as TRADING, with no market behind them (no trades, no streams).
    odd_listings: list[str] = field(default_factory=list)
    # Listings and delistings over time, applied by the clock (paused or not).
    listing_changes: list[ListingChange] = field(default_factory=list)
    # The past tape (devtools/simulator/history.py): trades that happened before the simulator
    # started, served by historicalTrades and aggTrades for history jobs.
    history_days: float = 0.0  # days of past trades per symbol
    history_rate_per_s: float = 1.0  # their rate
    history_end_ms: int | None = None  # where the past ends (default: when the simulator is built)
    # REST weight per clock minute above which requests get 429 (Binance: 6000); None: counted
    # (X-MBX-USED-WEIGHT-1M, BinanceSimulator.rest_weight) but never refused.
    rest_weight_limit: int | None = None

    def __post_init__(self) -> None:
        for symbol in self.symbols:
            if not SYMBOL_RE.fullmatch(symbol):
                raise ValueError(f"symbols: {symbol!r} is not an upper-case Binance symbol")
        for name in ("malformed_ratio", "duplicate_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be between 0 and 1")
        if self.rate_per_symbol < 0 or self.burst_size < 0:
            raise ValueError("rate_per_symbol and burst_size: must not be negative")
        if self.rest_lag_s < 0:
            raise ValueError("rest_lag_s: must not be negative")
        for name in self.odd_listings:
            if SYMBOL_RE.fullmatch(name):
                raise ValueError(f"odd_listings: {name!r} is a valid symbol (list it in symbols)")
        for change in self.listing_changes:
            if change.at_s < 0 or change.action not in ("list", "delist"):
                raise ValueError(f"listing_changes: {change} (at_s >= 0, list or delist)")
            if not SYMBOL_RE.fullmatch(change.symbol):
                raise ValueError(f"listing_changes: {change.symbol!r} is not a Binance symbol")
        if self.history_days < 0 or self.history_rate_per_s <= 0:
            raise ValueError("history_days: must not be negative; history_rate_per_s: positive")
        if self.rest_weight_limit is not None and self.rest_weight_limit < 1:
            raise ValueError("rest_weight_limit: must be positive (or None)")

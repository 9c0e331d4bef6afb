"""`SimulatorConfig`: the knobs of the simulated exchange."""

from __future__ import annotations

from dataclasses import dataclass, field

from devtools.simulator.market import SYMBOL_RE

DEFAULT_SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]


@dataclass
class SimulatorConfig:
    """Knobs of the simulated exchange. Rates, ratios and intervals may be changed at runtime
    (they are read on every tick / frame); `symbols` only at construction (use add_listing)."""

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
    seed: int = 0
    start_trade_id: int = 1_000_000
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
            if not SYMBOL_RE.match(symbol):
                raise ValueError(f"symbols: {symbol!r} is not an upper-case Binance symbol")
        for name in ("malformed_ratio", "duplicate_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be between 0 and 1")
        if self.rate_per_symbol < 0 or self.burst_size < 0:
            raise ValueError("rate_per_symbol and burst_size: must not be negative")
        if self.history_days < 0 or self.history_rate_per_s <= 0:
            raise ValueError("history_days: must not be negative; history_rate_per_s: positive")
        if self.rest_weight_limit is not None and self.rest_weight_limit < 1:
            raise ValueError("rest_weight_limit: must be positive (or None)")

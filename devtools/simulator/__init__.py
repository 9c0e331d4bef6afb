"""A Binance-compatible exchange simulator for tests, `make demo` and the benchmark.

The sandbox has no internet, so this serves Binance's spot WS trade streams and the REST
endpoints the pipeline uses (historicalTrades, trades, exchangeInfo, ping, time) on one port,
with knobs for rate, bursts, disconnects, malformed frames and duplicates. Nothing in the
product imports it. Run it standalone with `python -m devtools.simulator --help`.
Its exchangeInfo can list odd names, and symbols listed and delisted over time (config.py).
"""

from devtools.simulator.config import (
    DEFAULT_SYMBOLS,
    ODD_LISTINGS,
    ListingChange,
    SimulatorConfig,
)
from devtools.simulator.market import MALFORMED_KINDS
from devtools.simulator.server import BinanceSimulator
from devtools.simulator.subscriber import MAX_MESSAGES_PER_SECOND

__all__ = [
    "DEFAULT_SYMBOLS",
    "MALFORMED_KINDS",
    "MAX_MESSAGES_PER_SECOND",
    "ODD_LISTINGS",
    "BinanceSimulator",
    "ListingChange",
    "SimulatorConfig",
]

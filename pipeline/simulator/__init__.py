"""A Binance-compatible exchange simulator for tests, `make demo` and the benchmark.

The sandbox has no internet, so this serves Binance's spot WS trade streams and the REST
endpoints the pipeline uses (historicalTrades, trades, exchangeInfo, ping, time) on one port,
with knobs for rate, bursts, disconnects, malformed frames and duplicates. Nothing in the
product imports it. Run it standalone with `python -m pipeline.simulator --help`.
"""

from pipeline.simulator.config import DEFAULT_SYMBOLS, SimulatorConfig
from pipeline.simulator.market import MALFORMED_KINDS
from pipeline.simulator.server import BinanceSimulator
from pipeline.simulator.subscriber import MAX_MESSAGES_PER_SECOND

__all__ = [
    "DEFAULT_SYMBOLS",
    "MALFORMED_KINDS",
    "MAX_MESSAGES_PER_SECOND",
    "BinanceSimulator",
    "SimulatorConfig",
]

"""`python -m devtools.simulator`: run the exchange simulator until Ctrl+C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Literal

from devtools.simulator.config import DEFAULT_SYMBOLS, ListingChange, SimulatorConfig
from devtools.simulator.server import BinanceSimulator

log = logging.getLogger("devtools.simulator")


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimulatorConfig, str, int]:
    """Command line → (config, host, port); exits with a usage error on bad values."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.simulator",
        description="Binance-compatible exchange simulator: WS streams and REST on one port.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--symbols", default=",".join(DEFAULT_SYMBOLS), help="comma list")
    parser.add_argument("--rate", type=float, default=10.0, help="trades/s per symbol")
    parser.add_argument("--burst-every", type=float, metavar="SECONDS")
    parser.add_argument("--burst-size", type=int, default=0, help="trades per symbol per burst")
    parser.add_argument("--disconnect-every", type=float, metavar="SECONDS")
    parser.add_argument("--malformed", type=float, default=0.0, help="ratio of bad frames")
    parser.add_argument("--duplicates", type=float, default=0.0, help="ratio of resent frames")
    parser.add_argument("--ping-interval", type=float, default=20.0, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--odd-listings",
        default="",
        metavar="NAMES",
        help="comma list of invalid names exchangeInfo lists as TRADING (e.g. BTC-USDT,btcusdt)",
    )
    parser.add_argument(
        "--list-at",
        action="append",
        default=[],
        type=_listing_change("list"),
        metavar="SYMBOL@SECONDS",
        help="list SYMBOL that long after start (repeatable)",
    )
    parser.add_argument(
        "--delist-at",
        action="append",
        default=[],
        type=_listing_change("delist"),
        metavar="SYMBOL@SECONDS",
        help="delist SYMBOL (exchangeInfo: BREAK) that long after start (repeatable)",
    )
    parser.add_argument("--history-days", type=float, default=0.0, help="past tape per symbol")
    parser.add_argument("--history-rate", type=float, default=1.0, help="its trades/s")
    parser.add_argument("--weight-limit", type=int, help="REST weight/min before 429")
    args = parser.parse_args(argv)
    try:
        config = SimulatorConfig(
            symbols=[s.strip().upper() for s in args.symbols.split(",") if s.strip()],
            rate_per_symbol=args.rate,
            burst_every_s=args.burst_every,
            burst_size=args.burst_size,
            disconnect_every_s=args.disconnect_every,
            malformed_ratio=args.malformed,
            duplicate_ratio=args.duplicates,
            ping_interval_s=args.ping_interval,
            seed=args.seed,
            odd_listings=[name for name in args.odd_listings.split(",") if name],
            listing_changes=[*args.list_at, *args.delist_at],
            history_days=args.history_days,
            history_rate_per_s=args.history_rate,
            rest_weight_limit=args.weight_limit,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return config, args.host, args.port


def _listing_change(action: Literal["list", "delist"]) -> Callable[[str], ListingChange]:
    def parse(value: str) -> ListingChange:
        symbol, sep, seconds = value.rpartition("@")
        try:
            at_s = float(seconds)
        except ValueError:
            at_s = -1.0
        if not sep or not symbol or at_s < 0:
            raise argparse.ArgumentTypeError(f"expected SYMBOL@SECONDS, got {value!r}")
        return ListingChange(at_s, action, symbol.strip().upper())

    return parse


async def _run(config: SimulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with BinanceSimulator(config, host, port) as sim:
        log.info(
            "simulator ready BINANCE_WS_URL=%s BINANCE_REST_URL=%s symbols=%s rate=%s/s",
            sim.ws_url,
            sim.rest_url,
            ",".join(config.symbols),
            config.rate_per_symbol,
        )
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    config, host, port = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one start-up line is enough
    asyncio.run(_run(config, host, port))


if __name__ == "__main__":
    main()

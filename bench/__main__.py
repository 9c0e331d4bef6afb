"""`python -m bench [--quick] [--symbols 3,100] [--use-stack-env] [--profile]` (`make bench`).

Progress goes to stderr, the table to stdout, everything to bench/results/latest.json. The exit
status is 1 when a correctness check failed (rows lost or doubled, lag left, a phase broke),
whatever the performance figures; missed targets are reported, not fatal.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench.config import STACK_ENV_FILE, BenchConfig
from bench.report import build_report, format_table, write_json
from bench.run import run_bench
from bench.stack import open_stack
from pipeline.core.errors import StackError

log = logging.getLogger("bench")
QUIET = ("aiokafka", "kafka", "websockets", "httpx", "httpcore", "asyncio", "devtools.simulator")


class _Elapsed(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._started = time.monotonic()

    def format(self, record: logging.LogRecord) -> str:
        return f"bench {time.monotonic() - self._started:6.1f}s  {record.getMessage()}"


def _symbol_sets(value: str) -> tuple[int, ...]:
    try:
        sets = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 3,100, got {value!r}") from None
    if not sets or min(sets) < 1:
        raise argparse.ArgumentTypeError("at least one symbol count, each >= 1")
    return sets


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N, short phases (< 2 min)")
    parser.add_argument("-n", type=int, help="trades per flood (default 200,000; quick 5,000)")
    parser.add_argument(
        "--symbols",
        type=_symbol_sets,
        help="symbol counts, the first gets every phase (default 3,100; quick 3)",
    )
    parser.add_argument(
        "--use-stack-env",
        action="store_true",
        help=f"use the servers of {STACK_ENV_FILE} (make stack-up) instead of fresh ones",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the service under pyinstrument; reports in bench/results/profile-*.txt "
        "(rates are then not representative)",
    )
    parser.add_argument("--output", type=Path, help="JSON path (default bench/results/latest.json)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"use_stack_env": args.use_stack_env, "profile": args.profile}
    if args.n is not None:
        overrides["n"] = args.n
    if args.symbols is not None:
        overrides["symbol_sets"] = args.symbols
    if args.output is not None:
        overrides["output"] = args.output
    if args.quick:
        return BenchConfig.quick_run(**overrides)
    return dataclasses.replace(BenchConfig(), **overrides)


async def _run(config: BenchConfig, log_dir: Path) -> dict[str, Any]:
    async with open_stack(config.use_stack_env, STACK_ENV_FILE) as stack:
        raw = await run_bench(config, stack, log_dir)
    return build_report(config, raw)


def _event_loop_run(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop  # the simulator in this process costs less CPU on it
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _allow_open_files() -> None:
    """The service under test holds a socket per push-feed client (1,000 in the stream phase)
    and inherits this limit: raise the soft one to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    _allow_open_files()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Elapsed())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    # A SIGTERM stops the run like Ctrl+C: the service, load generators and the stack it
    # started are stopped on the way out instead of left running.
    signal.signal(signal.SIGTERM, _interrupt)
    log_dir = Path(tempfile.mkdtemp(prefix="crypto-bench-logs-"))
    log.info("service logs in %s", log_dir)
    try:
        report = _event_loop_run(_run(config, log_dir))
    except StackError as exc:
        log.error("cannot start the stack: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    write_json(report, config.output)
    print(format_table(report))
    log.info("results written to %s", config.output)
    if not report["correct"]:
        for failure in report["failures"] or ["a variant did not complete"]:
            log.error("FAILED: %s", failure)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`crypto-pipeline`: the service and the original design's flows as thin commands.

    crypto-pipeline serve              the HTTP service with its roles (= uvicorn api.main:app)
    crypto-pipeline produce            source → Kafka only (PIPELINE_ROLES=producer), no HTTP API
    crypto-pipeline consume            Kafka → PostgreSQL only (PIPELINE_ROLES=consumer)
    crypto-pipeline migrate            alembic upgrade head

Each runs from any directory of an installed wheel: the defaults and the migrations ship inside
the package; environment variables or `--config FILE` (a settings YAML) override them. The local stack and the exchange simulator are
development tools, not commands of the product: `python -m devtools.stack`,
`python -m devtools.simulator`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Literal

import uvicorn

from pipeline.core.errors import ConfigError
from pipeline.core.logs import configure_logging
from pipeline.core.settings import Settings, load_settings
from pipeline.exchange.client import ExchangeClient
from pipeline.runtime.pipeline import Pipeline
from pipeline.storage import migrate
from pipeline.storage.tables import create_engine

logger = logging.getLogger(__name__)


async def _run_roles(settings: Settings) -> None:
    """Run the roles until SIGINT/SIGTERM, then stop them in order; a second signal forces exit."""
    engine = create_engine(settings.database)
    exchange = ExchangeClient(settings.binance)
    pipeline = Pipeline(settings, engine, exchange)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            logger.warning("second signal: exiting without draining")
            sys.exit(130)
        logger.info("stopping: draining the pipeline (signal again to force)")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await migrate.upgrade(engine)
        await pipeline.start()
        logger.info("running roles %s", ",".join(sorted(settings.roles)))
        await stop.wait()
    finally:
        await pipeline.stop()
        await exchange.close()
        await engine.dispose()


async def _migrate(settings: Settings) -> None:
    engine = create_engine(settings.database)
    try:
        await migrate.upgrade(engine)
        logger.info("database at revision %s", await migrate.current_revision(engine))
    finally:
        await engine.dispose()


def _serve(settings: Settings) -> None:
    # By name, as the `uvicorn api.main:app` command does: the HTTP layer sits above this one.
    uvicorn.run(
        "api.main:app",
        host=settings.api.host,
        port=settings.api.port,
        access_log=False,
        log_config=None,  # configure_logging already set up structured logs
    )


def _settings(roles: Literal["producer", "consumer"] | None = None) -> Settings:
    settings = load_settings()
    if roles is not None:
        settings = settings.model_copy(update={"roles": frozenset({roles})})
    configure_logging(settings)
    return settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crypto-pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings YAML instead of the shipped defaults (SETTINGS_FILE)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service and its roles on api.host:api.port")
    commands.add_parser("produce", help="stream trades from the exchange into Kafka")
    commands.add_parser("consume", help="store trades from Kafka in PostgreSQL")
    commands.add_parser("migrate", help="upgrade the database schema to head")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    if options.config is not None:
        os.environ["SETTINGS_FILE"] = options.config
    try:
        if options.command == "serve":
            _serve(_settings())
            return 0
        if options.command == "migrate":
            asyncio.run(_migrate(_settings()))
            return 0
        role: Literal["producer", "consumer"] = (
            "producer" if options.command == "produce" else "consumer"
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_run_roles(_settings(role)))
        return 0
    except ConfigError as exc:
        print(f"crypto-pipeline: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

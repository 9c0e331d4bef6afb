"""Fixtures of the chaos suite: the exchange simulator, scenario runs, private servers to break.

Scenarios that only break the service or the exchange share the session's Kafka broker and
PostgreSQL server (each run has its own topic, group and database). Scenarios that stop a server
get their own (`own_kafka`, `own_postgres`), so the rest of the session is not disturbed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.simulator import BinanceSimulator, SimulatorConfig
from devtools.stack import LocalKafka, LocalPostgres
from tests.chaos.report import Summary, report_dir
from tests.chaos.scenario import FULL, SEED, ChaosRun

StartRun = Callable[..., Awaitable[ChaosRun]]


@pytest.fixture(scope="session")
def chaos_summary() -> Iterator[Summary]:
    summary = Summary("full" if FULL else "ci")
    yield summary
    path = summary.write()
    if path is not None:
        print(f"\nchaos summary written to {path}")


@pytest.fixture
async def chaos(
    request: pytest.FixtureRequest,
    kafka_broker: LocalKafka,
    database_url: str,
    tmp_path: Path,
    chaos_summary: Summary,
) -> AsyncIterator[StartRun]:
    """`await chaos(name, symbols, rate=..., kafka=..., database_url=..., **simulator_knobs)`:
    a started (paused) simulator and a ChaosRun around it; everything is stopped afterwards."""
    runs: list[ChaosRun] = []
    simulators: list[BinanceSimulator] = []
    request.node.chaos_runs = runs

    async def start(
        name: str,
        symbols: list[str],
        *,
        rate: float,
        kafka: str | None = None,
        database: str | None = None,
        **knobs: Any,
    ) -> ChaosRun:
        config = SimulatorConfig(symbols=symbols, rate_per_symbol=rate, seed=SEED, **knobs)
        simulator = BinanceSimulator(config)
        simulator.pause()  # nothing trades before the service has subscribed
        await simulator.start()
        simulators.append(simulator)
        run = ChaosRun(
            name,
            simulator,
            symbols,
            kafka=kafka or kafka_broker.bootstrap_servers,
            database_url=database or database_url,
            log_dir=tmp_path,
            summary=chaos_summary,
        )
        runs.append(run)
        return run

    yield start
    for run in runs:
        await run.close()
    for simulator in simulators:
        await simulator.stop()


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[LocalKafka]:
    """A broker for this module's scenarios only: they stop, kill and restart it."""
    workdir = Path(tempfile.mkdtemp(prefix="chaos-kafka-"))
    broker = LocalKafka(workdir)
    broker.start()
    yield broker
    broker.kill()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def own_postgres() -> AsyncIterator[LocalPostgres]:
    """A PostgreSQL server for one scenario, which stops and starts it. Not under pytest's tmp
    dir: PostgreSQL runs as an unprivileged user, so its directories must be traversable."""
    workdir = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
    await asyncio.to_thread(workdir.chmod, 0o755)
    server = LocalPostgres(workdir)
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop, "immediate")
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, the tail of every service instance's log goes into the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        kept = report_dir() / "failed" / item.name
        for run in getattr(item, "chaos_runs", []):
            for service in run.services:
                # pytest keeps only the last few tmp dirs: the whole log goes next to the summary.
                kept.mkdir(parents=True, exist_ok=True)
                copy = kept / f"{run.name}-{service.log_file.name}"
                shutil.copyfile(service.log_file, copy)
                report.sections.append(
                    (f"{run.name}: {service.name} log tail ({copy})", service.tail())
                )

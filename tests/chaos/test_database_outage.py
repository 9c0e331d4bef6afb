"""PostgreSQL goes away — the server stopped, or the network to it cut — while trades stream:
the consumer commits no offset meanwhile, /ready names the database, and once it is back every
trade is stored exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from devtools.stack import LocalPostgres
from tests.chaos.checks import committed_offsets
from tests.chaos.conftest import StartRun
from tests.chaos.probe import DATABASE_PATHS, ApiProber
from tests.chaos.proxy import TcpProxy
from tests.chaos.scenario import ChaosRun, scale
from tests.chaos.service import ServiceProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.chaos

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
RATE = 100.0

OUTAGES = scale(1, 3)
OUTAGE_S = scale(6.0, 15.0)
# From the server's start: the sink's retry backoff (≤ 5 s) + the backlog of the outage.
RECOVERY_BOUND_S = 20.0
# A batch whose transaction committed just before the stop may still commit its offsets.
SETTLE_S = 1.0

CUTS = scale(2, 10)
CUT_S = scale(3.0, 5.0)


async def hold_outage(run: ChaosRun, service: ServiceProcess, seconds: float) -> dict[str, int]:
    """While the database is unreachable: /ready must answer 503 naming PostgreSQL, and the
    group's committed offsets must not move. Returns what was observed."""
    await asyncio.sleep(SETTLE_S)
    ends = time.monotonic() + seconds - SETTLE_S
    frozen = await committed_offsets(run.kafka, run.group, run.topic)

    async def not_ready() -> bool:
        return (await service.ready())[0] == 503

    await wait_until(not_ready, 5, "/ready answers 503")
    _, body = await service.ready()
    postgres = body["detail"]["checks"]["postgres"]
    assert not postgres["ok"] and "PostgreSQL" in postgres["detail"], body
    samples, lag = 0, 0
    while time.monotonic() < ends:
        now = await committed_offsets(run.kafka, run.group, run.topic)
        assert now == frozen, f"offsets committed while PostgreSQL was down: {frozen} -> {now}"
        lag = max(lag, await service.total_lag() or 0)
        samples += 1
        await asyncio.sleep(0.5)
    assert lag > 0, "the exchange kept trading, so the consumer must have fallen behind"
    return {"offset_samples": samples, "max_lag": lag}


@pytest.mark.timeout(scale(180, 600))
async def test_postgres_stopped_then_started(chaos: StartRun, own_postgres: LocalPostgres) -> None:
    # The trap: with synchronous_commit=off a crash loses commits already acknowledged — after
    # the consumer committed their offsets. The server's default is made `off` here; the sink
    # must turn it on for its own sessions, and the service must warn about the default.
    admin = await asyncpg.connect(own_postgres.dsn)
    try:
        await admin.execute(f"ALTER DATABASE {own_postgres.database} SET synchronous_commit = off")
    finally:
        await admin.close()
    run = await chaos("postgres_stop", SYMBOLS, rate=RATE, database=own_postgres.url)
    service = run.service()
    await run.start(service)
    assert service.log_count(b"synchronous_commit=off") == 1, "no durability warning at start"
    observed: dict[str, int] = {}
    starting_503 = 0
    async with ApiProber(service) as prober:  # the API answers 503 meanwhile, never 500
        for round_ in range(OUTAGES):
            await asyncio.sleep(run.rng.uniform(1.0, 2.0))
            # A crash-like stop first (no shutdown checkpoint: WAL recovery on start), then clean.
            mode = "immediate" if round_ % 2 == 0 else "fast"
            await asyncio.to_thread(own_postgres.stop, mode)
            run.faults += 1
            observed = await hold_outage(run, service, OUTAGE_S)
            # While it starts (WAL recovery after a crash): "the database system is starting up".
            async with ApiProber(service, DATABASE_PATHS, interval=0.02) as starting:
                await asyncio.to_thread(own_postgres.start)
            starting.assert_no_server_error()
            starting_503 += sum(n for (_, code), n in starting.answers.items() if code == 503)
            await run.recovered(
                time.monotonic(), RECOVERY_BOUND_S, f"after PostgreSQL stop #{run.faults}"
            )
    prober.assert_no_server_error()
    await run.finish(
        f"PostgreSQL stopped {OUTAGE_S:.0f} s",
        RECOVERY_BOUND_S,
        extra={
            **observed,
            "outage_s": OUTAGE_S,
            "api_requests": prober.requests + starting_503,
            "api_503_while_starting": starting_503,
        },
    )


@pytest.fixture
async def database_proxy(postgres_server: LocalPostgres) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(Path(postgres_server.socket_dir) / ".s.PGSQL.5432")
    await proxy.start()
    yield proxy
    await proxy.stop()


def through(proxy: TcpProxy, database_url: str) -> str:
    """The same database, reached over TCP through the proxy."""
    name = urlsplit(database_url).path.lstrip("/")
    return f"postgresql+asyncpg://postgres@{proxy.address}/{name}"


@pytest.mark.timeout(scale(180, 600))
async def test_database_connections_cut_mid_batch(
    chaos: StartRun, database_proxy: TcpProxy, database_url: str
) -> None:
    run = await chaos("postgres_cut", SYMBOLS, rate=RATE)
    run.service_database_url = through(database_proxy, database_url)
    service = run.service()
    await run.start(service)
    for _ in range(CUTS):
        await asyncio.sleep(run.rng.uniform(1.0, 2.0))
        await database_proxy.cut()  # open connections reset, new ones refused
        run.faults += 1
        await hold_outage(run, service, CUT_S)
        await database_proxy.restore()
        await run.recovered(time.monotonic(), RECOVERY_BOUND_S, f"after cut #{run.faults}")
    await run.finish(
        f"connections to PostgreSQL reset, {CUT_S:.0f} s refused",
        RECOVERY_BOUND_S,
        extra={"proxied_connections": database_proxy.accepted},
    )

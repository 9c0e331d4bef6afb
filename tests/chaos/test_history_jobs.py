"""A history job (POST /backfills) survives the service dying mid-job: SIGKILL of the whole
process tree (its claim goes stale and the restarted instance takes it over), then SIGKILL of
the API process alone (its producer worker stops cleanly and hands the job back). The job ends
done, the table holds exactly the exchange's trades of the window, and no page was fetched again
beyond the one in flight at each kill.

The job's symbol is not streamed live, so its rows are only the job's; the live symbol keeps
streaming throughout and must lose nothing either.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import httpx
import psutil
import pytest

from tests.chaos.conftest import StartRun
from tests.chaos.report import Figures
from tests.chaos.scenario import ChaosRun, asyncpg_dsn, scale
from tests.chaos.service import ServiceProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.chaos

LIVE = ["BTCUSDT"]
JOB_SYMBOL = "ETHUSDT"
HISTORY_RATE = 20.0  # past trades per second
WINDOW_MIN = scale(50, 65)  # minutes of past trades the job fetches (1,200 trades a minute)
STALE_S = 5.0
JOB_BOUND_S = scale(180.0, 300.0)


def kill_tree(service: ServiceProcess) -> None:
    """SIGKILL the service and its worker processes at once: nobody stops cleanly."""
    pid = service.pid
    assert pid is not None
    for child in psutil.Process(pid).children(recursive=True):
        os.kill(child.pid, signal.SIGKILL)
    service.kill()


async def job_state(service: ServiceProcess, job_id: int) -> dict[str, Any] | None:
    try:
        return dict(await service.json(f"/backfills/{job_id}"))
    except (httpx.HTTPError, ValueError):
        return None


async def wait_pages(service: ServiceProcess, job_id: int, pages: int) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        job = await job_state(service, job_id)
        if job is not None and job["pages"] >= pages:
            found.update(job)
            return True
        return False

    await wait_until(reached, 60, f"history job {job_id} fetched {pages} pages")
    return found


def page_requests(run: ChaosRun) -> list[int]:
    """The fromId of every historicalTrades request for the job's symbol, in order."""
    found = []
    for target in run.simulator.rest_weight.log:
        url = urlsplit(target)
        params = dict(parse_qsl(url.query))
        if url.path == "/api/v3/historicalTrades" and params.get("symbol") == JOB_SYMBOL:
            found.append(int(params["fromId"]))
    return found


@pytest.mark.timeout(scale(420, 900))
async def test_history_job_resumes_after_sigkill_and_stores_the_exact_window(
    chaos: StartRun,
) -> None:
    run = await chaos(
        "history", LIVE, rate=20.0, history_days=0.05, history_rate_per_s=HISTORY_RATE
    )
    run.simulator.add_listing(JOB_SYMBOL)
    end = run.simulator.history_end_ms - 60_000
    start = end - WINDOW_MIN * 60_000
    expected = run.simulator.history_trades(JOB_SYMBOL, start, end)  # before the clock runs
    service = run.service(
        BINANCE__REST_WEIGHT_PER_MINUTE="1200",
        BINANCE__HISTORY_STALE_S=str(STALE_S),
        BINANCE__HISTORY_HEARTBEAT_S="0.5",
    )
    await run.start(service)
    # The window opened while nothing had traded live yet; with a past tape, the live ids start
    # after it (not at start_trade_id, which Tape assumes): the first live trade marks it.
    run.tape.first = {s: min(run.simulator.trades_emitted()[s]) for s in LIVE}
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
        created = await client.post(
            "/backfills", json={"symbol": JOB_SYMBOL, "start": start, "end": end}
        )
    assert created.status_code == 202, created.text
    job_id = int(created.json()["id"])
    started = time.monotonic()

    # 1. The whole tree dies: the claim stays "running" until it goes stale, then resumes.
    killed_at = await wait_pages(service, job_id, 5)
    kill_tree(service)
    run.faults += 1
    restarted = time.monotonic()
    await run.restart(service)
    resumed = await wait_pages(service, job_id, killed_at["pages"] + 2)
    takeover_s = time.monotonic() - restarted
    assert resumed["state"] == "running"

    # 2. The API process alone dies: its worker stops cleanly and queues the job again.
    service.kill()
    run.faults += 1
    restarted = time.monotonic()
    await run.restart(service)
    await wait_pages(service, job_id, resumed["pages"] + 2)
    handback_s = time.monotonic() - restarted

    async def job_done() -> bool:
        job = await job_state(service, job_id)
        return job is not None and job["state"] == "done"

    await wait_until(job_done, JOB_BOUND_S, f"history job {job_id} done")
    job = await job_state(service, job_id)
    assert job is not None
    job_s = time.monotonic() - started

    # The live stream lost nothing meanwhile (a gap is revealed by the trade after it).
    now = run.tape.ranges()
    await wait_until(lambda: run.streaming_past(now), 60, "streaming again")
    run.simulator.pause()
    await asyncio.sleep(0.5)
    ranges = run.tape.ranges()
    try:
        await wait_until(lambda: run.store.complete(ranges), 60, "every live trade stored")
    except AssertionError:
        live = (await run.store.rows(LIVE)).keys
        lost = sorted(run.tape.expected() - live)
        raise AssertionError(f"{len(lost)} live trades lost: {lost[:3]}..{lost[-3:]}") from None

    connection = await asyncpg.connect(asyncpg_dsn(run.database_url))
    try:
        rows = await connection.fetch(
            "SELECT trade_id, price::text AS price, quantity::text AS quantity, trade_time "
            "FROM crypto_prices WHERE symbol = $1",
            JOB_SYMBOL,
        )
        count, distinct = await connection.fetchrow(
            "SELECT count(*), count(DISTINCT trade_id) FROM crypto_prices WHERE symbol = $1",
            JOB_SYMBOL,
        )
    finally:
        await connection.close()
    truth = {t.id: (Decimal(t.price.decode()), Decimal(t.qty.decode()), t.time) for t in expected}
    stored = {
        r["trade_id"]: (Decimal(r["price"]), Decimal(r["quantity"]), r["trade_time"]) for r in rows
    }
    requests = page_requests(run)
    refetched = len(requests) - len(set(requests))
    run.summary.add(
        Figures(
            scenario=run.name,
            fault="SIGKILL of the service tree, then of the API process, mid history job",
            repetitions=run.faults,
            trades=len(truth),
            stored=len(stored),
            lost=len(truth.keys() - stored.keys()),
            duplicated=count - distinct,
            unexpected=len(stored.keys() - truth.keys()),
            dlq=0,
            recovery_s=round(max(takeover_s, handback_s), 2),
            recovery_bound_s=60.0,
            runtime_s=round(time.monotonic() - run.started, 1),
            extra={
                "pages": job["pages"],
                "pages_refetched": refetched,
                "takeover_s": round(takeover_s, 1),
                "handback_s": round(handback_s, 1),
                "job_s": round(job_s, 1),
            },
        )
    )
    assert stored == truth, "the window's trades, price for price, and nothing else"
    assert count == distinct
    assert job["fetched"] == job["stored"] == len(truth)
    assert refetched <= run.faults, f"{refetched} pages fetched again after {run.faults} kills"
    assert takeover_s < STALE_S + 30

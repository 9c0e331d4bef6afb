"""The history-job phase: a backfill against the simulator's past tape, in trades/s, and how close
that comes to the ceiling the exchange's REST weight limit sets.

The ceiling: Binance allows 6,000 request weight a minute per IP and a historicalTrades page of
1,000 trades costs 25, so no client fetches more than 240,000 trades a minute (4,000/s). The
service runs with exactly that budget (`rest_weight_per_minute` 6000) and its default share for
history jobs (`history_weight_share`: the rest is kept for gap filling), and the simulator
refuses anything above 6,000 a clock minute (429), so the rate is the one a real deployment
would get from Binance, without the network.

Timed from the job's start (claimed, `started_at`) to done (`finished_at`: every trade stored),
both on the service's clock. A job shorter than a minute's weight rides on the budget's
initial burst; `history_trades` of a few minutes' worth measures the sustained rate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.config import BenchConfig
from bench.service import ServiceProcess
from bench.stack import BenchStack
from devtools.simulator import BinanceSimulator, SimulatorConfig
from pipeline.core.settings import PROJECT_ROOT

log = logging.getLogger("bench")

SYMBOL = "ETHUSDT"
WEIGHT_PER_MINUTE = 6_000  # Binance's REST limit per IP
PAGE_WEIGHT = 25  # historicalTrades, 1,000 trades
CEILING_TRADES_PER_MIN = WEIGHT_PER_MINUTE // PAGE_WEIGHT * 1_000
PAST_RATE_PER_S = 50.0  # trades per second on the simulator's past tape


async def history_phase(config: BenchConfig, stack: BenchStack, log_dir: Path) -> dict[str, Any]:
    trades = config.history_trades
    days = trades / PAST_RATE_PER_S / 86_400 * 1.05 + 0.01  # the window, with room on both ends
    simulator = BinanceSimulator(
        SimulatorConfig(
            symbols=["BTCUSDT", SYMBOL],
            rate_per_symbol=0.0,
            seed=config.seed,
            history_days=days,
            history_rate_per_s=PAST_RATE_PER_S,
            rest_weight_limit=WEIGHT_PER_MINUTE,
        )
    )
    end = simulator.history_end_ms - 60_000
    start = end - int(trades / PAST_RATE_PER_S * 1000) + 1
    expected = len(simulator.history_ids(SYMBOL, start, end))
    database = await stack.fresh_database("history")
    await simulator.start()
    try:
        service = ServiceProcess(
            "history",
            {
                "SETTINGS_FILE": str(PROJECT_ROOT / "config" / "settings.yaml"),
                "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
                "DATABASE_URL": stack.url_for(database),
                "KAFKA_TOPIC": stack.topic("history"),
                "KAFKA__GROUP_ID": f"{stack.prefix}_history_sink",
                "SYMBOLS": "BTCUSDT",
                "PIPELINE_ROLES": "producer,consumer",
                "BINANCE_WS_URL": simulator.ws_url,
                "BINANCE_REST_URL": simulator.rest_url,
                "BINANCE__REST_WEIGHT_PER_MINUTE": str(WEIGHT_PER_MINUTE),
            },
            log_dir / "history.log",
        )
        try:
            await service.start(config.phase_timeout_s)
            await service.wait_ready(config.phase_timeout_s)
            async with httpx.AsyncClient(base_url=service.base_url, timeout=10.0) as client:
                created = await client.post(
                    "/backfills", json={"symbol": SYMBOL, "start": start, "end": end}
                )
                created.raise_for_status()
                job_id = created.json()["id"]
                log.info("[history] job %d: %s, %d trades of the past tape", job_id, SYMBOL, trades)
                job = await _finished(client, job_id, config.phase_timeout_s)
        finally:
            await service.stop()
    finally:
        await simulator.stop()
    seconds = (
        datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
    ).total_seconds()
    rate = job["fetched"] / seconds if seconds > 0 else None
    ratio = rate * 60 / CEILING_TRADES_PER_MIN if rate else None
    log.info(
        "  %s: %d trades in %.1f s: %.0f trades/s, %.2f of the REST weight ceiling (%d/min)",
        job["state"], job["fetched"], seconds, rate or 0.0, ratio or 0.0, CEILING_TRADES_PER_MIN,
    )  # fmt: skip
    return {
        "state": job["state"],
        "trades": job["fetched"],
        "stored": job["stored"],
        "expected": expected,
        "pages": job["pages"],
        "seconds": round(seconds, 2),
        "trades_per_s": round(rate) if rate else None,
        "ceiling_trades_per_min": CEILING_TRADES_PER_MIN,
        "vs_weight_ceiling": round(ratio, 3) if ratio else None,
        "weight_by_minute": sorted(simulator.rest_weight.by_minute.values()),
        "weight_refused": simulator.rest_weight.refused,
        "method": (
            f"one job for {SYMBOL}, started_at → finished_at (every trade stored); service at "
            f"{WEIGHT_PER_MINUTE} weight/min with its default history share; the simulator "
            f"refuses above {WEIGHT_PER_MINUTE}/min"
        ),
    }


async def _finished(client: httpx.AsyncClient, job_id: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = (await client.get(f"/backfills/{job_id}")).json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"history job {job_id} not done in {timeout:.0f} s: {job}")
        await asyncio.sleep(0.2)

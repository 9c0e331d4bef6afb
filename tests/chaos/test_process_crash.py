"""The service process dies (SIGKILL) or is stopped (SIGTERM) mid-stream, again and again, and is
started with the same command: every trade ends up stored exactly once."""

from __future__ import annotations

import asyncio
import signal
import time

import orjson
import pytest

from tests.chaos.checks import read_topic
from tests.chaos.conftest import StartRun
from tests.chaos.scenario import FULL, scale

pytestmark = pytest.mark.chaos

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
RATE = 100.0  # trades/s per symbol

KILLS = scale(5, 20)
# From the restart command to caught up: process start (~3 s), consumer group join, backfill of
# the downtime gap by trade id, replay of the uncommitted batch.
KILL_RECOVERY_BOUND_S = 30.0

TERMS = scale(2, 6)
# Pipeline.stop() is bounded by shutdown_timeout_s (20 s) + 2 s grace; a healthy stop is ~1 s.
SHUTDOWN_BOUND_S = 25.0
TERM_RECOVERY_BOUND_S = 30.0
STOPPED = b"service stopped"  # the lifespan's last line


@pytest.mark.timeout(scale(300, 900))
async def test_sigkill_mid_batch_loses_and_doubles_nothing(chaos: StartRun) -> None:
    run = await chaos("sigkill", SYMBOLS, rate=RATE)
    service = run.service()
    await run.start(service)
    for round_ in range(KILLS):
        # Odd rounds kill right after the restart, while the downtime gap is being backfilled
        # and the replayed batch is written; even rounds after a random stretch of streaming.
        early = round_ % 2 == 1
        await asyncio.sleep(run.rng.uniform(0.2, 1.0) if early else run.rng.uniform(1.0, 3.0))
        service.kill()
        run.faults += 1
        restarted = time.monotonic()
        await run.restart(service)
        # The last round (and under CHAOS_FULL every fourth) waits to catch up and measures
        # it; the others kill again before that, so dead members and backfills pile up.
        if round_ == KILLS - 1 or (FULL and round_ % 4 == 2):
            await run.recovered(restarted, KILL_RECOVERY_BOUND_S, f"after SIGKILL #{run.faults}")
    await run.finish("SIGKILL mid-batch + restart", KILL_RECOVERY_BOUND_S)


@pytest.mark.timeout(scale(300, 900))
async def test_sigterm_drains_everything_accepted(chaos: StartRun) -> None:
    run = await chaos("sigterm", SYMBOLS, rate=RATE)
    service = run.service()
    await run.start(service)
    shutdowns: list[float] = []
    for round_ in range(TERMS):
        await asyncio.sleep(run.rng.uniform(1.0, 3.0))
        quiesced = round_ % 2 == 0
        if quiesced:
            # The exchange pauses first: once the service has seen the last trade, a graceful
            # stop must leave every trade in PostgreSQL or in the topic (none left to backfill).
            run.simulator.pause()
            await asyncio.sleep(0.5)
        stopped_before = service.log_count(STOPPED)
        seconds, code = await service.terminate(timeout=SHUTDOWN_BOUND_S + 10)
        run.faults += 1
        shutdowns.append(seconds)
        # uvicorn re-raises the signal once its shutdown is complete: -SIGTERM is a clean exit.
        assert code in (0, -signal.SIGTERM), f"exit code {code} after SIGTERM"
        assert service.log_count(STOPPED) == stopped_before + 1, "lifespan shutdown incomplete"
        assert seconds <= SHUTDOWN_BOUND_S, f"SIGTERM took {seconds:.1f} s"
        if quiesced:
            values = [orjson.loads(r.value) for r in await read_topic(run.kafka, run.topic)]
            in_topic = {(v["symbol"], v["trade_id"]) for v in values}
            stored = (await run.store.rows(run.symbols)).keys
            missing = run.tape.expected() - in_topic - stored
            assert not missing, f"{len(missing)} accepted trades dropped by SIGTERM"
            run.simulator.resume()
        restarted = time.monotonic()
        await run.restart(service)
        await run.recovered(restarted, TERM_RECOVERY_BOUND_S, f"after SIGTERM #{run.faults}")
    await run.finish(
        "SIGTERM + restart",
        TERM_RECOVERY_BOUND_S,
        extra={"worst_shutdown_s": round(max(shutdowns), 2)},
    )

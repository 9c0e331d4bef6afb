"""Two instances on the same symbols, both producing (active-active) and both consuming in one
group, one of them killed and restarted under load: still exactly one row per trade."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.chaos.conftest import StartRun
from tests.chaos.scenario import scale
from tests.waiting import wait_until

pytestmark = pytest.mark.chaos

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
RATE = 100.0
KILLS = scale(1, 4)
# From the restart: the group rebalances twice (the dead member's session timeout, ~10 s, then
# the newcomer) while the other instance keeps storing.
RECOVERY_BOUND_S = 30.0


@pytest.mark.timeout(scale(180, 600))
async def test_two_producers_two_consumers_store_each_trade_once(chaos: StartRun) -> None:
    run = await chaos("active_active", SYMBOLS, rate=RATE)
    instances = [run.service("a"), run.service("b")]
    await run.start(*instances)
    for round_ in range(KILLS):
        await asyncio.sleep(run.rng.uniform(2.0, 4.0))
        victim = instances[round_ % 2]
        victim.kill()  # its partitions move to the survivor, mid-batch
        run.faults += 1
        await asyncio.sleep(run.rng.uniform(0.5, 2.0))
        restarted = time.monotonic()
        await run.restart(victim)
        await run.recovered(restarted, RECOVERY_BOUND_S, f"after killing {victim.name}")
    assigned: list[int] = []

    async def split() -> bool:
        # Every partition owned by exactly one member once the group has settled.
        nonlocal assigned
        statuses = [await instance.json("/pipeline/status") for instance in instances]
        assigned = sorted(p for s in statuses for p in s["consumer"]["assigned"])
        return assigned == [0, 1, 2] and all(s["consumer"]["assigned"] for s in statuses)

    await wait_until(split, RECOVERY_BOUND_S, "partitions split between both members")
    statuses = [await instance.json("/pipeline/status") for instance in instances]
    produced = sum(s["counts"]["produced"] for s in statuses)
    absorbed = sum(s["consumer"]["duplicates"] for s in statuses)
    await run.finish(
        "2 producers + 2 consumers, one SIGKILLed",
        RECOVERY_BOUND_S,
        extra={"produced_by_both": produced, "duplicates_absorbed": absorbed},
    )
    assert absorbed > 0, "both producers publish every trade: the sink must have absorbed twins"

"""ChaosRun: one scenario's exchange, service instances, fault bookkeeping and final verdict.

The shape every scenario follows:
1. the simulator starts paused; the service starts and subscribes (`start()`);
2. the window opens (`Tape.open()`) and the simulator resumes; every symbol gets rows;
3. the scenario injects its faults; after each, `recovered()` measures the time from the end of
   the fault until every producer instance is connected to the exchange and has seen trades
   past that moment, every trade the exchange executed up to that moment is stored, and /ready
   answers 200 on every instance; it asserts that time is within the scenario's bound;
4. `finish()`: the stream runs clean until every producer is streaming again (a trade after a
   gap is what reveals it), the simulator pauses, and once consumer lag is 0 the stored set
   must equal the tape, with count(*) == count(DISTINCT (symbol, trade_id)).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from devtools.simulator import BinanceSimulator
from pipeline.core.settings import ENV_NAMES, PROJECT_ROOT
from tests.chaos.checks import Store, Tape, read_topic
from tests.chaos.report import Figures, Summary
from tests.chaos.service import ServiceProcess
from tests.waiting import wait_until

FULL = os.environ.get("CHAOS_FULL", "") not in ("", "0")
SEED = int(os.environ.get("CHAOS_SEED", "20251125"))
SECTIONS = ("KAFKA__", "DATABASE__", "BINANCE__", "API__")
# Reconnect backoff cap for every chaos service: the default (60 s, gentle on Binance) would make
# a flapping exchange's recovery time mostly waiting; the reconnect logic itself is unchanged.
RECONNECT_MAX_S = "5"
FINAL_LAG_TIMEOUT_S = 60.0
TASK_CRASH = b"crashed; restarting"  # pipeline.supervisor's line when a role raised


def scale(ci: Any, full: Any) -> Any:
    """The CI-sized value, or the longer one under CHAOS_FULL=1."""
    return full if FULL else ci


def _is_setting(name: str) -> bool:
    upper = name.upper()
    return upper in ENV_NAMES or upper == "SETTINGS_FILE" or upper.startswith(SECTIONS)


def asyncpg_dsn(database_url: str) -> str:
    _, _, rest = database_url.partition("://")
    return f"postgresql://{rest}"


class ChaosRun:
    def __init__(
        self,
        name: str,
        simulator: BinanceSimulator,
        symbols: Iterable[str],
        *,
        kafka: str,
        database_url: str,
        log_dir: Path,
        summary: Summary,
    ) -> None:
        self.name = name
        self.simulator = simulator
        self.symbols = sorted(symbols)
        self.kafka = kafka
        self.database_url = database_url
        # What the service is given, when it reaches the database another way (a proxy).
        self.service_database_url: str | None = None
        unique = uuid.uuid4().hex[:8]
        self.topic = f"chaos_{name}_{unique}"
        self.dlq_topic = f"{self.topic}.dlq"
        self.group = f"chaos_{name}_{unique}"
        self.log_dir = log_dir
        self.summary = summary
        self.tape = Tape(simulator, self.symbols)
        self.store = Store(asyncpg_dsn(database_url))
        self.services: list[ServiceProcess] = []
        self.recoveries: list[float] = []
        self.faults = 0
        self.rng = random.Random(f"{SEED}-{name}")
        self.started = time.monotonic()

    # -- services -----------------------------------------------------------------------

    def env(self, roles: str, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not _is_setting(k)}
        env.update(
            {
                "SETTINGS_FILE": str(PROJECT_ROOT / "config" / "settings.yaml"),
                "KAFKA_BOOTSTRAP_SERVERS": self.kafka,
                "DATABASE_URL": self.service_database_url or self.database_url,
                "KAFKA_TOPIC": self.topic,
                "KAFKA__GROUP_ID": self.group,
                "SYMBOLS": ",".join(self.symbols),
                "BINANCE_WS_URL": self.simulator.ws_url,
                "BINANCE_REST_URL": self.simulator.rest_url,
                "BINANCE__RECONNECT_MAX_S": RECONNECT_MAX_S,
                "PIPELINE_ROLES": roles,
                "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("API_KEY", None)
        env.update(extra)
        return env

    def service(
        self, name: str = "service", roles: str = "producer,consumer", **extra: str
    ) -> ServiceProcess:
        service = ServiceProcess(name, self.env(roles, extra), self.log_dir)
        self.services.append(service)
        return service

    async def start(self, *services: ServiceProcess) -> None:
        """Start the instances, open the window once every producer is subscribed, resume the
        exchange and wait until every symbol has rows."""
        self.simulator.pause()
        await asyncio.gather(*(s.start() for s in services))
        producers = sum("producer" in s.env["PIPELINE_ROLES"] for s in services)
        wanted = {f"{s.lower()}@trade" for s in self.symbols}

        async def subscribed() -> bool:
            for service in services:
                service.check_alive()
            full = [subs for subs in self.simulator.subscriptions() if wanted <= set(subs)]
            return len(full) >= producers

        await wait_until(subscribed, 30, "every producer subscribed to every symbol")
        self.tape.open()
        self.simulator.resume()
        await wait_until(lambda: self.store.has_rows(self.symbols), 30, "rows for every symbol")

    async def restart(self, service: ServiceProcess) -> float:
        """The same command again (after a kill or a stop); seconds until /health answers."""
        return await service.start()

    # -- measuring ----------------------------------------------------------------------

    async def recovered(self, since: float, bound: float, what: str) -> float:
        """Seconds from `since` (the fault's end) until the producers stream past now, the
        backlog up to now is stored and every running instance is ready; asserted ≤ `bound`."""
        target = self.tape.ranges()
        running = [s for s in self.services if s.running]

        async def caught_up() -> bool:
            for service in running:
                service.check_alive()
            if not await self.streaming_past(target):
                return False
            if not await self.store.complete(target):
                return False
            for service in running:
                try:
                    if (await service.get("/ready")).status_code != 200:
                        return False
                except httpx.HTTPError:
                    return False
            return True

        remaining = bound - (time.monotonic() - since)
        try:
            await wait_until(caught_up, max(remaining, 0.5), what)
        except AssertionError:
            covered = await self.store.covered(target)
            missing = {s: hi - lo + 1 - covered[s] for s, (lo, hi) in target.items()}
            statuses = [await self.sample_status(s) for s in running]
            raise AssertionError(
                f"{what}: not recovered within {bound:.0f} s; trades missing per symbol "
                f"{missing}; ready: {[await _ready(s) for s in running]}; "
                f"status: {[_brief(s) for s in statuses]}"
            ) from None
        elapsed = time.monotonic() - since
        self.recoveries.append(elapsed)
        return elapsed

    async def streaming_past(self, target: dict[str, tuple[int, int]]) -> bool:
        """Every producer instance is connected to the exchange and has seen live trades past
        `target`: a gap left by a fault is then known to it (revealed by a later trade)."""
        for service in self.services:
            if not service.running or "producer" not in service.env["PIPELINE_ROLES"]:
                continue
            status = await self.sample_status(service)
            if status is None or not status.get("source"):
                return False
            source = status["source"]
            connections = source["connections"]
            if not connections or any(c["state"] != "connected" for c in connections):
                return False
            for symbol, (_, last) in target.items():
                seen = source["symbols"].get(symbol, {}).get("last_trade_id")
                if seen is None or seen < last:
                    return False
        return True

    async def sample_status(self, service: ServiceProcess) -> dict[str, Any] | None:
        try:
            return dict(await service.json("/pipeline/status"))
        except (httpx.HTTPError, ValueError):
            return None

    # -- verdict ------------------------------------------------------------------------

    async def finish(
        self,
        fault: str,
        recovery_bound_s: float,
        *,
        settle_s: float = 1.0,
        dlq_allowed: bool = False,
        crashes_allowed: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> Figures:
        """Pause the exchange after a clean stretch, wait for lag 0 and compare with the tape."""
        await asyncio.sleep(settle_s)
        # Pausing while a producer is still reconnecting would leave the trades it missed with
        # no later trade to reveal the gap: the window would end in a blind spot.
        now = self.tape.ranges()
        await wait_until(lambda: self.streaming_past(now), recovery_bound_s, "streaming again")
        self.simulator.pause()
        await asyncio.sleep(0.5)  # frames in flight reach the service
        ranges = self.tape.ranges()
        with contextlib.suppress(AssertionError):  # the comparison below says what is missing
            await wait_until(
                lambda: self.store.complete(ranges), recovery_bound_s, "every trade stored"
            )
        consumer = next(
            s for s in self.services if s.running and "consumer" in s.env["PIPELINE_ROLES"]
        )

        async def no_lag() -> bool:
            return await consumer.total_lag() == 0

        await wait_until(no_lag, FINAL_LAG_TIMEOUT_S, "consumer lag 0")
        expected = self.tape.expected()
        rows = await self.store.rows(self.symbols)
        lost = expected - rows.keys
        unexpected = rows.keys - expected
        dlq = len(await read_topic(self.kafka, self.dlq_topic))
        crashes = sum(s.log_count(TASK_CRASH) for s in self.services)
        extra = {"task_crashes": crashes, **(extra or {})}
        figures = Figures(
            scenario=self.name,
            fault=fault,
            repetitions=self.faults,
            trades=len(expected),
            stored=len(rows.keys),
            lost=len(lost),
            duplicated=rows.count - rows.distinct,
            unexpected=len(unexpected),
            dlq=dlq,
            recovery_s=round(max(self.recoveries, default=0.0), 2),
            recovery_bound_s=recovery_bound_s,
            runtime_s=round(time.monotonic() - self.started, 1),
            extra=extra,
        )
        self.summary.add(figures)
        assert not lost, f"{len(lost)} trades lost, e.g. {_sample(lost)} (window {ranges})"
        assert not unexpected, f"{len(unexpected)} rows not on the tape, e.g. {_sample(unexpected)}"
        assert rows.count == rows.distinct == len(expected)
        assert dlq_allowed or dlq == 0, f"{dlq} records in the DLQ of a scenario without bad frames"
        # A supervised role that crashed recovered by restart, but through a path nobody planned.
        assert crashes_allowed or crashes == 0, f"{crashes} supervised task crashes (see the logs)"
        return figures

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.services))


async def _ready(service: ServiceProcess) -> Any:
    try:
        return await service.ready()
    except httpx.HTTPError as exc:
        return f"{service.name}: {type(exc).__name__}"


def _brief(status: dict[str, Any] | None) -> Any:
    if status is None:
        return None
    return {
        key: status.get(key)
        for key in ("tasks", "counts", "gaps", "producer", "consumer")
        if status.get(key) is not None
    }


def _sample(keys: set[tuple[str, int]], n: int = 5) -> list[tuple[str, int]]:
    return sorted(keys)[:n]

"""An HTTP flood during ingest: 20 clients read /pipeline/status, /metrics, candles and prices as
fast as the API answers, while the exchange streams. The source is the stage that cannot wait
(the exchange drops a reader that falls behind), so the flood must not starve it: no WebSocket
reconnect, no gap, every trade stored once. The API's p99 and the ingest rates with and without
the flood are reported (not asserted: they depend on the machine; docs/reliability.md)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.core.settings import PROJECT_ROOT
from tests.chaos.conftest import StartRun
from tests.chaos.scenario import ChaosRun, scale
from tests.chaos.service import ServiceProcess

pytestmark = pytest.mark.chaos

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
RATE = 100.0  # trades/s per symbol
WINDOW_S = scale(8.0, 30.0)  # each of the two windows: unflooded, flooded
FLOOD_CLIENTS = 20
PATHS = (
    "/pipeline/status",
    "/metrics",
    "/prices",
    "/prices/BTCUSDT",
    "/prices/ETHUSDT/candles?interval=1s",
    "/prices/BTCUSDT/candles?interval=1m",
    "/prices/SOLUSDT/history?limit=100",
)
# From the flood's end: nothing to recover from (no reconnect, no gap), only the sink's backlog
# to store.
RECOVERY_BOUND_S = 30.0


@dataclass(frozen=True)
class Progress:
    at: float  # monotonic
    executed: int  # trades the exchange executed (the tape)
    received: int  # frames the source received
    stored: int  # rows the sink stored
    reconnects: int
    gaps: int


async def progress(run: ChaosRun, service: ServiceProcess) -> Progress:
    status = await service.json("/pipeline/status")
    last = run.tape.last_ids()
    return Progress(
        at=time.monotonic(),
        executed=sum(last[s] - run.tape.first[s] + 1 for s in run.symbols),
        received=status["counts"]["received"],
        stored=status["counts"]["stored"],
        reconnects=status["source"]["reconnects"],
        gaps=status["gaps"]["found"],
    )


def rates(start: Progress, end: Progress) -> dict[str, float]:
    seconds = end.at - start.at
    return {
        "executed_per_s": round((end.executed - start.executed) / seconds, 1),
        "received_per_s": round((end.received - start.received) / seconds, 1),
        "stored_per_s": round((end.stored - start.stored) / seconds, 1),
    }


async def read_for(service: ServiceProcess, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` closed-loop readers of PATHS for `seconds`, in a process of their own."""
    arguments = ["--base-url", service.base_url, "--clients", str(clients)]
    arguments += ["--duration", str(seconds)]
    for path in PATHS:
        arguments += ["--path", path]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.chaos.flood",
        *arguments,
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), seconds + 60)
    assert process.returncode == 0, f"the flood process exited with {process.returncode}"
    return dict(json.loads(out))


async def connected(service: ServiceProcess) -> bool:
    status = await service.json("/pipeline/status")
    connections = status["source"]["connections"]
    return bool(connections) and all(c["state"] == "connected" for c in connections)


@pytest.mark.timeout(scale(240, 600))
async def test_an_http_flood_during_ingest_never_starves_the_source(
    chaos: StartRun, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await chaos("api_flood", SYMBOLS, rate=RATE)
    service = run.service()  # the shipped priorities (config/settings.yaml)
    await run.start(service)

    quiet_start = await progress(run, service)
    quiet = await read_for(service, 1, WINDOW_S)
    quiet_end = await progress(run, service)

    flood = await read_for(service, FLOOD_CLIENTS, WINDOW_S)
    run.faults += 1
    flood_end = await progress(run, service)
    assert await connected(service), "a source connection is down after the flood"

    figures = {
        "api_p99_ms_unflooded": quiet["p99_ms"],
        "api_p99_ms_flooded": flood["p99_ms"],
        "api_requests_per_s_flooded": flood["per_s"],
        "api_503_flooded": flood["statuses"].get("503", 0),
        **{f"unflooded_{k}": v for k, v in rates(quiet_start, quiet_end).items()},
        **{f"flooded_{k}": v for k, v in rates(quiet_end, flood_end).items()},
        "source_reconnects": flood_end.reconnects - quiet_start.reconnects,
        "gaps_found": flood_end.gaps - quiet_start.gaps,
    }
    with capsys.disabled():
        print(f"\napi_flood: {json.dumps(figures)}")
        for name, answers in (("unflooded", quiet), ("flooded", flood)):
            print(f"api_flood: p99 ms by path, {name}: {json.dumps(answers['p99_ms_by_path'])}")

    for answers in (quiet, flood):
        assert answers["requests"] > 0
        assert not answers["errors"], f"requests failed: {answers['errors']}"
        # Under load a read may be turned away (503: read_timeout_ms), never fail (500).
        assert set(answers["statuses"]) <= {"200", "503"}, answers["server_errors"]
    assert figures["source_reconnects"] == 0, "the flood made a source connection reconnect"
    assert figures["gaps_found"] == 0, "the source missed trades during the flood"
    await run.recovered(time.monotonic(), RECOVERY_BOUND_S, "backlog stored after the flood")
    await run.finish(
        f"{FLOOD_CLIENTS} HTTP clients for {WINDOW_S:.0f} s during ingest",
        RECOVERY_BOUND_S,
        extra=figures,
    )

"""Roles in worker processes (isolation "process", the default), started by the API's lifespan.

The app runs in this test process (asgi-lifespan), so its workers are this process's children:
the tests find them with psutil, kill them, and check the table against the simulator's tape.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from devtools.simulator import BinanceSimulator, SimulatorConfig
from devtools.stack import LocalKafka, free_port
from pipeline.core.settings import PROJECT_ROOT, Settings
from tests.api_harness import serve
from tests.factories import service_env
from tests.integration.runtime.test_pipeline import settled, subscribed
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def workers(parent: psutil.Process | None = None) -> list[psutil.Process]:
    """The live worker processes started by `parent` (this test process by default)."""
    found = []
    for child in (parent or psutil.Process()).children():
        try:
            if (
                child.status() != psutil.STATUS_ZOMBIE
                and "pipeline.runtime.worker" in child.cmdline()
            ):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture
async def simulator() -> AsyncIterator[BinanceSimulator]:
    config = SimulatorConfig(symbols=SYMBOLS, rate_per_symbol=0.0, seed=5)
    async with BinanceSimulator(config, port=0) as sim:
        yield sim


@pytest.fixture
def process_settings(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> Settings:
    settings = make_settings(
        BINANCE_WS_URL=simulator.ws_url,
        BINANCE_REST_URL=simulator.rest_url,
        SYMBOLS=",".join(SYMBOLS),
        PIPELINE_ROLES="producer,consumer",
        PIPELINE_ISOLATION="process",
    )
    assert settings.isolation == "process"
    return settings


async def all_running(client: httpx.AsyncClient) -> bool:
    """Both workers report every task running, and the consumer holds the partitions."""
    status = (await client.get("/pipeline/status")).json()
    names = {task["name"] for task in status["tasks"]}
    states = {task["state"] for task in status["tasks"]}
    assigned = (status.get("consumer") or {}).get("assigned")
    return {"producer process", "consumer process", "source", "consumer"} <= names and (
        states == {"running"} and bool(assigned)
    )


async def test_each_role_runs_in_its_own_process_and_stores_every_trade_once(
    process_settings: Settings, simulator: BinanceSimulator
) -> None:
    async with serve(process_settings) as client:
        await wait_until(lambda: all_running(client), 30, "both workers report running tasks")
        assert len(workers()) == 2
        await subscribed(simulator, SYMBOLS)
        simulator.emit(1_500, SYMBOLS)
        await settled(process_settings, simulator, SYMBOLS)

        status = (await client.get("/pipeline/status")).json()
        assert status["counts"]["received"] == status["counts"]["produced"] == 3_000
        assert status["counts"]["stored"] == 3_000
        assert (await client.get("/ready")).status_code == 200


async def test_metrics_add_up_the_workers_counters(
    process_settings: Settings, simulator: BinanceSimulator
) -> None:
    # The API process runs in this test process, whose own counters earlier in-process tests
    # may have moved: /metrics is this process's figures plus the workers'.
    here = {
        (name, symbol): REGISTRY.get_sample_value(name, {"symbol": symbol}) or 0.0
        for name in ("pipeline_rows_stored_total", "pipeline_trades_produced_total")
        for symbol in SYMBOLS
    }
    async with serve(process_settings) as client:
        await wait_until(lambda: all_running(client), 30, "both workers report running tasks")
        await subscribed(simulator, SYMBOLS)
        simulator.emit(400, SYMBOLS)
        await settled(process_settings, simulator, SYMBOLS)

        text = (await client.get("/metrics")).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    from_workers = {
        (sample.name, sample.labels["symbol"]): sample.value
        - here[sample.name, sample.labels["symbol"]]
        for family in ("pipeline_rows_stored", "pipeline_trades_produced")
        for sample in families[family].samples
        if sample.name.endswith("_total") and sample.labels["symbol"] in SYMBOLS
    }
    assert from_workers == {key: 400.0 for key in here}
    # Process figures describe one process (the API's), not a sum over three.
    assert len(families["process_resident_memory_bytes"].samples) == 1


async def test_a_killed_worker_is_restarted_and_no_trade_is_lost_or_doubled(
    process_settings: Settings, simulator: BinanceSimulator
) -> None:
    async with serve(process_settings) as client:
        await wait_until(lambda: all_running(client), 30, "both workers report running tasks")
        await subscribed(simulator, SYMBOLS)
        simulator.emit(500, SYMBOLS)
        # A restarted producer resumes from each symbol's last stored trade id: with nothing
        # stored yet there would be nothing to resume from (README, "Known limits").
        await settled(process_settings, simulator, SYMBOLS)
        for victim in workers():
            victim.send_signal(signal.SIGKILL)
            simulator.emit(300, SYMBOLS)  # while one role is down
            await asyncio.sleep(0.2)
            await wait_until(lambda: all_running(client), 30, "the killed worker is back")
        await subscribed(simulator, SYMBOLS)
        simulator.emit(200, SYMBOLS)
        await settled(process_settings, simulator, SYMBOLS)

        status = (await client.get("/pipeline/status")).json()
        restarts = {task["name"]: task["restarts"] for task in status["tasks"]}
        assert restarts["producer process"] == restarts["consumer process"] == 1


async def test_stopping_the_service_stops_its_workers_cleanly(
    process_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(process_settings) as client:
        await wait_until(lambda: all_running(client), 30, "both workers report running tasks")
        running = workers()
        assert len(running) == 2
    assert workers() == []
    stopped = {r.getMessage() for r in caplog.records if r.name == "pipeline.runtime.processes"}
    assert {"producer worker stopped status=0", "consumer worker stopped status=0"} <= stopped


async def test_workers_of_a_killed_service_stop_on_their_own(
    process_settings: Settings, kafka_broker: LocalKafka, tmp_path: Path
) -> None:
    """The API process dies without a word (SIGKILL): its workers see stdin close and stop."""
    port = free_port()
    env = {
        **os.environ,
        **service_env(kafka_broker.bootstrap_servers, process_settings.database.url),
        "PIPELINE_ROLES": "producer,consumer",
        "PIPELINE_ISOLATION": "process",
        "BINANCE_WS_URL": process_settings.binance.ws_url,
        "BINANCE_REST_URL": process_settings.binance.rest_url,
        "SYMBOLS": ",".join(SYMBOLS),
    }
    command = ["-m", "uvicorn", "api.main:app", "--port", str(port), "--no-access-log"]
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        service = await asyncio.create_subprocess_exec(
            sys.executable, *command, env=env, cwd=PROJECT_ROOT, stderr=out, stdout=out
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def serving() -> bool:
                try:
                    return await all_running(client)
                except httpx.TransportError:
                    return False

            await wait_until(serving, 60, "the service and both workers run")
        orphans = workers(psutil.Process(service.pid))
        assert len(orphans) == 2
    finally:
        service.kill()
        await service.wait()
    _, alive = psutil.wait_procs(orphans, timeout=process_settings.shutdown_timeout_s + 5)
    assert alive == []
    output = log.read_text()
    assert "worker stopped roles=producer" in output
    assert "worker stopped roles=consumer" in output


def realtime_permitted() -> bool:
    """Whether this machine lets a process of ours take SCHED_RR (root, CAP_SYS_NICE, rlimit)."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def policy(pid: int = 0) -> int:
    return os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK


def scheduling(worker: psutil.Process) -> tuple[int, int]:
    """(policy, nice) of a worker process."""
    return policy(worker.pid), worker.nice()


def by_role() -> dict[str, psutil.Process]:
    """The live workers by role (the role is the worker's command-line argument)."""
    return {w.cmdline()[-1]: w for w in workers()}


@pytest.mark.parametrize(
    "given",
    [
        {},  # the shipped config: the source's worker at normal priority, the sink's at nice 10
        {"producer_priority": "low", "consumer_priority": "idle"},
    ],
)
async def test_each_worker_runs_at_its_roles_priority_restarted_ones_too(
    process_settings: Settings, given: dict[str, str]
) -> None:
    """The source cannot wait (the exchange drops a reader that falls behind); the sink can
    (Kafka holds its backlog): under a saturated CPU the sink's worker yields first."""
    settings = process_settings.model_copy(update=given)
    base = os.nice(0)
    expected = {
        "normal": (os.SCHED_OTHER, base),
        "low": (os.SCHED_OTHER, min(base + 10, 19)),
        "idle": (os.SCHED_IDLE, base),
    }
    wanted = {
        "producer": expected[settings.producer_priority],
        "consumer": expected[settings.consumer_priority],
    }
    async with serve(settings) as client:
        await wait_until(lambda: all_running(client), 30, "both workers report running tasks")
        assert {role: scheduling(w) for role, w in by_role().items()} == wanted
        for role in ("producer", "consumer"):
            by_role()[role].send_signal(signal.SIGKILL)
            await asyncio.sleep(0.2)
            await wait_until(lambda: all_running(client), 30, f"the killed {role} is back")
            assert {role: scheduling(w) for role, w in by_role().items()} == wanted
    assert policy() == os.SCHED_OTHER and os.nice(0) == base  # the API process is untouched


async def test_the_opt_in_realtime_api_priority_raises_the_api_loop_only(
    process_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """`api_priority: realtime` (opt-in) raises the API's event loop only: workers, restarted
    ones included, never inherit it; the lifespan's end restores the thread."""
    settings = process_settings.model_copy(update={"api_priority": "realtime"})
    permitted = realtime_permitted()
    async with serve(settings) as client:
        await wait_until(lambda: all_running(client), 30, "both workers report running tasks")
        assert policy() == (os.SCHED_RR if permitted else os.SCHED_OTHER)
        workers()[0].send_signal(signal.SIGKILL)
        await asyncio.sleep(0.2)
        await wait_until(lambda: all_running(client), 30, "the killed worker is back")
        assert [policy(w.pid) for w in workers()] == [os.SCHED_OTHER] * 2
    assert policy() == os.SCHED_OTHER
    messages = {r.getMessage() for r in caplog.records if r.name == "pipeline.runtime.priority"}
    if permitted:
        assert messages == {"API event loop at real-time priority (SCHED_RR 1)"}
    else:
        assert any(m.startswith("api_priority realtime not permitted") for m in messages)


async def test_roles_on_the_api_loop_keep_it_at_normal_priority(
    process_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """With isolation "task" the loop runs ingest too: real-time would take a core from the
    broker and the database it needs, so `api_priority: realtime` is not applied."""
    settings = process_settings.model_copy(update={"api_priority": "realtime", "isolation": "task"})
    async with serve(settings) as client:
        assert (await client.get("/health")).status_code == 200
        assert policy() == os.SCHED_OTHER
        assert workers() == []
    assert "api_priority realtime not applied: the roles run on the API's event loop" in {
        r.getMessage() for r in caplog.records
    }

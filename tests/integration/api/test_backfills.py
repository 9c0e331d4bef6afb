"""History jobs end to end: POST /backfills → the producer's runner → Kafka → PostgreSQL.

The simulator keeps a deterministic past tape per symbol (its clock is off: rate 0), so the
exact set of trades a window holds is known (`BinanceSimulator.history_trades`). The service
runs in this process (isolation task) on the session's Kafka and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from devtools.simulator import BinanceSimulator, SimulatorConfig
from devtools.simulator.market import Trade
from pipeline.core.settings import Settings
from tests.api_harness import eventually, serve
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

MINUTE_MS = 60_000
HISTORY_DAYS = 0.05  # 72 minutes of past trades per symbol
HISTORY_RATE = 5.0  # trades/s: 300 a minute


@pytest.fixture
async def simulator() -> AsyncIterator[BinanceSimulator]:
    config = SimulatorConfig(
        symbols=["BTCUSDT", "ETHUSDT"],
        rate_per_symbol=0.0,
        seed=18,
        history_days=HISTORY_DAYS,
        history_rate_per_s=HISTORY_RATE,
    )
    async with BinanceSimulator(config) as sim:
        yield sim


def service_settings(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator, **extra: str
) -> Settings:
    defaults = {
        "BINANCE_WS_URL": simulator.ws_url,
        "BINANCE_REST_URL": simulator.rest_url,
        "SYMBOLS": "BTCUSDT",
        "PIPELINE_ISOLATION": "task",
        "BINANCE__REST_WEIGHT_PER_MINUTE": "100000",
        "BINANCE__HISTORY_HEARTBEAT_S": "0.2",
    }
    return make_settings(**{**defaults, **extra})


def past_window(simulator: BinanceSimulator, minutes_ago: float, minutes: float) -> tuple[int, int]:
    """[start, end] epoch ms inside the simulator's past tape."""
    end_of_past = simulator.history_end_ms
    start = end_of_past - int(minutes_ago * MINUTE_MS)
    return start, start + int(minutes * MINUTE_MS)


async def stored_rows(settings: Settings, symbol: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        return await connection.fetch(
            "SELECT trade_id, price::text AS price, quantity::text AS quantity, trade_time, "
            "is_buyer_maker FROM crypto_prices WHERE symbol = $1 ORDER BY trade_id",
            symbol,
        )
    finally:
        await connection.close()


async def duplicates(settings: Settings) -> int:
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) - count(DISTINCT (symbol, trade_id)) FROM crypto_prices"
            )
        )
    finally:
        await connection.close()


def as_tape(rows: list[asyncpg.Record]) -> dict[int, tuple[Decimal, Decimal, int, bool]]:
    return {
        r["trade_id"]: (
            Decimal(r["price"]),
            Decimal(r["quantity"]),
            r["trade_time"],
            r["is_buyer_maker"],
        )
        for r in rows
    }


def expected_tape(trades: list[Trade]) -> dict[int, tuple[Decimal, Decimal, int, bool]]:
    return {
        t.id: (Decimal(t.price.decode()), Decimal(t.qty.decode()), t.time, t.is_buyer_maker)
        for t in trades
    }


async def finished(client: httpx.AsyncClient, job_id: int, timeout: float = 60) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        job: dict[str, Any] = (await client.get(f"/backfills/{job_id}")).json()
        return job if job["state"] in ("done", "failed", "cancelled") else None

    return await eventually(probe, timeout, f"history job {job_id} finished")


async def start_job(client: httpx.AsyncClient, symbol: str, start: int, end: int) -> int:
    response = await client.post("/backfills", json={"symbol": symbol, "start": start, "end": end})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued"
    assert response.headers["location"] == f"/backfills/{job['id']}"
    return int(job["id"])


# -- validation and control (the API alone) ------------------------------------------------


@pytest.fixture
async def api(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        PIPELINE_ROLES="none",
        BINANCE_REST_URL=simulator.rest_url,
        BINANCE__VERIFY_SYMBOLS="true",
        BINANCE__HISTORY_MAX_DAYS="2",
    )
    async with serve(settings) as client:
        yield client


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"symbol": "BTCUSDT", "start": 1_700_000_100_000, "end": 1_700_000_000_000}, None),
        ({"symbol": "BTCUSDT", "start": 1_700_000_000_000, "end": 1_700_000_000_000}, None),
        ({"symbol": "BTCUSDT", "start": 1_700_000_000_000, "end": "later"}, "end"),
        ({"symbol": "BTC-USDT", "start": 1_700_000_000_000, "end": 1_700_000_001_000}, "symbol"),
        ({"symbol": "BTCUSDT", "start": -1, "end": 1_700_000_001_000}, "start"),
        ({"symbol": "BTCUSDT", "start": 1_400_000_000_000, "end": 1_400_000_001_000}, "start"),
        ({"symbol": "BTCUSDT", "start": 1_700_000_000_000, "end": 1_700_259_200_001}, "end"),
        ({"symbol": "NOPEUSDT", "start": 1_700_000_000_000, "end": 1_700_000_001_000}, "symbol"),
        ({"start": 1_700_000_000_000, "end": 1_700_000_001_000}, "symbol"),
    ],
)
async def test_invalid_jobs_are_refused_with_422_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], field: str | None
) -> None:
    response = await api.post("/backfills", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    if field is not None:
        assert any(item["loc"][-1] == field for item in detail), detail
    assert (await api.get("/backfills")).json() == {"items": []}


async def test_a_window_ending_in_the_future_is_refused(api: httpx.AsyncClient) -> None:
    now = _now_ms()
    response = await api.post(
        "/backfills", json={"symbol": "BTCUSDT", "start": now - 60_000, "end": now + 60_000}
    )
    assert response.status_code == 422
    assert "future" in response.json()["detail"][0]["msg"]


async def test_jobs_are_listed_read_and_cancelled_while_queued(api: httpx.AsyncClient) -> None:
    now = _now_ms()
    first = await start_job(api, "btcusdt", now - 3_600_000, now - 1_800_000)
    second = await start_job(api, "ETHUSDT", now - 7_200_000, now - 3_600_000)

    listed = (await api.get("/backfills")).json()["items"]
    assert [job["id"] for job in listed] == [second, first]
    assert listed[1]["symbol"] == "BTCUSDT"
    assert listed[1]["start"] == now - 3_600_000 and listed[1]["end"] == now - 1_800_000
    assert listed[1]["fetched"] == 0 and listed[1]["remaining"] is None

    cancelled = await api.delete(f"/backfills/{first}")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert (await api.delete(f"/backfills/{first}")).status_code == 200  # idempotent
    assert (await api.get(f"/backfills/{first}")).json()["state"] == "cancelled"
    queued = (await api.get("/backfills", params={"state": "queued"})).json()["items"]
    assert [job["id"] for job in queued] == [second]

    for path in ("/backfills/999999", "/backfills/999999"):
        assert (await api.get(path)).status_code == 404
    assert (await api.delete("/backfills/999999")).status_code == 404
    assert (await api.get("/backfills/0")).status_code == 422
    assert (await api.get("/backfills/99999999999999999999")).status_code == 422


async def test_mutations_need_the_api_key_when_one_is_set(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    settings = make_settings(
        PIPELINE_ROLES="none", BINANCE_REST_URL=simulator.rest_url, API_KEY="k3y"
    )
    now = _now_ms()
    body = {"symbol": "BTCUSDT", "start": now - 120_000, "end": now - 60_000}
    async with serve(settings) as client:
        assert (await client.post("/backfills", json=body)).status_code == 401
        created = await client.post("/backfills", json=body, headers={"X-API-Key": "k3y"})
        assert created.status_code == 202
        job_id = created.json()["id"]
        assert (await client.delete(f"/backfills/{job_id}")).status_code == 401
        assert (await client.get(f"/backfills/{job_id}")).status_code == 200


async def test_an_unreachable_exchange_answers_503_instead_of_queueing_unchecked(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        PIPELINE_ROLES="none",
        BINANCE_REST_URL="http://127.0.0.1:9",
        BINANCE__VERIFY_SYMBOLS="true",
        BINANCE__REST_MAX_ATTEMPTS="1",
    )
    now = _now_ms()
    body = {"symbol": "BTCUSDT", "start": now - 120_000, "end": now - 60_000}
    async with serve(settings) as client:
        response = await client.post("/backfills", json=body)
        assert response.status_code == 503
        assert (await client.get("/backfills")).json() == {"items": []}


# -- running jobs ---------------------------------------------------------------------------


async def test_a_job_stores_exactly_the_trades_of_its_window_with_exact_prices(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    settings = service_settings(make_settings, simulator)
    start, end = past_window(simulator, minutes_ago=50, minutes=10)
    expected = simulator.history_trades("ETHUSDT", start, end)
    assert 2_500 < len(expected) < 3_500  # three and a bit pages
    assert any(t.time == start for t in expected) or expected[0].time > start
    async with serve(settings) as client:
        job_id = await start_job(client, "ETHUSDT", start, end)
        unlisted = await start_job(client, "NOPEUSDT", start, end)  # not checked: verify off
        job = await finished(client, job_id)
        refused = await finished(client, unlisted)

        async def metrics_updated() -> str | None:
            text = (await client.get("/metrics")).text
            return text if 'pipeline_history_jobs{state="done"} 1.0' in text else None

        metrics = await eventually(metrics_updated, 5, "the jobs gauge counts the job done")
    assert job["state"] == "done", job
    assert refused["state"] == "failed" and "-1121" in refused["last_error"], refused
    assert job["fetched"] == job["stored"] == len(expected)
    assert job["first_id"] == expected[0].id
    assert job["last_id"] == expected[-1].id
    assert job["remaining"] == 0 and job["progress"] == 1.0
    assert job["missing"] == 0 and job["errors"] == 0 and job["last_error"] is None
    rows = await stored_rows(settings, "ETHUSDT")
    assert as_tape(rows) == expected_tape(expected)  # the same set, price for price
    assert all(start <= r["trade_time"] <= end for r in rows)
    assert f'pipeline_history_trades_total{{symbol="ETHUSDT"}} {float(len(expected))}' in metrics
    assert 'pipeline_history_jobs{state="done"} 1.0' in metrics


async def test_an_overlapping_job_adds_no_duplicate(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    settings = service_settings(make_settings, simulator)
    first = past_window(simulator, minutes_ago=40, minutes=6)
    second = past_window(simulator, minutes_ago=37, minutes=6)  # half of it stored already
    async with serve(settings) as client:
        job = await finished(client, await start_job(client, "BTCUSDT", *first))
        assert job["state"] == "done"
        job = await finished(client, await start_job(client, "BTCUSDT", *second))
        assert job["state"] == "done"
    union = simulator.history_trades("BTCUSDT", first[0], second[1])
    rows = await stored_rows(settings, "BTCUSDT")
    assert as_tape(rows) == expected_tape(union)
    assert await duplicates(settings) == 0
    # The second job counts the overlap as stored: what is in the table, not what it added.
    assert job["stored"] == job["fetched"] == len(simulator.history_trades("BTCUSDT", *second))


async def test_a_cancelled_job_stops_within_seconds(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    # 60 weight a minute: a page (25) every 25 s, after the first two.
    settings = service_settings(make_settings, simulator, BINANCE__REST_WEIGHT_PER_MINUTE="60")
    start, end = past_window(simulator, minutes_ago=70, minutes=60)
    async with serve(settings) as client:
        job_id = await start_job(client, "ETHUSDT", start, end)

        async def running() -> dict[str, Any] | None:
            job: dict[str, Any] = (await client.get(f"/backfills/{job_id}")).json()
            return job if job["state"] == "running" and job["pages"] >= 1 else None

        await eventually(running, 30, "the job fetched its first page")
        requests_before = len(simulator.rest_weight.log)
        cancelled_at = time.monotonic()
        assert (await client.delete(f"/backfills/{job_id}")).status_code == 200

        await asyncio.sleep(3.0)
        job = (await client.get(f"/backfills/{job_id}")).json()
        assert job["state"] == "cancelled"
        assert time.monotonic() - cancelled_at < 10
        # Nothing more was asked of the exchange for it after the cancel settled.
        later = len(simulator.rest_weight.log)
        await asyncio.sleep(2.0)
        assert len(simulator.rest_weight.log) == later
        assert later - requests_before <= 1


async def test_two_jobs_and_gap_filling_share_the_weight_budget_gaps_first(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    budget = 400  # weight per minute; history jobs may use 90 % of it (360)
    simulator.rest_weight.limit = budget  # the exchange refuses anything above: counted
    settings = service_settings(
        make_settings,
        simulator,
        BINANCE__REST_WEIGHT_PER_MINUTE=str(budget),
        BINANCE__RECONNECT_MIN_S="0.1",
    )
    # Each job needs 8 pages (200 weight) and a few aggTrades (4 each): together more than a
    # minute's share, so they run into the next minute. Start early in a minute so that the
    # first minute's share runs out while the jobs still have pages to fetch.
    if time.time() % 60 > 30:
        await asyncio.sleep(60 - time.time() % 60 + 1)
    eth = past_window(simulator, minutes_ago=70, minutes=26)
    btc = past_window(simulator, minutes_ago=35, minutes=26)
    async with serve(settings) as client:
        await wait_until(lambda: _subscribed(simulator), 10, "the source is subscribed")
        simulator.emit(5, ["BTCUSDT"])
        jobs = [
            await start_job(client, "ETHUSDT", *eth),
            await start_job(client, "BTCUSDT", *btc),
        ]

        async def jobs_stalled() -> bool:
            states = [(await client.get(f"/backfills/{j}")).json() for j in jobs]
            return all(s["state"] == "running" and s["pages"] >= 1 for s in states) and (
                simulator.rest_weight.used() >= budget * 0.9 - 25
            )

        await wait_until(jobs_stalled, 30, "the jobs used up this minute's share")
        # A gap in the live stream while the jobs wait for weight: it is filled at once.
        await simulator.disconnect_all(abrupt=True)
        simulator.emit(300, ["BTCUSDT"])

        async def reconnected() -> bool:
            source = (await client.get("/pipeline/status")).json()["source"]
            return source["reconnects"] >= 1 and simulator.connections == 1

        await wait_until(reconnected, 10, "reconnected")
        await wait_until(lambda: _subscribed(simulator), 10, "subscribed again")
        simulator.emit(5, ["BTCUSDT"])  # reveals the gap
        gap_found = time.monotonic()
        live = simulator.trades_emitted()["BTCUSDT"]

        async def live_stored() -> bool:
            ids = {r["trade_id"] for r in await stored_rows(settings, "BTCUSDT")}
            return live <= ids

        await wait_until(live_stored, 20, "the live gap backfilled")
        gap_filled_s = time.monotonic() - gap_found
        still_running = [(await client.get(f"/backfills/{j}")).json()["state"] for j in jobs]
        for job_id in jobs:
            assert (await finished(client, job_id, timeout=90))["state"] == "done"
    assert still_running == ["running", "running"], "the gap waited for the history jobs"
    assert gap_filled_s < 10
    assert simulator.rest_weight.refused == 0
    assert max(simulator.rest_weight.by_minute.values()) <= budget
    for symbol, window in (("ETHUSDT", eth), ("BTCUSDT", btc)):
        expected = expected_tape(simulator.history_trades(symbol, *window))
        rows = as_tape(await stored_rows(settings, symbol))
        assert {i: rows[i] for i in expected if i in rows} == expected
    assert await duplicates(settings) == 0


async def _subscribed(simulator: BinanceSimulator) -> bool:
    return any("btcusdt@trade" in streams for streams in simulator.subscriptions())

"""The simulator's past tape, aggTrades and REST weight behave like Binance's, field for field.

A real httpx client against a simulator on 127.0.0.1:0, its clock at rate 0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from devtools.simulator import BinanceSimulator, SimulatorConfig
from devtools.simulator.__main__ import parse_args

START = 1_000_000  # SimulatorConfig.start_trade_id
END_MS = 1_764_000_000_000  # where the past tape ends in these tests
HOUR_MS = 3_600_000
AGG_TYPES = {"a": int, "p": str, "q": str, "f": int, "l": int, "T": int, "m": bool, "M": bool}

StartExchange = Callable[..., Awaitable[BinanceSimulator]]


@pytest.fixture
async def exchange() -> AsyncIterator[StartExchange]:
    started: list[BinanceSimulator] = []

    async def start(**overrides: Any) -> BinanceSimulator:
        config = {
            "rate_per_symbol": 0.0,
            "symbols": ["BTCUSDT", "ETHUSDT"],
            "history_days": 0.25,  # 6 hours
            "history_rate_per_s": 2.0,
            "history_end_ms": END_MS,
            **overrides,
        }
        sim = BinanceSimulator(SimulatorConfig(**config))
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


async def get(sim: BinanceSimulator, path: str, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        return await http.get(path, params=params)


async def agg_trades(sim: BinanceSimulator, **params: Any) -> list[dict[str, Any]]:
    response = await get(sim, "/api/v3/aggTrades", symbol="BTCUSDT", **params)
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return body


async def historical(sim: BinanceSimulator, from_id: int, limit: int) -> list[dict[str, Any]]:
    response = await get(
        sim, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId=from_id, limit=limit
    )
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return body


async def test_the_past_tape_ends_where_the_live_tape_begins(exchange: StartExchange) -> None:
    sim = await exchange()
    past = 6 * 3600 * 2  # hours, seconds per hour, trades per second
    sim.emit(3, ["BTCUSDT"])
    assert sim.trades_emitted()["BTCUSDT"] == {START + past, START + past + 1, START + past + 2}
    trades = await historical(sim, START + past - 2, 5)
    assert [t["id"] for t in trades] == list(range(START + past - 2, START + past + 3))
    assert trades[1]["time"] < END_MS <= trades[2]["time"]
    first = await historical(sim, 1, 2)
    assert [t["id"] for t in first] == [START, START + 1], "ids before the tape do not exist"
    assert first[0]["time"] >= END_MS - 6 * HOUR_MS


async def test_past_trades_carry_binance_fields_and_never_go_back_in_time(
    exchange: StartExchange,
) -> None:
    sim = await exchange()
    trades = await historical(sim, START, 1000)
    assert len(trades) == 1000
    assert set(trades[0]) == {
        "id",
        "price",
        "qty",
        "quoteQty",
        "time",
        "isBuyerMaker",
        "isBestMatch",
    }
    times = [t["time"] for t in trades]
    assert times == sorted(times)
    assert all(Decimal(t["price"]) > 0 and Decimal(t["qty"]) > 0 for t in trades)
    assert all(len(t["price"].split(".")[1]) == 8 for t in trades)


async def test_the_past_tape_is_the_same_in_every_run_with_the_same_seed(
    exchange: StartExchange,
) -> None:
    one, two = await exchange(), await exchange()
    other_seed = await exchange(seed=1)
    assert await historical(one, START + 5_000, 50) == await historical(two, START + 5_000, 50)
    assert await historical(one, START, 50) != await historical(other_seed, START, 50)


async def test_agg_trades_aggregate_contiguous_trades_of_one_price_and_time(
    exchange: StartExchange,
) -> None:
    sim = await exchange()
    aggs = await agg_trades(sim, startTime=END_MS - 6 * HOUR_MS, endTime=END_MS - 5 * HOUR_MS)
    assert len(aggs) == 500, "limit defaults to 500"
    for agg in aggs:
        assert {k: type(v) for k, v in agg.items()} == AGG_TYPES
    assert [a["a"] for a in aggs] == list(range(aggs[0]["a"], aggs[0]["a"] + 500))
    assert aggs[0]["a"] < START, "aggregate ids are not trade ids"
    assert any(a["l"] > a["f"] for a in aggs), "some aggregates hold several trades"
    trades = {t["id"]: t for t in await historical(sim, aggs[0]["f"], 1000)}
    expected_next = aggs[0]["f"]
    for agg in aggs[:300]:
        assert agg["f"] == expected_next
        expected_next = agg["l"] + 1
        members = [trades[i] for i in range(agg["f"], agg["l"] + 1)]
        assert {(t["price"], t["time"], t["isBuyerMaker"]) for t in members} == {
            (agg["p"], agg["T"], agg["m"])
        }
        assert Decimal(agg["q"]) == sum(Decimal(t["qty"]) for t in members)


async def test_agg_trades_time_window_holds_exactly_the_trades_of_that_time(
    exchange: StartExchange,
) -> None:
    sim = await exchange()
    start, end = END_MS - 3 * HOUR_MS + 1234, END_MS - 3 * HOUR_MS + 60_000
    aggs = await agg_trades(sim, startTime=start, endTime=end, limit=1000)
    assert aggs and all(start <= a["T"] <= end for a in aggs)
    window = sim.history_trades("BTCUSDT", start, end)
    assert sim.history_ids("BTCUSDT", start, end) == range(window[0].id, window[-1].id + 1)
    assert [t.id for t in window] == list(range(aggs[0]["f"], aggs[-1]["l"] + 1))
    before = await agg_trades(sim, startTime=start - 10_000, endTime=start - 1)
    assert before and before[-1]["T"] < start and before[-1]["l"] == aggs[0]["f"] - 1
    by_id = await agg_trades(sim, fromId=aggs[0]["a"], limit=3)
    assert by_id == aggs[:3]
    newest = await agg_trades(sim, limit=2)
    assert newest[-1]["l"] == START + 6 * 3600 * 2 - 1
    capped = await agg_trades(sim, startTime=END_MS - 6 * HOUR_MS, limit=5000)
    assert len(capped) == 1000, "limit caps at 1000"


async def test_agg_trades_include_the_live_tape_one_trade_each(exchange: StartExchange) -> None:
    sim = await exchange()
    sim.emit(3, ["BTCUSDT"])
    newest = await agg_trades(sim, limit=4)
    live = sorted(sim.trades_emitted()["BTCUSDT"])
    assert [(a["f"], a["l"]) for a in newest[1:]] == [(i, i) for i in live]
    assert [a["a"] for a in newest] == list(range(newest[0]["a"], newest[0]["a"] + 4))
    assert sim.history_trades("BTCUSDT", newest[1]["T"], newest[-1]["T"])[-1].id == live[-1]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"symbol": "BTCUSDT", "startTime": 0, "endTime": HOUR_MS + 1}, -1127),
        ({"symbol": "BTCUSDT", "fromId": 1, "startTime": 0}, -1128),
        ({"symbol": "NOPEUSDT"}, -1121),
        ({"symbol": "btcusdt"}, -1121),
        ({}, -1102),
        ({"symbol": "BTCUSDT", "startTime": "soon"}, -1100),
    ],
)
async def test_agg_trades_rejects_what_binance_rejects(
    exchange: StartExchange, params: dict[str, Any], code: int
) -> None:
    sim = await exchange()
    response = await get(sim, "/api/v3/aggTrades", **params)
    assert response.status_code == 400
    assert response.json()["code"] == code


async def test_every_answer_reports_the_weight_used_this_minute(exchange: StartExchange) -> None:
    sim = await exchange()
    weights = []
    for path, params in [
        ("/api/v3/aggTrades", {"symbol": "BTCUSDT"}),
        ("/api/v3/historicalTrades", {"symbol": "BTCUSDT", "fromId": START}),
        ("/api/v3/exchangeInfo", {"symbol": "BTCUSDT"}),
        ("/api/v3/exchangeInfo", {}),
    ]:
        response = await get(sim, path, **params)
        weights.append(int(response.headers["X-MBX-USED-WEIGHT-1M"]))
    assert weights == [4, 29, 31, 51]
    assert sim.rest_weight.total() == 51
    assert len(sim.rest_weight.log) == 4


async def test_over_the_weight_limit_requests_get_429_with_retry_after(
    exchange: StartExchange,
) -> None:
    sim = await exchange(rest_weight_limit=60)
    statuses = [
        (await get(sim, "/api/v3/historicalTrades", symbol="BTCUSDT")).status_code for _ in range(3)
    ]
    refused = await get(sim, "/api/v3/historicalTrades", symbol="BTCUSDT")
    assert statuses[:2] == [200, 200]
    assert statuses[2] == refused.status_code == 429
    assert refused.json()["code"] == -1003
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert sim.rest_weight.refused == 2
    assert max(sim.rest_weight.by_minute.values()) <= 60


def test_cli_flags_set_the_past_tape_and_the_weight_limit() -> None:
    config, _, _ = parse_args(
        ["--history-days", "7", "--history-rate", "3", "--weight-limit", "6000"]
    )
    assert (config.history_days, config.history_rate_per_s) == (7.0, 3.0)
    assert config.rest_weight_limit == 6000
    with pytest.raises(SystemExit):
        parse_args(["--history-days", "-1"])

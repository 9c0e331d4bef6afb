"""History jobs on the exchange side: a time window to trade ids, and what a page contributes.

`find_window` runs against the simulator's past tape through a real ExchangeClient.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from devtools.simulator import BinanceSimulator, SimulatorConfig
from pipeline.core.settings import BinanceSettings
from pipeline.exchange.client import ExchangeClient, ExchangeError
from pipeline.exchange.history import find_window, take_page

END_MS = 1_764_000_000_000
HOUR_MS = 3_600_000
T0 = 1_764_000_000_000


@pytest.fixture
async def simulator() -> AsyncIterator[BinanceSimulator]:
    config = SimulatorConfig(
        symbols=["BTCUSDT"],
        rate_per_symbol=0.0,
        history_days=0.5,
        history_rate_per_s=1.0,
        history_end_ms=END_MS,
    )
    async with BinanceSimulator(config) as sim:
        yield sim


@pytest.fixture
async def exchange(simulator: BinanceSimulator) -> AsyncIterator[ExchangeClient]:
    settings = BinanceSettings(rest_url=simulator.rest_url, rest_weight_per_minute=100_000)
    async with ExchangeClient(settings) as client:
        yield client


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (END_MS - 11 * HOUR_MS + 777, END_MS - 11 * HOUR_MS + 60_000),  # a minute
        (END_MS - 10 * HOUR_MS, END_MS - 7 * HOUR_MS + 5),  # hours: several aggTrades windows
        (END_MS - 3_000, END_MS + 10_000),  # up to the end of the tape
    ],
)
async def test_a_window_maps_to_the_ids_of_its_first_and_last_trade(
    simulator: BinanceSimulator, exchange: ExchangeClient, start: int, end: int
) -> None:
    trades = simulator.history_trades("BTCUSDT", start, end)
    window = await find_window(exchange, "BTCUSDT", start, end, now_ms=END_MS + 20_000)
    assert window == (trades[0].id, trades[-1].id)


async def test_a_window_without_trades_maps_to_none(
    simulator: BinanceSimulator, exchange: ExchangeClient
) -> None:
    before_the_tape = END_MS - 15 * HOUR_MS
    assert (
        await find_window(
            exchange, "BTCUSDT", before_the_tape, before_the_tape + HOUR_MS * 2, END_MS
        )
        is None
    )


async def test_finding_a_window_costs_a_few_aggtrades_requests(
    simulator: BinanceSimulator, exchange: ExchangeClient
) -> None:
    await find_window(exchange, "BTCUSDT", END_MS - 5 * HOUR_MS, END_MS - HOUR_MS, END_MS)
    assert [t.split("?")[0] for t in simulator.rest_weight.log] == ["/api/v3/aggTrades"] * 2


async def test_an_unknown_symbol_is_the_exchange_refusing(exchange: ExchangeClient) -> None:
    with pytest.raises(ExchangeError, match="-1121"):
        await find_window(exchange, "NOPEUSDT", END_MS - HOUR_MS, END_MS, END_MS)


def item(trade_id: int, time: int, price: str = "10.00000000") -> dict[str, Any]:
    return {"id": trade_id, "price": price, "qty": "1.00000000", "time": time, "isBuyerMaker": True}


def test_a_page_keeps_only_trades_inside_the_window() -> None:
    items = [item(100, T0 - 1), item(101, T0), item(102, T0 + 5), item(103, T0 + 10)]
    page = take_page("BTCUSDT", 100, 200, 4, items, T0, T0 + 10, T0 + 99)
    assert [t.trade_id for t in page.trades] == [101, 102, 103]
    assert page.next_id == 104 and not page.done and page.missing == 0


def test_a_trade_after_the_window_ends_the_job() -> None:
    items = [item(100, T0), item(101, T0 + 11), item(102, T0 + 12)]
    page = take_page("BTCUSDT", 100, 200, 3, items, T0, T0 + 10, T0)
    assert [t.trade_id for t in page.trades] == [100]
    assert page.done and page.missing == 0


def test_a_short_page_means_the_exchange_has_nothing_further() -> None:
    page = take_page("BTCUSDT", 100, 109, 10, [item(100, T0), item(101, T0)], T0, T0 + 10, T0)
    assert page.done and page.next_id == 102 and page.missing == 8
    empty = take_page("BTCUSDT", 100, 109, 10, [], T0, T0 + 10, T0)
    assert empty.done and empty.next_id == 100 and empty.missing == 10


def test_ids_the_exchange_skipped_count_as_missing_and_invalid_items_are_dead_lettered() -> None:
    items = [item(100, T0), item(103, T0), {"id": "x"}, item(104, T0, price="-1")]
    page = take_page("BTCUSDT", 100, 200, 4, items, T0, T0 + 10, T0)
    assert [t.trade_id for t in page.trades] == [100, 103]
    assert page.missing == 2 and page.next_id == 105
    reasons = [reason for _, reason in page.invalid]
    assert len(reasons) == 2 and reasons[0] == "historical trade has no integer id"

"""Gap bookkeeping and REST backfill: which ids are fetched, published, skipped or missing."""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import islice
from typing import Any, cast

import pytest

from pipeline.core.settings import BinanceSettings
from pipeline.core.status import ExchangeGap
from pipeline.exchange import backfill
from pipeline.exchange.backfill import (
    Backfiller,
    Gap,
    absorb_page,
    bound_gap,
    merge_gaps,
)
from pipeline.exchange.client import ExchangeClient, ExchangeError, ExchangeUnavailable
from tests.factories import CollectingPublisher

NOW = time.time_ns() // 1_000_000


def item(trade_id: int, time_ms: int = NOW) -> dict[str, Any]:
    return {"id": trade_id, "price": "2.5", "qty": "1", "time": time_ms, "isBuyerMaker": True}


def page(first: int, last: int, requested: int, ids: list[int], cutoff: int = 0) -> backfill.Page:
    return absorb_page("BTCUSDT", first, last, requested, [item(i) for i in ids], cutoff, NOW)


class TapeExchange:
    """historicalTrades over a tape that lacks `holes`; `failures` are raised first, in order.
    REST serves ids up to `horizon` only (None: all), as when it lags the stream."""

    def __init__(
        self,
        holes: set[int] | None = None,
        failures: list[Exception] | None = None,
        horizon: int | None = None,
    ):
        self.holes = holes or set()
        self.failures = failures or []
        self.horizon = horizon
        self.calls: list[tuple[int | None, int]] = []
        self.called_at: list[float] = []
        self.active = 0
        self.most_active = 0

    async def historical_trades(
        self, symbol: str, from_id: int | None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        self.calls.append((from_id, limit))
        self.called_at.append(time.monotonic())
        if self.failures:
            raise self.failures.pop(0)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        await asyncio.sleep(0.001)
        self.active -= 1
        end = 10**9 if self.horizon is None else self.horizon + 1
        ids = (i for i in range(from_id or 0, end) if i not in self.holes)
        return [item(i) for i in islice(ids, limit)]


def backfiller(exchange: TapeExchange, **settings: Any) -> tuple[Backfiller, CollectingPublisher]:
    publisher = CollectingPublisher()
    filler = Backfiller(BinanceSettings(**settings), cast(ExchangeClient, exchange), publisher)
    return filler, publisher


async def drain(filler: Backfiller) -> None:
    for _ in range(500):
        await asyncio.sleep(0.002)
        if not filler.status().in_progress:
            await asyncio.sleep(0)  # let the worker finish
            return
    raise AssertionError("backfill did not finish")


def test_complete_page_publishes_every_id_and_finishes_the_gap() -> None:
    result = page(10, 14, 5, [10, 11, 12, 13, 14])
    assert [e.trade_id for e in result.trades] == [10, 11, 12, 13, 14]
    assert (result.missing, result.next_id) == ([], 15)


def test_full_page_short_of_the_gap_continues_after_its_last_id() -> None:
    result = page(10, 5000, 3, [10, 11, 12])
    assert (result.missing, result.next_id) == ([], 13)


def test_ids_missing_inside_a_page_are_exchange_gaps() -> None:
    result = page(10, 15, 6, [10, 13, 14, 15, 16, 17])
    assert result.missing == [(11, 12)]
    assert result.next_id == 16


def test_short_page_ending_inside_the_gap_means_rest_is_behind_the_stream() -> None:
    # Ids below 12 are a hole (the exchange has 12); 14..20 may not have reached REST yet.
    result = page(10, 20, 11, [12, 13])
    assert result.missing == [(10, 11)]
    assert (result.behind, result.next_id) == (True, 14)


def test_empty_page_leaves_the_whole_gap_to_ask_again() -> None:
    result = page(10, 20, 11, [])
    assert (result.missing, result.behind, result.next_id) == ([], True, 10)


def test_short_page_reaching_past_the_gap_marks_what_it_lacks_missing() -> None:
    result = page(10, 20, 11, [18, 21])
    assert result.missing == [(10, 17), (19, 20)]
    assert (result.behind, result.next_id) == (False, 21)


def test_trades_past_the_gap_are_ignored() -> None:
    result = page(10, 11, 2, [11, 12])
    assert [e.trade_id for e in result.trades] == [11]
    assert result.missing == [(10, 10)]


def test_a_page_that_makes_no_progress_ends_the_gap_instead_of_looping() -> None:
    result = page(10, 20, 2, [3, 4])
    assert (result.missing, result.behind, result.next_id) == ([(10, 20)], False, 21)


def test_invalid_rest_item_is_dead_lettered_and_not_counted_missing() -> None:
    items = [item(10), {**item(11), "price": "-1"}, "garbage", item(12)]
    result = absorb_page("BTCUSDT", 10, 12, 3, items, 0, NOW)
    assert [e.trade_id for e in result.trades] == [10, 12]
    assert [reason for _, reason in result.invalid] == [
        "price: Input should be greater than 0",
        "historical trade has no integer id",
    ]
    assert result.missing == []


def test_trades_older_than_the_cutoff_are_skipped() -> None:
    items = [item(1, NOW - 10_000), item(2, NOW)]
    result = absorb_page("BTCUSDT", 1, 2, 2, items, NOW - 5_000, NOW)
    assert ([e.trade_id for e in result.trades], result.too_old) == ([2], 1)


def test_bounds_keep_the_newest_max_trades_ids() -> None:
    gap = Gap("BTCUSDT", 1, 100_000, NOW)
    assert bound_gap(gap, 50_000, 3600, NOW) == Gap("BTCUSDT", 50_001, 100_000, NOW)
    assert bound_gap(gap, 0, 3600, NOW) is None  # backfill off
    assert bound_gap(gap, 10, 60, NOW + 61_000) is None  # everything older than max age


async def test_large_gap_is_fetched_in_pages_of_1000_with_progress_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exchange = TapeExchange()
    filler, publisher = backfiller(exchange, backfill_progress_pages=1)
    with caplog.at_level(logging.INFO, logger="pipeline.exchange.backfill"):
        filler.schedule("BTCUSDT", 1, 2500, NOW)
        await drain(filler)
    assert exchange.calls == [(1, 1000), (1001, 1000), (2001, 500)]
    assert sorted(e.trade_id for e in publisher.events) == list(range(1, 2501))
    progress = [r.getMessage() for r in caplog.records if "progress" in r.getMessage()]
    assert progress == [
        "backfill progress symbol=BTCUSDT done=1000 total=2500",
        "backfill progress symbol=BTCUSDT done=2000 total=2500",
    ]
    assert filler.status().trades_backfilled == 2500


async def test_exchange_gap_is_recorded_once_and_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exchange = TapeExchange(holes={5, 6, 7})
    filler, publisher = backfiller(exchange)
    with caplog.at_level(logging.WARNING, logger="pipeline.exchange.backfill"):
        filler.schedule("BTCUSDT", 3, 9, NOW)
        await drain(filler)
        await asyncio.sleep(0.05)
    assert exchange.calls == [(3, 7)]
    assert sorted(e.trade_id for e in publisher.events) == [3, 4, 8, 9]
    status = filler.status()
    assert status.exchange_gap_trades == 3
    assert status.exchange_gaps == (ExchangeGap("BTCUSDT", 5, 7),)
    assert sum("exchange gap" in r.getMessage() for r in caplog.records) == 1


async def test_gaps_of_one_symbol_are_filled_one_at_a_time_and_in_order() -> None:
    exchange = TapeExchange()
    filler, _ = backfiller(exchange)
    for first in (10, 5_000, 10_000):
        filler.schedule("BTCUSDT", first, first + 4, NOW)
    assert filler.status().in_progress == {"BTCUSDT": 15}
    await drain(filler)
    assert exchange.most_active == 1
    assert exchange.calls == [(10, 5), (5_000, 5), (10_000, 5)]
    assert filler.status().gaps_found == 3


async def test_nearby_gaps_waiting_in_the_queue_become_one_request() -> None:
    exchange = TapeExchange()
    filler, publisher = backfiller(exchange)
    for trade_id in range(10, 60, 2):  # every other frame was bad
        filler.schedule("BTCUSDT", trade_id, trade_id, NOW)
    await drain(filler)
    assert exchange.calls == [(10, 1), (12, 47)]
    assert set(range(10, 59, 2)) <= {e.trade_id for e in publisher.events}
    assert filler.status().gaps_found == 25


def test_gaps_merge_only_when_close_and_within_the_bound() -> None:
    queued = Gap("BTCUSDT", 10, 20, NOW)
    assert merge_gaps(queued, Gap("BTCUSDT", 30, 40, NOW + 1), 50_000) == Gap(
        "BTCUSDT", 10, 40, NOW + 1
    )
    assert merge_gaps(queued, Gap("BTCUSDT", 2_000, 2_001, NOW), 50_000) is None
    assert merge_gaps(queued, Gap("BTCUSDT", 30, 40, NOW), 20) is None


async def test_rest_outage_is_waited_out_and_the_gap_filled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backfill, "RETRY_BACKOFF_S", (0.01, 0.02))
    exchange = TapeExchange(failures=[ExchangeUnavailable("down"), ExchangeUnavailable("down")])
    filler, publisher = backfiller(exchange)
    filler.schedule("BTCUSDT", 1, 3, NOW)
    await drain(filler)
    assert sorted(e.trade_id for e in publisher.events) == [1, 2, 3]
    assert len(exchange.calls) == 3


async def test_refused_request_gives_up_the_gap() -> None:
    exchange = TapeExchange(failures=[ExchangeError(400, -1121, "Invalid symbol.")])
    filler, publisher = backfiller(exchange)
    filler.schedule("GONEUSDT", 1, 3, NOW)
    await drain(filler)
    assert publisher.events == []
    assert filler.status().trades_skipped == 3
    assert len(exchange.calls) == 1


async def test_cancel_forgets_the_symbols_pending_gaps() -> None:
    exchange = TapeExchange()
    filler, publisher = backfiller(exchange)
    filler.schedule("BTCUSDT", 1, 5000, NOW)
    await filler.cancel("BTCUSDT")
    assert filler.status().in_progress == {}
    assert len(publisher.events) < 5000
    await filler.close()


async def test_gap_rest_has_not_caught_up_with_is_asked_again_until_it_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backfill, "BEHIND_BACKOFF_S", (0.01, 0.02))
    exchange = TapeExchange(horizon=4)  # REST has 3 and 4; the stream has delivered 10
    filler, publisher = backfiller(exchange)
    filler.schedule("BTCUSDT", 3, 9, _now_ms())
    await asyncio.sleep(0.1)
    assert filler.status().in_progress == {"BTCUSDT": 5}
    exchange.horizon = None  # REST catches up
    await drain(filler)
    assert exchange.calls[0] == (3, 7)
    assert set(exchange.calls[1:]) == {(5, 5)} and len(exchange.calls) > 2
    assert sorted(e.trade_id for e in publisher.events) == list(range(3, 10))
    status = filler.status()
    assert (status.exchange_gap_trades, status.exchange_gaps) == (0, ())


async def test_gap_rest_never_catches_up_with_is_an_exchange_gap_once_gap_max_age_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The default backoff's first wait (1 s) is cut to the gap's age bound.
    exchange = TapeExchange(horizon=4)
    filler, publisher = backfiller(exchange, gap_max_age_s=0.3)
    seen = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pipeline.exchange.backfill"):
        filler.schedule("BTCUSDT", 3, 9, _now_ms())
        await drain(filler)
    assert exchange.calls == [(3, 7), (5, 5)]
    # The last request comes after the bound, well before the default backoff's 1 s.
    assert 0.29 <= exchange.called_at[-1] - seen < 0.9
    assert sorted(e.trade_id for e in publisher.events) == [3, 4]
    status = filler.status()
    assert status.exchange_gap_trades == 5
    assert status.exchange_gaps == (ExchangeGap("BTCUSDT", 5, 9),)
    [warning] = [r.getMessage() for r in caplog.records if "exchange gap" in r.getMessage()]
    assert "did not catch up within gap_max_age_s" in warning


async def test_gap_max_age_0_records_a_short_page_at_once() -> None:
    exchange = TapeExchange(horizon=4)
    filler, _ = backfiller(exchange, gap_max_age_s=0)
    filler.schedule("BTCUSDT", 3, 9, _now_ms())
    await drain(filler)
    assert exchange.calls == [(3, 7)]
    assert filler.status().exchange_gaps == (ExchangeGap("BTCUSDT", 5, 9),)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

"""RecentAnswers: a symbol's latest answer reused briefly, refreshed ahead, fetched once for all."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.reads.recent import RecentAnswers


class CountingFetch:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[str] = []
        self.delay_s = delay_s
        self.version = 0

    async def __call__(self, symbol: str) -> dict[str, Any] | None:
        self.calls.append(symbol)
        await asyncio.sleep(self.delay_s)
        if symbol == "UNKNOWN":
            return None
        return {"symbol": symbol, "version": self.version}


async def test_requests_arriving_together_share_one_fetch() -> None:
    fetch = CountingFetch(delay_s=0.05)
    answers = RecentAnswers(fetch, ttl_s=1.0)
    results = await asyncio.gather(*(answers.get("BTCUSDT") for _ in range(50)))
    assert fetch.calls == ["BTCUSDT"]
    assert all(result == {"symbol": "BTCUSDT", "version": 0} for result in results)


async def test_an_answer_is_reused_for_the_ttl_then_fetched_again() -> None:
    fetch = CountingFetch()
    answers = RecentAnswers(fetch, ttl_s=0.1)
    assert await answers.get("BTCUSDT") == {"symbol": "BTCUSDT", "version": 0}
    fetch.version = 1
    assert await answers.get("BTCUSDT") == {"symbol": "BTCUSDT", "version": 0}
    await asyncio.sleep(0.12)
    assert await answers.get("BTCUSDT") == {"symbol": "BTCUSDT", "version": 1}
    assert fetch.calls == ["BTCUSDT", "BTCUSDT"]


async def test_symbols_without_trades_are_not_kept() -> None:
    fetch = CountingFetch()
    answers = RecentAnswers(fetch, ttl_s=10.0)
    assert await answers.get("UNKNOWN") is None
    assert await answers.get("UNKNOWN") is None
    assert fetch.calls == ["UNKNOWN", "UNKNOWN"]


async def test_a_client_going_away_does_not_cancel_the_fetch_others_wait_for() -> None:
    fetch = CountingFetch(delay_s=0.05)
    answers = RecentAnswers(fetch, ttl_s=1.0)
    leaving = asyncio.create_task(answers.get("BTCUSDT"))
    staying = asyncio.create_task(answers.get("BTCUSDT"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    assert await staying == {"symbol": "BTCUSDT", "version": 0}
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_failed_fetch_reaches_every_waiter_and_is_not_kept() -> None:
    calls = 0

    async def failing(symbol: str) -> dict[str, Any] | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise OSError("database down")

    answers = RecentAnswers(failing, ttl_s=1.0)
    results = await asyncio.gather(
        *(answers.get("BTCUSDT") for _ in range(3)), return_exceptions=True
    )
    assert [type(result) for result in results] == [OSError] * 3
    with pytest.raises(OSError):
        await answers.get("BTCUSDT")
    assert calls == 2


async def test_ttl_zero_asks_every_time() -> None:
    fetch = CountingFetch()
    answers = RecentAnswers(fetch, ttl_s=0.0)
    await answers.get("BTCUSDT")
    await answers.get("BTCUSDT")
    assert fetch.calls == ["BTCUSDT", "BTCUSDT"]


async def test_past_half_its_life_an_answer_is_refreshed_ahead_without_making_anyone_wait() -> None:
    fetch = CountingFetch(delay_s=0.05)
    answers = RecentAnswers(fetch, ttl_s=0.2)
    await answers.get("BTCUSDT")
    fetch.version = 1
    await asyncio.sleep(0.11)  # past half of the ttl
    waited = asyncio.get_running_loop().time()
    assert await answers.get("BTCUSDT") == {"symbol": "BTCUSDT", "version": 0}
    assert asyncio.get_running_loop().time() - waited < 0.01  # served at once
    await asyncio.sleep(0.07)  # the refresh ahead has landed
    assert await answers.get("BTCUSDT") == {"symbol": "BTCUSDT", "version": 1}
    assert fetch.calls == ["BTCUSDT", "BTCUSDT"]  # one refresh for both requests


async def test_a_failed_refresh_ahead_reaches_nobody_until_the_answer_expires() -> None:
    fail = False

    async def fetch(symbol: str) -> dict[str, Any] | None:
        if fail:
            raise OSError("database down")
        return {"symbol": symbol}

    answers = RecentAnswers(fetch, ttl_s=0.1)
    await answers.get("BTCUSDT")
    fail = True
    await asyncio.sleep(0.06)
    assert await answers.get("BTCUSDT") == {"symbol": "BTCUSDT"}  # starts the failing refresh
    await asyncio.sleep(0.05)  # expired now
    with pytest.raises(OSError):
        await answers.get("BTCUSDT")

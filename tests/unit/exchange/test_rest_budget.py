"""REST weight in two priorities, per clock minute: gap filling first, history jobs with the rest."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.exchange.pacing import MinuteWindow, RestBudget, WeightBudget


class FakeClock:
    def __init__(self, now: float = 1_000_040.0) -> None:  # 20 s into a clock minute
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_minute_window_keeps_each_clock_minute_within_the_limit() -> None:
    wall = FakeClock()
    window = MinuteWindow(100, clock=wall)
    for _ in range(4):
        assert window.wait_for(25) == 0.0
        window.take(25)
    assert window.wait_for(1) == pytest.approx(40.01)  # until the next minute starts
    wall.now += 40.0
    assert window.wait_for(100) == 0.0


def test_minute_window_counts_what_the_exchange_reports_for_the_ip() -> None:
    wall = FakeClock()
    window = MinuteWindow(100, clock=wall)
    window.take(10)
    window.observe(90)  # another process of this IP spent weight too
    assert window.wait_for(10) == 0.0
    assert window.wait_for(11) > 0
    window.observe(50)  # an older answer never lowers the count
    assert window.wait_for(11) > 0


def test_minute_window_has_its_own_lower_limit_for_a_share() -> None:
    window = MinuteWindow(100, clock=FakeClock())
    window.take(80)
    assert window.wait_for(10, limit=90) == 0.0
    assert window.wait_for(11, limit=90) > 0
    assert window.wait_for(20) == 0.0


def test_bucket_wait_for_leaves_a_reserve_and_takes_nothing() -> None:
    clock = FakeClock()
    bucket = WeightBudget(600, clock=clock)  # 10 weight/s
    assert bucket.wait_for(500, keep=100) == 0.0
    assert bucket.wait_for(501, keep=100) == pytest.approx(0.1)
    bucket.take(500)
    assert bucket.wait_for(100) == 0.0
    assert bucket.wait_for(25, keep=100) == pytest.approx(2.5)
    bucket.pause_until(clock.now + 30.0)
    assert bucket.wait_for(1) == 30.0


async def test_history_requests_leave_the_reserved_share_to_gap_filling() -> None:
    budget = RestBudget(100, background_share=0.5, clock=FakeClock(), wall_clock=FakeClock())
    await budget.spend(25, background=True)
    await budget.spend(25, background=True)
    third = asyncio.create_task(budget.spend(25, background=True))
    await asyncio.sleep(0.4)
    assert not third.done(), "a history request may not use the share kept for gaps"
    await asyncio.wait_for(budget.spend(25), 0.2)
    await asyncio.wait_for(budget.spend(25), 0.2)
    assert budget.spent == {"foreground": 50, "background": 50}
    third.cancel()


async def test_a_history_request_waits_while_a_gap_request_waits() -> None:
    clock, wall = FakeClock(), FakeClock()
    budget = RestBudget(100, background_share=1.0, clock=clock, wall_clock=wall)
    await budget.spend(100)
    gap = asyncio.create_task(budget.spend(25))  # the bucket is empty: it waits for weight
    await asyncio.sleep(0.05)
    clock.now += 60.0
    wall.now += 60.0  # weight is back, but the gap request is still in line
    history = asyncio.create_task(budget.spend(25, background=True))
    await asyncio.sleep(0.4)
    assert not history.done(), "a history request went before a waiting gap request"
    gap.cancel()
    await asyncio.wait_for(history, 1.0)
    assert budget.spent == {"foreground": 100, "background": 25}

"""Pacing of what the source sends to the exchange: messages, attempts, weight.

Reconnect delays follow the common retry policy (tests/unit/core/test_retry.py)."""

from __future__ import annotations

import pytest

from pipeline.exchange.pacing import AttemptWindow, Pacer, WeightBudget


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_pacer_spaces_messages_by_one_over_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(4.0, clock=clock)
    assert [pacer.reserve() for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]


def test_pacer_does_not_bank_idle_time_into_a_burst() -> None:
    clock = FakeClock()
    pacer = Pacer(4.0, clock=clock)
    pacer.reserve()
    clock.now += 60.0
    assert [pacer.reserve() for _ in range(2)] == [0.0, 0.25]


async def test_pacer_wait_sleeps_for_the_reserved_slot() -> None:
    pacer = Pacer(50.0)
    await pacer.wait()
    assert pacer.reserve() == pytest.approx(0.02, abs=0.005)


def test_attempt_window_allows_limit_attempts_then_waits_for_the_oldest_to_expire() -> None:
    clock = FakeClock()
    window = AttemptWindow(3, 300.0, clock=clock)
    assert [window.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert window.reserve() == 300.0
    clock.now += 301.0
    assert window.reserve() == 0.0


def test_attempt_window_queues_successive_waiters_in_order() -> None:
    clock = FakeClock()
    window = AttemptWindow(2, 10.0, clock=clock)
    window.reserve()
    clock.now += 1.0
    window.reserve()
    assert window.reserve() == 9.0  # the first attempt leaves the window at t=10
    assert window.reserve() == 10.0  # the second at t=11


def test_weight_budget_allows_a_minute_of_weight_then_paces_at_the_refill_rate() -> None:
    clock = FakeClock()
    budget = WeightBudget(3000, clock=clock)  # 50 weight/s
    delays = [budget.reserve(25) for _ in range(120)]
    assert delays == [0.0] * 120
    assert budget.reserve(25) == pytest.approx(0.5)
    assert budget.reserve(25) == pytest.approx(1.0)


def test_weight_budget_refills_over_time() -> None:
    clock = FakeClock()
    budget = WeightBudget(600, clock=clock)  # 10 weight/s
    budget.reserve(600)
    clock.now += 2.5
    assert budget.reserve(25) == 0.0


def test_weight_budget_pause_holds_every_caller_until_the_deadline() -> None:
    clock = FakeClock()
    budget = WeightBudget(3000, clock=clock)
    budget.pause_until(clock.now + 30.0)
    assert budget.reserve(1) == 30.0
    clock.now += 31.0
    assert budget.reserve(1) == 0.0

"""The one retry policy: jittered exponential delays between a minimum and a maximum."""

from __future__ import annotations

import asyncio
import random
import time

from pipeline.core.retry import Backoff


def test_delays_start_at_min_and_double_up_to_max() -> None:
    backoff = Backoff(0.5, 4.0, rng=lambda: 1.0)  # always the top of the jitter range
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_the_bottom_of_the_jitter_range_is_always_min() -> None:
    backoff = Backoff(0.5, 60.0, rng=lambda: 0.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5] * 5


def test_random_delays_stay_between_min_and_the_growing_cap() -> None:
    backoff = Backoff(0.2, 5.0, rng=random.Random(7).random)
    for attempt in range(40):
        cap = min(5.0, 0.2 * 2**attempt)
        assert 0.2 <= backoff.next_delay() <= cap


def test_jitter_spreads_clients_that_failed_together() -> None:
    clients = [Backoff(1.0, 60.0, rng=random.Random(seed).random) for seed in range(20)]
    for backoff in clients:
        backoff.next_delay()  # the first retry is prompt for everyone
    second = {backoff.next_delay() for backoff in clients}
    assert len(second) == len(clients)


def test_reset_after_a_success_starts_over_from_min() -> None:
    backoff = Backoff(1.0, 60.0, rng=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 1.0
    assert backoff.next_delay() == 2.0


def test_equal_min_and_max_is_a_steady_pace() -> None:
    backoff = Backoff(1.0, 1.0, rng=random.random)
    assert [backoff.next_delay() for _ in range(4)] == [1.0] * 4


def test_a_max_below_min_is_taken_as_min() -> None:
    backoff = Backoff(2.0, 0.5, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(3)] == [2.0] * 3


def test_many_attempts_do_not_overflow() -> None:
    backoff = Backoff(0.5, 60.0, rng=lambda: 1.0)
    backoff.attempt = 10_000
    assert backoff.next_delay() == 60.0


async def test_pause_sleeps_the_next_delay() -> None:
    backoff = Backoff(0.05, 1.0, rng=lambda: 1.0)
    started = time.monotonic()
    assert await backoff.pause() == 0.05
    assert time.monotonic() - started >= 0.05
    assert backoff.attempt == 1


async def test_a_cancelled_pause_ends_at_once() -> None:
    pausing = asyncio.create_task(Backoff(60.0, 60.0).pause())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    pausing.cancel()
    await asyncio.wait({pausing})
    assert pausing.cancelled()
    assert time.monotonic() - started < 0.5

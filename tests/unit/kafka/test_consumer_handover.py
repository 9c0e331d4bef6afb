"""How the consumer hands batches over: at most two in hand (one committing its offsets while the
next is written), and a rebalance waits for both before partitions are revoked."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.kafka import consumer as consumer_module
from pipeline.kafka.consumer import IN_HAND, _CommitOnRevoke, _without_done


async def test_a_rebalance_waits_until_every_batch_in_hand_is_committed() -> None:
    in_hand = asyncio.Semaphore(IN_HAND)
    for _ in range(IN_HAND):
        await in_hand.acquire()  # batch N committing, N+1 being written
    revoking = asyncio.create_task(_CommitOnRevoke(in_hand).on_partitions_revoked([]))
    await asyncio.sleep(0.01)
    in_hand.release()  # N committed
    await asyncio.sleep(0.01)
    assert not revoking.done()
    in_hand.release()  # N+1 committed
    await asyncio.wait_for(revoking, 1)
    assert not in_hand.locked()  # the listener gave its slots back


async def test_a_batch_handed_over_during_the_wait_comes_after_the_rebalance() -> None:
    in_hand = asyncio.Semaphore(IN_HAND)
    order: list[str] = []

    async def revoke() -> None:
        await _CommitOnRevoke(in_hand).on_partitions_revoked([])
        order.append("revoked")

    async def hand_over() -> None:
        await in_hand.acquire()
        order.append("next batch")

    await in_hand.acquire()  # batch N being written
    revoking = asyncio.create_task(revoke())
    await asyncio.sleep(0.01)
    handing_over = asyncio.create_task(hand_over())  # N+1 decoded meanwhile
    await asyncio.sleep(0.01)
    in_hand.release()  # N committed
    await asyncio.wait_for(asyncio.gather(revoking, handing_over), 1)
    assert order == ["revoked", "next batch"]


async def test_a_rebalance_stops_waiting_after_the_bound_and_keeps_no_slot(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consumer_module, "REVOKE_WAIT_S", 0.05)
    in_hand = asyncio.Semaphore(IN_HAND)
    await in_hand.acquire()  # a batch whose write hangs (database down)
    await _CommitOnRevoke(in_hand).on_partitions_revoked([])
    assert "did not wait for the batches in hand" in caplog.text
    in_hand.release()
    assert not in_hand.locked()
    for _ in range(IN_HAND):
        await asyncio.wait_for(in_hand.acquire(), 1)


async def test_a_failed_batch_in_hand_is_raised_and_running_ones_are_kept() -> None:
    async def fail() -> None:
        raise RuntimeError("batch 7 cannot be stored")

    running = asyncio.create_task(asyncio.sleep(10))
    failed = asyncio.create_task(fail())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="batch 7"):
        _without_done([failed, running])
    finished = asyncio.create_task(asyncio.sleep(0))
    await finished
    assert _without_done([finished, running]) == [running]
    running.cancel()

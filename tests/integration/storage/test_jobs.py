"""backfill_jobs: a job runs for one owner at a time; cancels, takeovers and hand-backs are seen
by the owner's next save or renewal."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.core.history import JobProgress
from pipeline.storage.jobs import HistoryJobs
from tests.api_harness import insert_trades, trade_row

pytestmark = pytest.mark.integration

T0 = 1_764_000_000_000


async def test_concurrent_claims_never_hand_one_job_to_two_owners(engine: AsyncEngine) -> None:
    jobs = HistoryJobs(engine)
    created = [await jobs.create("BTCUSDT", T0, T0 + 60_000 * i + 1) for i in range(5)]
    claims = await asyncio.gather(
        *(jobs.claim(owner, 2, stale_s=60.0) for owner in ("a", "b", "c", "d"))
    )
    claimed = [job.id for claim in claims for job in claim]
    assert sorted(claimed) == [job.id for job in created]
    assert all(job.state == "running" and job.started_at is not None for c in claims for job in c)
    assert await jobs.claim("e", 2, stale_s=60.0) == []


async def test_progress_is_saved_only_by_the_owner_of_a_running_job(engine: AsyncEngine) -> None:
    jobs = HistoryJobs(engine)
    job = await jobs.create("ETHUSDT", T0, T0 + 1000)
    [claimed] = await jobs.claim("a", 5, stale_s=60.0)
    progress = JobProgress(first_id=10, last_id=99, position=50, fetched=40, rate=12.5)
    assert await jobs.save(job.id, "a", progress)
    assert not await jobs.save(job.id, "b", progress)
    stored = await jobs.get(job.id)
    assert stored is not None and stored.progress == progress and stored.owner == "a"
    assert stored.progress.remaining == 50
    assert await jobs.renew("a", [job.id]) == {job.id}

    cancelled = await jobs.cancel(job.id)
    assert cancelled is not None and cancelled.state == "cancelled"
    assert await jobs.renew("a", [job.id]) == set()
    assert not await jobs.save(job.id, "a", progress)
    assert not await jobs.finish(job.id, "a", "done", progress)
    again = await jobs.cancel(job.id)
    assert again is not None and again.state == "cancelled"
    assert await jobs.cancel(999_999) is None
    assert claimed.id == job.id


async def test_a_silent_owner_s_job_is_taken_over_and_a_stopping_one_hands_it_back(
    engine: AsyncEngine,
) -> None:
    jobs = HistoryJobs(engine)
    first = await jobs.create("BTCUSDT", T0, T0 + 1000)
    second = await jobs.create("BTCUSDT", T0, T0 + 2000)
    assert [j.id for j in await jobs.claim("dead", 1, stale_s=60.0)] == [first.id]
    assert [j.id for j in await jobs.claim("alive", 1, stale_s=60.0)] == [second.id]
    assert await jobs.claim("new", 5, stale_s=60.0) == []  # both owners renewed recently
    await asyncio.sleep(0.3)
    await jobs.renew("alive", [second.id])
    taken = await jobs.claim("new", 5, stale_s=0.2)
    assert [j.id for j in taken] == [first.id], "only the silent owner's job"
    assert taken[0].progress == JobProgress()
    assert not await jobs.save(first.id, "dead", JobProgress(position=5))

    await jobs.release("alive", [second.id])
    released = await jobs.get(second.id)
    assert released is not None and (released.state, released.owner) == ("queued", None)
    assert [j.id for j in await jobs.claim("new", 5, stale_s=60.0)] == [second.id]
    assert await jobs.finish(second.id, "new", "done", JobProgress(fetched=3, stored=3))
    done = await jobs.get(second.id)
    assert done is not None and done.state == "done" and done.finished_at is not None
    assert await jobs.count_by_state() == {"running": 1, "done": 1}
    assert [j.id for j in await jobs.newest(10)] == [second.id, first.id]
    assert [j.id for j in await jobs.newest(10, "done")] == [second.id]


async def test_stored_between_counts_the_window_s_rows_by_id_and_time(engine: AsyncEngine) -> None:
    await insert_trades(
        engine,
        [trade_row("BTCUSDT", i, T0 + i) for i in range(1, 11)]
        + [trade_row("ETHUSDT", i, T0 + i) for i in range(1, 11)],
    )
    jobs = HistoryJobs(engine)
    assert await jobs.stored_between("BTCUSDT", 1, 10, T0, T0 + 100) == 10
    assert await jobs.stored_between("BTCUSDT", 3, 6, T0, T0 + 100) == 4
    assert await jobs.stored_between("BTCUSDT", 1, 10, T0 + 5, T0 + 7) == 3
    assert await jobs.stored_between("SOLUSDT", 1, 10, T0, T0 + 100) == 0

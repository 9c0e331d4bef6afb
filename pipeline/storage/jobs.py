"""HistoryJobs: the `backfill_jobs` table — what the API creates, reads and cancels, and what the
job runners claim, renew, save and finish.

One row per job. A runner claims queued jobs (and running ones whose owner stopped renewing)
with `FOR UPDATE SKIP LOCKED`, so two instances never run the same job; every change it makes
afterwards is conditional on still owning the job in state running, so a cancel (the API sets
`cancelled`) or a takeover is noticed at the next save or renewal.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import RowMapping, and_, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.core.errors import JobStoreUnavailable
from pipeline.core.history import ACTIVE_STATES, HistoryJob, JobProgress, JobState
from pipeline.storage.outage import is_outage
from pipeline.storage.tables import backfill_jobs, crypto_prices

logger = logging.getLogger(__name__)

T = TypeVar("T")
_PROGRESS_COLUMNS = (
    "first_id",
    "last_id",
    "position",
    "fetched",
    "stored",
    "stored_to",
    "missing",
    "pages",
    "errors",
    "last_error",
    "rate",
)


def _job(values: RowMapping) -> HistoryJob:
    return HistoryJob(
        id=values["id"],
        symbol=values["symbol"],
        start_time=values["start_time"],
        end_time=values["end_time"],
        state=values["state"],
        progress=JobProgress(**{name: values[name] for name in _PROGRESS_COLUMNS}),
        owner=values["owner"],
        created_at=values["created_at"],
        started_at=values["started_at"],
        updated_at=values["updated_at"],
        finished_at=values["finished_at"],
    )


def _progress_values(progress: JobProgress) -> dict[str, Any]:
    return {name: getattr(progress, name) for name in _PROGRESS_COLUMNS}


class HistoryJobs:
    """Implements pipeline.core.ports.HistoryJobStore, plus what the API needs."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def _guarded(self, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except Exception as exc:
            if is_outage(exc):
                raise JobStoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc
            raise

    # -- the API --------------------------------------------------------------------------

    async def create(self, symbol: str, start_ms: int, end_ms: int) -> HistoryJob:
        statement = (
            backfill_jobs.insert()
            .values(symbol=symbol, start_time=start_ms, end_time=end_ms)
            .returning(*backfill_jobs.c)
        )
        async with self._engine.begin() as connection:
            row = (await connection.execute(statement)).mappings().one()
        return _job(row)

    async def get(self, job_id: int) -> HistoryJob | None:
        statement = select(backfill_jobs).where(backfill_jobs.c.id == job_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(statement)).mappings().one_or_none()
        return None if row is None else _job(row)

    async def newest(self, limit: int, state: JobState | None = None) -> list[HistoryJob]:
        """The newest `limit` jobs (in `state`), newest first."""
        statement = select(backfill_jobs).order_by(backfill_jobs.c.id.desc()).limit(limit)
        if state is not None:
            statement = statement.where(backfill_jobs.c.state == state)
        async with self._engine.connect() as connection:
            return [_job(row) for row in (await connection.execute(statement)).mappings()]

    async def cancel(self, job_id: int) -> HistoryJob | None:
        """Cancel a queued or running job; the job as it is now (None: no such job). Its
        runner sees the state at its next renewal and stops."""
        statement = (
            update(backfill_jobs)
            .where(backfill_jobs.c.id == job_id, backfill_jobs.c.state.in_(ACTIVE_STATES))
            .values(state="cancelled", finished_at=func.now(), updated_at=func.now())
            .returning(*backfill_jobs.c)
        )
        async with self._engine.begin() as connection:
            row = (await connection.execute(statement)).mappings().one_or_none()
        return _job(row) if row is not None else await self.get(job_id)

    # -- the runners (pipeline.core.ports.HistoryJobStore) --------------------------------

    async def claim(self, owner: str, limit: int, stale_s: float) -> list[HistoryJob]:
        stale = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, stale_s)
        claimable = (
            select(backfill_jobs.c.id)
            .where(
                or_(
                    backfill_jobs.c.state == "queued",
                    and_(
                        backfill_jobs.c.state == "running",
                        or_(
                            backfill_jobs.c.heartbeat_at.is_(None),
                            backfill_jobs.c.heartbeat_at < stale,
                        ),
                    ),
                )
            )
            .order_by(backfill_jobs.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        statement = (
            update(backfill_jobs)
            .where(backfill_jobs.c.id.in_(claimable))
            .values(
                state="running",
                owner=owner,
                heartbeat_at=func.now(),
                started_at=func.coalesce(backfill_jobs.c.started_at, func.now()),
                updated_at=func.now(),
            )
            .returning(*backfill_jobs.c)
        )

        async def work() -> list[HistoryJob]:
            async with self._engine.begin() as connection:
                rows = (await connection.execute(statement)).mappings().all()
            return sorted((_job(row) for row in rows), key=lambda job: job.id)

        return await self._guarded(work)

    def _owned(self, job_id: int, owner: str) -> Any:
        return and_(
            backfill_jobs.c.id == job_id,
            backfill_jobs.c.owner == owner,
            backfill_jobs.c.state == "running",
        )

    async def renew(self, owner: str, job_ids: Sequence[int]) -> set[int]:
        if not job_ids:
            return set()
        statement = (
            update(backfill_jobs)
            .where(
                backfill_jobs.c.id.in_(list(job_ids)),
                backfill_jobs.c.owner == owner,
                backfill_jobs.c.state == "running",
            )
            .values(heartbeat_at=func.now())
            .returning(backfill_jobs.c.id)
        )

        async def work() -> set[int]:
            async with self._engine.begin() as connection:
                return set((await connection.scalars(statement)).all())

        return await self._guarded(work)

    async def save(self, job_id: int, owner: str, progress: JobProgress) -> bool:
        statement = (
            update(backfill_jobs)
            .where(self._owned(job_id, owner))
            .values(**_progress_values(progress), heartbeat_at=func.now(), updated_at=func.now())
            .returning(backfill_jobs.c.id)
        )

        async def work() -> bool:
            async with self._engine.begin() as connection:
                return (await connection.scalar(statement)) is not None

        return await self._guarded(work)

    async def finish(self, job_id: int, owner: str, state: JobState, progress: JobProgress) -> bool:
        statement = (
            update(backfill_jobs)
            .where(self._owned(job_id, owner))
            .values(
                **_progress_values(progress),
                state=state,
                owner=None,
                finished_at=func.now(),
                updated_at=func.now(),
            )
            .returning(backfill_jobs.c.id)
        )

        async def work() -> bool:
            async with self._engine.begin() as connection:
                return (await connection.scalar(statement)) is not None

        return await self._guarded(work)

    async def release(self, owner: str, job_ids: Sequence[int]) -> None:
        if not job_ids:
            return
        statement = (
            update(backfill_jobs)
            .where(
                backfill_jobs.c.id.in_(list(job_ids)),
                backfill_jobs.c.owner == owner,
                backfill_jobs.c.state == "running",
            )
            .values(state="queued", owner=None, heartbeat_at=None, updated_at=func.now())
        )

        async def work() -> None:
            async with self._engine.begin() as connection:
                await connection.execute(statement)

        await self._guarded(work)

    async def stored_between(
        self, symbol: str, first_id: int, last_id: int, start_ms: int, end_ms: int
    ) -> int:
        # A range scan of the primary key, the window's time bounds checked on the rows.
        statement = select(func.count()).where(
            crypto_prices.c.symbol == symbol,
            crypto_prices.c.trade_id.between(first_id, last_id),
            crypto_prices.c.trade_time.between(start_ms, end_ms),
        )

        async def work() -> int:
            async with self._engine.connect() as connection:
                return int(await connection.scalar(statement) or 0)

        return await self._guarded(work)

    async def count_by_state(self) -> dict[str, int]:
        statement = text("SELECT state, count(*) FROM backfill_jobs GROUP BY state")

        async def work() -> dict[str, int]:
            async with self._engine.connect() as connection:
                return {state: int(n) for state, n in await connection.execute(statement)}

        return await self._guarded(work)

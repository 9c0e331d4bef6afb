"""History jobs (POST /backfills): a symbol's trades over a past time range, fetched as a job.

The types shared by the three layers that handle a job: the API creates and reads it, storage
keeps it (`backfill_jobs`), the exchange layer runs it. A job is resumable because everything
it has done is in `JobProgress`, saved after each page is in Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
# Binance opened on 2017-07-14; trade times before 2017-07-01 are invalid everywhere.
EARLIEST_MS = 1_498_867_200_000


@dataclass(frozen=True, slots=True)
class JobProgress:
    """What a job has done so far; saved after every page, so a restart resumes from it.

    Trade ids: `first_id`..`last_id` is the window's id range (None until it is looked up),
    `position` the next id to fetch. `fetched` trades were published (all inside the window),
    of which `stored` are confirmed in crypto_prices, for ids below `stored_to`.
    """

    first_id: int | None = None
    last_id: int | None = None
    position: int | None = None
    fetched: int = 0
    stored: int = 0
    stored_to: int | None = None
    missing: int = 0  # ids in range the exchange does not have
    pages: int = 0
    errors: int = 0
    last_error: str | None = None
    rate: float | None = None  # trades fetched per second, recently

    @property
    def remaining(self) -> int | None:
        """Trade ids still to fetch; None while the id range is not known yet."""
        if self.last_id is None or self.position is None:
            return None
        return max(0, self.last_id - self.position + 1)


@dataclass(frozen=True, slots=True)
class HistoryJob:
    id: int
    symbol: str
    start_time: int  # epoch ms, inclusive
    end_time: int  # epoch ms, inclusive
    state: JobState
    progress: JobProgress
    owner: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None

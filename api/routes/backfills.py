"""History jobs: any symbol's trades over a past time range, fetched by the producers.

The API only writes and reads `backfill_jobs`; a producer instance's HistoryRunner claims a
queued job within a second or two, runs it and records its progress there. A cancel is a state
change its runner notices within a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError

from api.deps import EngineDep, ExchangeDep, SettingsDep
from api.schemas.backfills import BackfillIn, BackfillOut, BackfillsOut
from api.schemas.common import ErrorOut
from api.security import require_mutation_access
from pipeline.core.history import EARLIEST_MS, JobState
from pipeline.exchange.client import ExchangeError, ExchangeUnavailable
from pipeline.storage.jobs import HistoryJobs

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/backfills", tags=["backfills"])

VERIFY_TIMEOUT_S = 5.0
DAY_MS = 86_400_000
MAX_JOB_ID = 2**63 - 1
JobId = Annotated[int, Path(ge=1, le=MAX_JOB_ID, description="the job's id")]

MUTATION_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "API_KEY is set and X-API-Key is missing or wrong"},
    403: {"model": ErrorOut, "description": "API_KEY is unset and the client is not local"},
    503: {"model": ErrorOut, "description": "PostgreSQL (or, for POST, the exchange) unavailable"},
}


async def get_jobs(engine: EngineDep) -> HistoryJobs:
    return HistoryJobs(engine)


JobsDep = Annotated[HistoryJobs, Depends(get_jobs)]


def _body_error(field: str, message: str, value: object) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": message, "input": value}]
    )


async def _check_listed(exchange: ExchangeDep, symbol: str) -> None:
    try:
        async with asyncio.timeout(VERIFY_TIMEOUT_S):
            listed = await exchange.symbol_exists(symbol)
    except (ExchangeUnavailable, ExchangeError, httpx.HTTPError, TimeoutError) as exc:
        logger.warning("cannot check %s with the exchange: %s", symbol, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the exchange did not answer whether it lists {symbol}; retry later",
            headers={"Retry-After": "5"},
        ) from None
    if not listed:
        raise _body_error("symbol", f"{symbol} is not listed on the exchange", symbol)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Start a history job",
    description=(
        "Queues a job that fetches every trade of `symbol` with `start` <= trade time <= `end` "
        "(epoch ms) from the exchange's REST API into the pipeline: Kafka, then PostgreSQL, "
        "where trades already stored are not added twice. A producer instance starts it "
        "within seconds; follow it at `GET /backfills/{id}`. 422 when `end` is not after "
        "`start`, `end` is in the future, `start` is before 2017-07-01, the range is longer "
        "than `binance.history_max_days`, or (with `binance.verify_symbols`) the exchange does "
        "not list the symbol."
    ),
    responses={
        202: {"description": "queued; Location is the job's URL"},
        400: {"model": ErrorOut, "description": "the body is not parsable JSON"},
        413: {"model": ErrorOut, "description": "request body too large"},
        **MUTATION_ERRORS,
    },
    dependencies=[Depends(require_mutation_access)],
)
async def create_backfill(
    body: Annotated[BackfillIn, Body()],
    response: Response,
    jobs: JobsDep,
    settings: SettingsDep,
    exchange: ExchangeDep,
) -> BackfillOut:
    now_ms = time.time_ns() // 1_000_000
    if body.end > now_ms:
        raise _body_error("end", f"end is in the future (now is {now_ms})", body.end)
    if body.start < EARLIEST_MS:
        raise _body_error(
            "start", f"start is before the exchange's first trades ({EARLIEST_MS})", body.start
        )
    max_days = settings.binance.history_max_days
    if body.end - body.start > max_days * DAY_MS:
        raise _body_error(
            "end",
            f"the range is longer than {max_days} days (binance.history_max_days); "
            "split it into several jobs",
            body.end,
        )
    if settings.binance.verify_symbols:
        await _check_listed(exchange, body.symbol)
    job = await jobs.create(body.symbol, body.start, body.end)
    logger.info(
        "history job %d queued via API: %s %d..%d", job.id, job.symbol, body.start, body.end
    )
    response.headers["Location"] = f"/backfills/{job.id}"
    return BackfillOut.of(job)


@router.get(
    "",
    summary="List history jobs",
    description="The newest jobs first (at most `limit`), optionally only those in `state`.",
    responses={503: {"model": ErrorOut}},
)
async def list_backfills(
    jobs: JobsDep,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> BackfillsOut:
    return BackfillsOut(items=[BackfillOut.of(job) for job in await jobs.newest(limit, state)])


@router.get(
    "/{job_id}",
    summary="A history job's progress",
    responses={404: {"model": ErrorOut, "description": "no such job"}, 503: {"model": ErrorOut}},
)
async def get_backfill(job_id: JobId, jobs: JobsDep) -> BackfillOut:
    job = await jobs.get(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no history job {job_id}")
    return BackfillOut.of(job)


@router.delete(
    "/{job_id}",
    summary="Cancel a history job",
    description=(
        "A queued job never starts; a running one stops within seconds (what it stored "
        "stays). 200 with the cancelled job (also when it was cancelled already); 409 when it "
        "has finished; 404 when there is no such job."
    ),
    responses={
        404: {"model": ErrorOut, "description": "no such job"},
        409: {"model": ErrorOut, "description": "the job has finished already"},
        **MUTATION_ERRORS,
    },
    dependencies=[Depends(require_mutation_access)],
)
async def cancel_backfill(job_id: JobId, jobs: JobsDep) -> BackfillOut:
    job = await jobs.cancel(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no history job {job_id}")
    if job.state != "cancelled":
        raise HTTPException(status.HTTP_409_CONFLICT, f"history job {job_id} is {job.state}")
    logger.info("history job %d cancelled via API", job_id)
    return BackfillOut.of(job)

"""The pipeline itself: consumer lag from Kafka, and this instance's roles and counters."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from api.deps import LagDep, PipelineDep
from api.probes import KafkaUnreachable
from api.schemas.common import ErrorOut
from api.schemas.pipeline import ConsumerLagOut, PartitionLagOut
from pipeline.core.status import PipelineStatus

router = APIRouter(tags=["pipeline"])


@router.get(
    "/consumer/lag",
    summary="Consumer lag of the sink's group",
    description=(
        "Per partition of the trade topic: the group's committed offset, the end offset and "
        "their difference. A partition the group never committed counts its whole log. "
        "503 when Kafka does not answer within 5 s."
    ),
    responses={503: {"model": ErrorOut, "description": "Kafka unreachable"}},
)
async def get_consumer_lag(lag: LagDep) -> ConsumerLagOut:
    try:
        measured = await lag.measure()
    except KafkaUnreachable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return ConsumerLagOut(
        group=measured.group,
        topic=measured.topic,
        total_lag=measured.total_lag,
        partitions=[
            PartitionLagOut(
                partition=p.partition, committed=p.committed, end_offset=p.end_offset, lag=p.lag
            )
            for p in measured.partitions
        ],
    )


@router.get(
    "/pipeline/status",
    summary="This instance's roles, tasks and counters",
    description=(
        "Roles and supervised tasks (state, restarts, last error); the source's connections "
        "and per-symbol last trade id/time; counts received/produced/stored/dead-lettered; "
        "trade-id gaps found and backfilled. Counters are since this process started."
    ),
)
async def pipeline_status(pipeline: PipelineDep) -> PipelineStatus:
    # The pipeline's own type is the response model: FastAPI documents and serializes it.
    await pipeline.refresh()
    return pipeline.status()

"""Prometheus metrics of every stage, in the text exposition format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import LagDep, PipelineDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description=(
        "Counters, gauges and histograms of the source, producer, consumer and sink. "
        "The consumer-lag gauge is refreshed from Kafka when older than 5 s (bounded by 2 s)."
    ),
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(lag: LagDep, pipeline: PipelineDep) -> Response:
    await lag.refresh_gauge()
    await pipeline.refresh()
    return Response(pipeline.metrics(), media_type=CONTENT_TYPE_LATEST)

"""Liveness and readiness, for orchestrators and load balancers."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from api.deps import ReadinessDep
from api.schemas.health import HealthOut, NotReadyOut, ReadinessOut

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    summary="Liveness: the process is up",
    description="Answers 200 while the process lives; checks nothing else.",
)
async def health() -> HealthOut:
    return HealthOut()


@router.get(
    "/ready",
    summary="Readiness: PostgreSQL, migrations, Kafka and the pipeline's tasks",
    description=(
        "200 when PostgreSQL answers, its schema is at the Alembic head, Kafka answers and "
        "every supervised task of this instance runs; otherwise 503 with the report under "
        "`detail`. Checks have a 2 s timeout and the result is cached for 1 s."
    ),
    responses={503: {"model": NotReadyOut, "description": "some dependency is down"}},
)
async def ready(readiness: ReadinessDep) -> ReadinessOut:
    report = await readiness.report()
    if not report.ready:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, report.model_dump())
    return report

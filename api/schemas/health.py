"""Schemas of the health endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict

from api.schemas.common import ApiModel


class HealthOut(ApiModel):
    status: Literal["ok"] = "ok"


class CheckOut(ApiModel):
    ok: bool
    detail: str


class ReadinessOut(ApiModel):
    """Each dependency's check; `status` is `ready` only when every check is ok."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "checks": {
                        "postgres": {"ok": True, "detail": "answered in 2 ms"},
                        "migrations": {"ok": True, "detail": "at head 0001"},
                        "kafka": {"ok": True, "detail": "1 broker(s) answered"},
                        "tasks": {"ok": True, "detail": "5 task(s) running"},
                        "sink": {"ok": True, "detail": "storing: 1200 rows, 0 rejected"},
                    },
                }
            ]
        }
    )

    status: Literal["ready", "not ready"]
    checks: dict[str, CheckOut]

    @property
    def ready(self) -> bool:
        return self.status == "ready"


class NotReadyOut(ApiModel):
    """503 from /ready: the report under `detail`, with the checks that failed in `down`."""

    detail: ReadinessOut

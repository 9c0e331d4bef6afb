"""Schemas of the history jobs (POST/GET/DELETE /backfills)."""

from __future__ import annotations

from datetime import datetime

from pydantic import ConfigDict, Field, model_validator

from api.schemas.common import ApiModel, EpochMs, SymbolInput
from pipeline.core.history import HistoryJob, JobState


class BackfillIn(ApiModel):
    model_config = ConfigDict(
        frozen=True,
        json_schema_extra={
            "examples": [{"symbol": "ETHUSDT", "start": 1764028800000, "end": 1764115200000}]
        },
    )

    symbol: SymbolInput
    start: EpochMs = Field(description="epoch ms, the first trade time included")
    end: EpochMs = Field(description="epoch ms, the last trade time included; not in the future")

    @model_validator(mode="after")
    def _end_after_start(self) -> BackfillIn:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class BackfillOut(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "symbol": "ETHUSDT",
                    "start": 1764028800000,
                    "end": 1764115200000,
                    "state": "running",
                    "first_id": 2001000000,
                    "last_id": 2001900000,
                    "position": 2001350000,
                    "fetched": 350000,
                    "stored": 348000,
                    "missing": 0,
                    "remaining": 550001,
                    "progress": 0.389,
                    "rate": 3600.0,
                    "eta_s": 152.8,
                    "pages": 350,
                    "errors": 0,
                    "last_error": None,
                    "created_at": "2026-11-26T10:00:00Z",
                    "started_at": "2026-11-26T10:00:01Z",
                    "updated_at": "2026-11-26T10:01:38Z",
                    "finished_at": None,
                }
            ]
        }
    )

    id: int
    symbol: str
    start: int = Field(description="epoch ms, inclusive")
    end: int = Field(description="epoch ms, inclusive")
    state: JobState = Field(
        description="queued → running → done | failed; cancelled by DELETE /backfills/{id}"
    )
    first_id: int | None = Field(description="first trade id of the window (null: not known yet)")
    last_id: int | None = Field(description="last trade id of the window (an estimate until done)")
    position: int | None = Field(description="next trade id to fetch")
    fetched: int = Field(description="trades of the window fetched and published to Kafka")
    stored: int = Field(description="of those, confirmed in crypto_prices")
    missing: int = Field(description="trade ids in the range the exchange does not have")
    remaining: int | None = Field(description="trade ids still to fetch (an estimate)")
    progress: float | None = Field(description="share of the id range fetched, 0..1")
    rate: float | None = Field(description="trades fetched per second, recently")
    eta_s: float | None = Field(description="seconds until fetched, at the current rate")
    pages: int = Field(description="historicalTrades pages fetched")
    errors: int = Field(description="errors met (the job retries through exchange outages)")
    last_error: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, job: HistoryJob) -> BackfillOut:
        p = job.progress
        remaining = 0 if job.state == "done" else p.remaining
        progress: float | None = None
        if job.state == "done":
            progress = 1.0
        elif p.first_id is not None and p.last_id is not None and p.position is not None:
            total = p.last_id - p.first_id + 1
            progress = round(min(1.0, max(0.0, (p.position - p.first_id) / total)), 4)
        running = job.state == "running"
        eta = round(remaining / p.rate, 1) if running and remaining and p.rate else None
        return cls(
            id=job.id,
            symbol=job.symbol,
            start=job.start_time,
            end=job.end_time,
            state=job.state,
            first_id=p.first_id,
            last_id=p.last_id,
            position=p.position,
            fetched=p.fetched,
            stored=p.stored,
            missing=p.missing,
            remaining=remaining,
            progress=progress,
            rate=p.rate if running else None,
            eta_s=eta,
            pages=p.pages,
            errors=p.errors,
            last_error=p.last_error,
            created_at=job.created_at,
            started_at=job.started_at,
            updated_at=job.updated_at,
            finished_at=job.finished_at,
        )


class BackfillsOut(ApiModel):
    items: list[BackfillOut] = Field(description="newest first")

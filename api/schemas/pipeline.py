"""Schemas of the pipeline endpoints."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from api.schemas.common import ApiModel

# GET /pipeline/status answers with pipeline.core.status.PipelineStatus itself: the roles' own
# status types are the response model, so the API cannot drift from what the pipeline reports.


class PartitionLagOut(ApiModel):
    partition: int
    committed: int | None = Field(description="null when the group never committed")
    end_offset: int
    lag: int


class ConsumerLagOut(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "group": "crypto-prices-sink",
                    "topic": "crypto_prices",
                    "total_lag": 3,
                    "partitions": [{"partition": 0, "committed": 120, "end_offset": 123, "lag": 3}],
                }
            ]
        }
    )

    group: str
    topic: str
    total_lag: int
    partitions: list[PartitionLagOut]

"""Schemas of the symbols endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from api.schemas.common import ApiModel, SymbolInput


class SymbolIn(ApiModel):
    model_config = ConfigDict(frozen=True, json_schema_extra={"examples": [{"symbol": "adausdt"}]})

    symbol: SymbolInput


class TrackedSymbolOut(ApiModel):
    symbol: str
    added_at: datetime
    source: str = Field(description="who added it: settings, api, exchange")


class SymbolsOut(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "symbols": [
                        {
                            "symbol": "BTCUSDT",
                            "added_at": "2026-11-25T15:40:00Z",
                            "source": "settings",
                        }
                    ]
                }
            ]
        }
    )

    symbols: list[TrackedSymbolOut]


ExchangeCheck = Literal["listed", "not_checked", "unavailable"]


class SymbolChangeOut(ApiModel):
    """Answer to POST /symbols: 201 when added, 200 when it was tracked already."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "symbol": "ADAUSDT",
                    "created": True,
                    "exchange_check": "listed",
                    "detail": "ADAUSDT is tracked; producers subscribe within 2 s",
                }
            ]
        }
    )

    symbol: str
    created: bool = Field(description="false when the symbol was tracked already")
    exchange_check: ExchangeCheck = Field(
        description="listed: the exchange lists it; not_checked: verification is off or the "
        "symbol was tracked already; unavailable: the exchange did not answer, added unverified"
    )
    detail: str

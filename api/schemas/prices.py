"""Schemas of the prices endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from api.schemas.common import ApiModel, DecimalString


class TradeOut(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "symbol": "BTCUSDT",
                    "trade_id": 4012345678,
                    "price": "67123.45000000",
                    "quantity": "0.00150000",
                    "is_buyer_maker": False,
                    "event_time": 1764085200123,
                    "trade_time": 1764085200120,
                    "processed_at": 1764085200131,
                }
            ]
        }
    )

    symbol: str
    trade_id: int
    price: DecimalString
    quantity: DecimalString
    is_buyer_maker: bool
    event_time: int = Field(description="epoch ms, Binance's E")
    trade_time: int = Field(description="epoch ms, Binance's T")
    processed_at: int = Field(description="epoch ms, when the producer ingested it")


class LatestPricesOut(ApiModel):
    items: list[TradeOut] = Field(description="latest trade per tracked symbol that has one")


class TradePageOut(ApiModel):
    items: list[TradeOut] = Field(description="newest first")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next (older) page; null on the last page",
        examples=["MTc2NDA4NTIwMDEyMCw0MDEyMzQ1Njc4"],
    )


Interval = Literal["1s", "1m", "5m", "1h", "1d"]
INTERVAL_MS: dict[str, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "5m": 300_000,
    "1h": 3_600_000,
    "1d": 86_400_000,
}


class CandleOut(ApiModel):
    open_time: int = Field(description="epoch ms, start of the interval")
    close_time: int = Field(description="epoch ms, last millisecond of the interval")
    open: DecimalString
    high: DecimalString
    low: DecimalString
    close: DecimalString
    volume: DecimalString = Field(description="sum of quantities")
    trades: int


class CandlesOut(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "symbol": "BTCUSDT",
                    "interval": "1m",
                    "items": [
                        {
                            "open_time": 1764085200000,
                            "close_time": 1764085259999,
                            "open": "67100.00",
                            "high": "67150.10",
                            "low": "67090.00",
                            "close": "67123.45",
                            "volume": "12.50300000",
                            "trades": 311,
                        }
                    ],
                }
            ]
        }
    )

    symbol: str
    interval: Interval
    items: list[CandleOut] = Field(description="newest first; intervals without trades omitted")

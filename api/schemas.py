"""The HTTP API's request and response models, separate from the pipeline's events and tables.

Prices, quantities and volumes are decimal strings, exactly as stored (never floats); times are
epoch milliseconds, as in the table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipeline.core.trade_checks import normalize_symbol

# What clients may send (any case); the API upper-cases it (design.md: ^[A-Z0-9]{2,20}$).
SYMBOL_INPUT_PATTERN = r"^[A-Za-z0-9]{2,20}$"
# Epoch milliseconds the API accepts: up to the year 5138, far inside BIGINT.
MAX_EPOCH_MS = 10**14 - 1
MAX_TRADE_ID = 2**63 - 1

SymbolInput = Annotated[
    str,
    Field(
        min_length=2,
        max_length=20,
        pattern=SYMBOL_INPUT_PATTERN,
        description="Binance symbol, case-insensitive (stored upper case)",
        examples=["BTCUSDT"],
    ),
    AfterValidator(normalize_symbol),
]
DecimalString = Annotated[
    str, Field(description="decimal string, exactly as stored", examples=["67123.45000000"])
]
EpochMs = Annotated[int, Field(ge=0, le=MAX_EPOCH_MS, description="epoch milliseconds")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorOut(_Model):
    """Every 4xx/5xx answer: `{"detail": ...}` (a message, or FastAPI's validation error list)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "BTCUSDT is not tracked"}]}
    )

    detail: Any


# -- health ---------------------------------------------------------------------------------


class HealthOut(_Model):
    status: Literal["ok"] = "ok"


class CheckOut(_Model):
    ok: bool
    detail: str


class ReadinessOut(_Model):
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


class NotReadyOut(_Model):
    """503 from /ready: the report under `detail`, with the checks that failed in `down`."""

    detail: ReadinessOut


# -- symbols --------------------------------------------------------------------------------


class SymbolIn(_Model):
    model_config = ConfigDict(frozen=True, json_schema_extra={"examples": [{"symbol": "adausdt"}]})

    symbol: SymbolInput


class TrackedSymbolOut(_Model):
    symbol: str
    added_at: datetime
    source: str = Field(description="who added it: settings, api, exchange")


class SymbolsOut(_Model):
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


class SymbolChangeOut(_Model):
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


# -- prices ---------------------------------------------------------------------------------


class TradeOut(_Model):
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


class LatestPricesOut(_Model):
    items: list[TradeOut] = Field(description="latest trade per tracked symbol that has one")


class TradePageOut(_Model):
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


class CandleOut(_Model):
    open_time: int = Field(description="epoch ms, start of the interval")
    close_time: int = Field(description="epoch ms, last millisecond of the interval")
    open: DecimalString
    high: DecimalString
    low: DecimalString
    close: DecimalString
    volume: DecimalString = Field(description="sum of quantities")
    trades: int


class CandlesOut(_Model):
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


# -- pipeline -------------------------------------------------------------------------------
# GET /pipeline/status answers with pipeline.core.status.PipelineStatus itself: the roles' own
# status types are the response model, so the API cannot drift from what the pipeline reports.


class PartitionLagOut(_Model):
    partition: int
    committed: int | None = Field(description="null when the group never committed")
    end_offset: int
    lag: int


class ConsumerLagOut(_Model):
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

"""TradeEvent: the validated trade, the one contract between source, Kafka, sink and API.

Three shapes of the same trade arrive here: a Binance WebSocket trade frame (one-letter keys),
a REST historicalTrades item (backfill), and the Kafka record value (this model's own JSON).
Prices and quantities are Decimal end to end; a float would round them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import orjson
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
)

from pipeline.errors import InvalidTrade
from pipeline.settings import SYMBOL_PATTERN

TRADE_EVENT_TYPE = "trade"
# The columns of `crypto_prices` in table order (pipeline.db's Table; migration 0001).
CRYPTO_PRICES_COLUMNS: tuple[str, ...] = (
    "symbol",
    "trade_id",
    "price",
    "quantity",
    "event_time",
    "trade_time",
    "is_buyer_maker",
    "processed_at",
)


def _decimal_string(value: Any) -> Any:
    # Binance sends prices as strings; a JSON number may already have lost digits in a float.
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a decimal string, got {type(value).__name__}")
    return value


DecimalString = Annotated[
    Decimal, BeforeValidator(_decimal_string), Field(gt=0, allow_inf_nan=False)
]
EpochMillis = Annotated[StrictInt, Field(ge=0, lt=10**14)]


class TradeEvent(BaseModel):
    """One trade, as stored in `crypto_prices`. Times are epoch milliseconds."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    symbol: str = Field(
        validation_alias=AliasChoices("symbol", "s"), pattern=SYMBOL_PATTERN.pattern
    )
    trade_id: StrictInt = Field(validation_alias=AliasChoices("trade_id", "t"), ge=0)
    price: DecimalString = Field(validation_alias=AliasChoices("price", "p"))
    quantity: DecimalString = Field(validation_alias=AliasChoices("quantity", "q"))
    event_time: EpochMillis = Field(validation_alias=AliasChoices("event_time", "E"))
    trade_time: EpochMillis = Field(validation_alias=AliasChoices("trade_time", "T"))
    is_buyer_maker: StrictBool = Field(validation_alias=AliasChoices("is_buyer_maker", "m"))
    processed_at: EpochMillis

    def to_kafka_value(self) -> bytes:
        """The record value: UTF-8 JSON, decimals as strings."""
        # orjson's result keeps its 4 KiB output buffer allocated; a right-sized copy keeps a
        # record waiting in the producer's buffer (up to kafka.queue_size) at ~300 bytes.
        value = orjson.dumps(
            {
                "symbol": self.symbol,
                "trade_id": self.trade_id,
                "price": str(self.price),
                "quantity": str(self.quantity),
                "event_time": self.event_time,
                "trade_time": self.trade_time,
                "is_buyer_maker": self.is_buyer_maker,
                "processed_at": self.processed_at,
            }
        )
        return memoryview(value).tobytes()

    def as_row(self) -> tuple[str, int, Decimal, Decimal, int, int, bool, int]:
        """Values in the column order of `crypto_prices`."""
        return (
            self.symbol,
            self.trade_id,
            self.price,
            self.quantity,
            self.event_time,
            self.trade_time,
            self.is_buyer_maker,
            self.processed_at,
        )


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "frame"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def trade_from_binance(data: Any, processed_at: int) -> TradeEvent:
    """Validate the `data` of a Binance trade frame; raise InvalidTrade with the reason."""
    if not isinstance(data, dict):
        raise InvalidTrade(f"trade payload must be a JSON object, got {type(data).__name__}")
    event_type = data.get("e")
    if event_type != TRADE_EVENT_TYPE:
        raise InvalidTrade(f"unknown event type {event_type!r}")
    try:
        return TradeEvent.model_validate(
            {
                "symbol": data.get("s"),
                "trade_id": data.get("t"),
                "price": data.get("p"),
                "quantity": data.get("q"),
                "event_time": data.get("E"),
                "trade_time": data.get("T"),
                "is_buyer_maker": data.get("m"),
                "processed_at": processed_at,
            }
        )
    except ValidationError as exc:
        raise InvalidTrade(_reason(exc)) from None


def trade_from_rest(symbol: str, item: Any, processed_at: int) -> TradeEvent:
    """Validate one item of REST `historicalTrades` (no event time there: the trade time is used)."""
    if not isinstance(item, dict):
        raise InvalidTrade(f"historical trade must be a JSON object, got {type(item).__name__}")
    try:
        return TradeEvent.model_validate(
            {
                "symbol": symbol,
                "trade_id": item.get("id"),
                "price": item.get("price"),
                "quantity": item.get("qty"),
                "event_time": item.get("time"),
                "trade_time": item.get("time"),
                "is_buyer_maker": item.get("isBuyerMaker"),
                "processed_at": processed_at,
            }
        )
    except ValidationError as exc:
        raise InvalidTrade(_reason(exc)) from None


def trade_from_kafka(value: bytes | None) -> TradeEvent:
    """Decode a record value written by `to_kafka_value`; raise InvalidTrade for a poison record."""
    if value is None:
        raise InvalidTrade("record has no value")
    try:
        return TradeEvent.model_validate_json(value)
    except ValidationError as exc:
        raise InvalidTrade(_reason(exc)) from None

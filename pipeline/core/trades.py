"""TradeEvent: the validated trade, the one contract between source, Kafka, sink and API.

Three shapes of the same trade arrive here: a Binance WebSocket trade frame (one-letter keys),
a REST historicalTrades item (backfill), and the Kafka record value (this model's own JSON).
Prices and quantities are Decimal end to end; a float would round them.

Every field is bounded to what the table stores and what is plausible (pipeline.core.trade_checks):
times from 2017-07-01 to now plus the allowed clock skew; prices and quantities positive, below
1e20, at most 18 digits after the point. A value outside is an invalid trade (dead-lettered),
never a row. "Now" is the caller's: each decoder takes the `latest_ms` it accepts, TradeEvent
itself the validation context LATEST_MS (else the wall clock plus the default skew).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from pipeline.core._pydantic_compat import construct, field_values
from pipeline.core.errors import InvalidTrade
from pipeline.core.trade_checks import (
    DEFAULT_MAX_CLOCK_SKEW_MS,
    EARLIEST_TRADE_MS,
    EPOCH_MILLIS_END,
    MAX_DECIMAL,
    MAX_DECIMAL_PLACES,
    MAX_TRADE_ID,
    SYMBOL_PATTERN,
    DecodedEpochMillis,
    DecodedTradeId,
    decimal_places,
    is_epoch_millis,
    is_symbol,
    is_trade_id,
    latest_now,
    plausible_latest,
    positive_decimal,
    trade_stream,
)

TRADE_EVENT_TYPE = "trade"
# The validation context key of the latest time TradeEvent accepts (epoch ms): now plus the
# allowed clock skew, by the caller's clock. `TradeEvent.model_validate(data,
# context={LATEST_MS: n})`; without it, the wall clock plus DEFAULT_MAX_CLOCK_SKEW_MS.
LATEST_MS = "latest_ms"
# The columns of `crypto_prices` in table order (pipeline.storage.tables's Table; migration 0001).
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
_encode_json = msgspec.json.Encoder(decimal_format="string").encode

# A trade as a row of `crypto_prices`, in its column order (CRYPTO_PRICES_COLUMNS).
Row = tuple[str, int, Decimal, Decimal, int, int, bool, int]


def _decimal_string(value: Any) -> Any:
    # Binance sends prices as strings; a JSON number may already have lost digits in a float.
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a decimal string, got {type(value).__name__}")
    return value


def _decimal_bounds(value: Decimal) -> Decimal:
    if not value < MAX_DECIMAL:  # here rather than Field(lt=...), whose message shows a repr
        raise PydanticCustomError(
            "less_than", "Input should be less than {lt}", {"lt": str(MAX_DECIMAL)}
        )
    # Places as written, not normalised (pydantic's decimal_places would take
    # "1.0000000000000000000"): the column keeps the scale it is given.
    places = decimal_places(value)
    if places > MAX_DECIMAL_PLACES:
        raise PydanticCustomError(
            "decimal_max_places",
            "Decimal input should have no more than {max} digits after the point, not {places}",
            {"max": MAX_DECIMAL_PLACES, "places": places},
        )
    return value


def _not_ahead(value: int, info: ValidationInfo) -> int:
    context = info.context
    latest = context.get(LATEST_MS) if isinstance(context, dict) else None
    if latest is None:
        latest = latest_now()
    if value > latest:
        raise PydanticCustomError(
            "time_ahead",
            "Input should be at most {latest}, now plus the allowed clock skew",
            {"latest": latest},
        )
    return value


DecimalString = Annotated[
    Decimal,
    BeforeValidator(_decimal_string),
    Field(gt=0, allow_inf_nan=False),
    AfterValidator(_decimal_bounds),
]
EpochMillis = Annotated[
    StrictInt, Field(ge=EARLIEST_TRADE_MS, lt=EPOCH_MILLIS_END), AfterValidator(_not_ahead)
]


class TradeEvent(BaseModel):
    """One trade, as stored in `crypto_prices`. Times are epoch milliseconds."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    symbol: str = Field(
        validation_alias=AliasChoices("symbol", "s"), pattern=SYMBOL_PATTERN.pattern
    )
    # At most a bigint: a trade id the table cannot hold is an invalid trade (dead-lettered),
    # not a batch that fails in PostgreSQL again and again.
    trade_id: StrictInt = Field(
        validation_alias=AliasChoices("trade_id", "t"), ge=0, le=MAX_TRADE_ID
    )
    price: DecimalString = Field(validation_alias=AliasChoices("price", "p"))
    quantity: DecimalString = Field(validation_alias=AliasChoices("quantity", "q"))
    event_time: EpochMillis = Field(validation_alias=AliasChoices("event_time", "E"))
    trade_time: EpochMillis = Field(validation_alias=AliasChoices("trade_time", "T"))
    is_buyer_maker: StrictBool = Field(validation_alias=AliasChoices("is_buyer_maker", "m"))
    processed_at: EpochMillis

    def to_kafka_value(self) -> bytes:
        """The record value: UTF-8 JSON of the fields, decimals as strings (`str(Decimal)`)."""
        # The field values as they are, encoded by msgspec (faster than orjson plus a str()
        # per Decimal) into right-sized bytes: a record waiting in the producer's buffer (up to
        # kafka.queue_size) stays small.
        return _encode_json(field_values(self))

    def as_row(self) -> Row:
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


def _checked_event(
    symbol: Any,
    trade_id: Any,
    price: Any,
    quantity: Any,
    event_time: Any,
    trade_time: Any,
    is_buyer_maker: Any,
    processed_at: Any,
    latest: int,
) -> TradeEvent | None:
    """The TradeEvent of these raw field values if pipeline.trade_checks accepts them all (then
    TradeEvent would accept them too, with the same values), else None: TradeEvent's to judge."""
    latest = plausible_latest(latest)
    if not (
        is_trade_id(trade_id)
        and is_epoch_millis(event_time, latest)
        and is_epoch_millis(trade_time, latest)
        and type(is_buyer_maker) is bool
        and is_epoch_millis(processed_at, latest)
    ):
        return None
    return _event(
        symbol, trade_id, price, quantity, event_time, trade_time, is_buyer_maker, processed_at
    )


def _event(
    symbol: Any,
    trade_id: int,
    price: Any,
    quantity: Any,
    event_time: int,
    trade_time: int,
    is_buyer_maker: bool,
    processed_at: int,
) -> TradeEvent | None:
    """The TradeEvent of checked ints and bool and of unchecked symbol, price and quantity; None
    if trade_checks does not accept those.

    Built as pydantic's model_construct would build it, without model_construct's own walk
    over the fields (pipeline.core._pydantic_compat), which would be a large share of decoding.
    """
    price = positive_decimal(price)
    quantity = positive_decimal(quantity)
    if price is None or quantity is None or not is_symbol(symbol):
        return None
    return construct(
        TradeEvent,
        {
            "symbol": symbol,
            "trade_id": trade_id,
            "price": price,
            "quantity": quantity,
            "event_time": event_time,
            "trade_time": trade_time,
            "is_buyer_maker": is_buyer_maker,
            "processed_at": processed_at,
        },
    )


class _FrameTrade(msgspec.Struct):
    """The `data` of a Binance trade frame, in the one shape Binance sends. Unknown keys (`M`)
    are ignored, like TradeEvent's extra="ignore"; strings are checked after decoding."""

    e: Literal["trade"]
    E: DecodedEpochMillis
    s: str
    t: DecodedTradeId
    p: str
    q: str
    T: DecodedEpochMillis
    m: bool


class _CombinedFrame(msgspec.Struct):
    stream: str
    data: _FrameTrade


_decode_frame = msgspec.json.Decoder(_CombinedFrame).decode


def trade_from_frame(raw: bytes, processed_at: int, latest_ms: int) -> TradeEvent | None:
    """The TradeEvent of a combined-stream trade frame in its usual shape, valid, its symbol
    that of its stream and no time after `latest_ms`, decoded in one msgspec pass (cheaper than
    orjson + trade_from_binance, and none of the general path's branching); None for anything
    else — a reply, a raw-stream frame, an invalid one —, which trade_from_binance's caller then
    judges as before. Accepts a subset of what that path accepts, with the same values
    (tests/unit/core/test_trade_checks.py)."""
    try:
        frame = _decode_frame(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):  # DecodeError: also ValidationError
        return None
    data = frame.data
    # E and T come from the decoder at least EARLIEST_TRADE_MS and below EPOCH_MILLIS_END;
    # inline comparisons, not is_epoch_millis: this is the hottest path.
    if not (
        latest_ms >= data.E
        and latest_ms >= data.T
        and type(processed_at) is int
        and EARLIEST_TRADE_MS <= processed_at <= latest_ms
        and processed_at < EPOCH_MILLIS_END
    ):
        return None
    event = _event(data.s, data.t, data.p, data.q, data.E, data.T, data.m, processed_at)
    if event is None or frame.stream != trade_stream(event.symbol):
        return None
    return event


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "frame"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def trade_from_binance(data: Any, processed_at: int, latest_ms: int | None = None) -> TradeEvent:
    """Validate the `data` of a Binance trade frame; raise InvalidTrade with the reason.

    No time may be after `latest_ms`; by default processed_at (now) plus the default skew."""
    if not isinstance(data, dict):
        raise InvalidTrade(f"trade payload must be a JSON object, got {type(data).__name__}")
    event_type = data.get("e")
    if event_type != TRADE_EVENT_TYPE:
        raise InvalidTrade(f"unknown event type {event_type!r}")
    latest = _latest_after(processed_at, latest_ms)
    event = _checked_event(
        data.get("s"),
        data.get("t"),
        data.get("p"),
        data.get("q"),
        data.get("E"),
        data.get("T"),
        data.get("m"),
        processed_at,
        latest,
    )
    if event is not None:
        return event
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
            },
            context={LATEST_MS: latest},
        )
    except ValidationError as exc:
        raise InvalidTrade(_reason(exc)) from None


def _latest_after(processed_at: Any, latest_ms: int | None) -> int:
    """`latest_ms`, or by default processed_at (the time of processing: now) plus the default
    skew, or the wall clock's if processed_at is not an int (then it is invalid anyway)."""
    if latest_ms is not None:
        return latest_ms
    if type(processed_at) is int:
        return processed_at + DEFAULT_MAX_CLOCK_SKEW_MS
    return latest_now()


def trade_from_rest(
    symbol: str, item: Any, processed_at: int, latest_ms: int | None = None
) -> TradeEvent:
    """Validate one item of REST `historicalTrades` (no event time there: the trade time is
    used). No time may be after `latest_ms`; by default processed_at plus the default skew."""
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
            },
            context={LATEST_MS: _latest_after(processed_at, latest_ms)},
        )
    except ValidationError as exc:
        raise InvalidTrade(_reason(exc)) from None


def trade_from_kafka(value: bytes | None, latest_ms: int | None = None) -> TradeEvent:
    """Decode a record value written by `to_kafka_value`; raise InvalidTrade for a poison record.

    No time may be after `latest_ms`, by default the wall clock plus the default skew: a record
    replayed long after it was written still passes."""
    if value is None:
        raise InvalidTrade("record has no value")
    latest = latest_now() if latest_ms is None else latest_ms
    try:
        return TradeEvent.model_validate_json(value, context={LATEST_MS: latest})
    except ValidationError as exc:
        raise InvalidTrade(_reason(exc)) from None

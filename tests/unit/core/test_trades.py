"""TradeEvent: strict validation of Binance frames, REST items and Kafka records."""

from decimal import Decimal

import orjson
import pytest

from pipeline.core.errors import InvalidTrade
from pipeline.core.trades import TradeEvent, trade_from_binance, trade_from_kafka, trade_from_rest
from tests.factories import BINANCE_TRADE as FRAME

PROCESSED_AT = 1_700_000_000_200
TRADE_TIME = 1_700_000_000_099


def test_binance_frame_becomes_event_with_exact_decimals() -> None:
    event = trade_from_binance(FRAME, processed_at=1_700_000_000_200)
    assert event.symbol == "BTCUSDT"
    assert event.trade_id == 4_200_000_001
    assert event.price == Decimal("37123.45000000")
    assert event.quantity == Decimal("0.00120000")
    assert (event.event_time, event.trade_time, event.processed_at) == (
        1_700_000_000_123,
        1_700_000_000_120,
        1_700_000_000_200,
    )
    assert event.is_buyer_maker is True


def test_kafka_value_round_trips_without_losing_a_digit() -> None:
    event = trade_from_binance(FRAME, processed_at=PROCESSED_AT)
    value = event.to_kafka_value()
    assert orjson.loads(value) == {
        "symbol": "BTCUSDT",
        "trade_id": 4_200_000_001,
        "price": "37123.45000000",
        "quantity": "0.00120000",
        "event_time": 1_700_000_000_123,
        "trade_time": 1_700_000_000_120,
        "is_buyer_maker": True,
        "processed_at": PROCESSED_AT,
    }
    assert trade_from_kafka(value) == event


@pytest.mark.parametrize("digits", ["1E-8", "1E+3", "0.00000100", "123456789.123456789012345678"])
def test_kafka_value_writes_decimals_as_str_does(digits: str) -> None:
    event = trade_from_binance({**FRAME, "p": digits, "q": digits}, processed_at=PROCESSED_AT)
    fields = orjson.loads(event.to_kafka_value())
    assert (fields["price"], fields["quantity"]) == (str(Decimal(digits)), str(Decimal(digits)))
    assert trade_from_kafka(event.to_kafka_value()) == event


def test_rest_item_uses_trade_time_as_event_time() -> None:
    item = {
        "id": 7,
        "price": "1.5",
        "qty": "2",
        "quoteQty": "3",
        "time": TRADE_TIME,
        "isBuyerMaker": False,
        "isBestMatch": True,
    }
    event = trade_from_rest("ETHUSDT", item, processed_at=PROCESSED_AT)
    assert (event.trade_id, event.event_time, event.trade_time) == (7, TRADE_TIME, TRADE_TIME)


@pytest.mark.parametrize(
    ("time", "latest", "reason"),
    [
        (95_617_584_000_000, None, "event_time: Input should be at most 1700000300200"),
        (TRADE_TIME + 1, TRADE_TIME, "event_time: Input should be at most"),
        (1_498_867_199_999, None, "event_time: Input should be greater than or equal to"),
    ],
)
def test_rest_item_out_of_the_time_bounds_is_invalid(
    time: int, latest: int | None, reason: str
) -> None:
    item = {"id": 7, "price": "1.5", "qty": "2", "time": time, "isBuyerMaker": False}
    with pytest.raises(InvalidTrade, match=reason):
        trade_from_rest("ETHUSDT", item, PROCESSED_AT, latest)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"e": "aggTrade"}, "unknown event type 'aggTrade'"),
        ({"p": 37123.45}, "price"),
        ({"p": "-1"}, "price"),
        ({"p": "NaN"}, "price"),
        ({"q": "0"}, "quantity"),
        ({"t": "12"}, "trade_id"),
        ({"m": "yes"}, "is_buyer_maker"),
        ({"s": "btc/usdt"}, "symbol"),
        ({"E": None}, "event_time"),
        ({"T": 95_617_584_000_000}, "trade_time"),  # the year 5000
        ({"E": 1_498_867_199_999}, "event_time"),  # before Binance's first trade
        ({"p": "1.0000000000000000000"}, "price"),  # 19 digits after the point
        ({"q": "1E-20000"}, "quantity"),
        ({"p": "1E+20"}, "price"),
    ],
)
def test_invalid_frames_are_rejected_with_the_reason(
    change: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidTrade, match=reason):
        trade_from_binance({**FRAME, **change}, processed_at=PROCESSED_AT)


def test_missing_field_is_named() -> None:
    frame = {k: v for k, v in FRAME.items() if k != "q"}
    with pytest.raises(InvalidTrade, match="quantity"):
        trade_from_binance(frame, processed_at=PROCESSED_AT)


def test_non_object_payload_and_poison_records_are_rejected() -> None:
    with pytest.raises(InvalidTrade, match="JSON object"):
        trade_from_binance([1, 2], processed_at=PROCESSED_AT)
    with pytest.raises(InvalidTrade):
        trade_from_kafka(b"\x00not json")
    with pytest.raises(InvalidTrade, match="no value"):
        trade_from_kafka(None)


def test_event_row_follows_table_column_order() -> None:
    from pipeline.storage.tables import CRYPTO_PRICES_COLUMNS

    event = trade_from_binance(FRAME, processed_at=PROCESSED_AT)
    assert dict(zip(CRYPTO_PRICES_COLUMNS, event.as_row(), strict=True)) == event.model_dump()
    assert isinstance(event, TradeEvent)

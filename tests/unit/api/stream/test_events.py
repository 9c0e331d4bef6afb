"""A trade read from Kafka is sent as GET /prices/{symbol} answers it: same fields, same order,
decimals as PostgreSQL prints them (api.stream.events)."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from api.reads.trades import TRADE_COLUMNS
from api.schemas.prices import TradeOut
from api.stream.events import FeedEvent, SseFraming, WsFraming
from pipeline.core.trades import TradeEvent
from pipeline.kafka.records import row_from_kafka


def kafka_row(price: str, quantity: str = "0.00120000") -> FeedEvent:
    event = TradeEvent(
        symbol="BTCUSDT",
        trade_id=42,
        price=Decimal(price),
        quantity=Decimal(quantity),
        event_time=1_764_000_000_123,
        trade_time=1_764_000_000_120,
        is_buyer_maker=True,
        processed_at=1_764_000_000_130,
    )
    return FeedEvent.from_row(row_from_kafka(event.to_kafka_value()))


@pytest.mark.parametrize(
    ("given", "printed"),
    [
        ("67123.45000000", "67123.45000000"),
        ("0.00000010", "0.00000010"),  # str(Decimal) would say 1.0E-7
        ("0.000000000000000001", "0.000000000000000001"),
        ("1E+2", "100"),
        ("1.50E+1", "15.0"),
        ("3", "3"),
    ],
)
def test_decimals_are_the_text_postgresql_stores_them_as(given: str, printed: str) -> None:
    assert orjson.loads(kafka_row(given).body)["price"] == printed


def test_the_body_has_the_fields_of_get_prices_in_their_order() -> None:
    body = orjson.loads(kafka_row("1.5").body)
    assert list(body) == list(TradeOut.model_fields)
    assert list(body) == [
        column.split(" AS ")[-1].split("::")[0].strip() for column in TRADE_COLUMNS.split(", ")
    ]
    assert body["is_buyer_maker"] is True and body["trade_id"] == 42


def test_sse_events_carry_the_id_the_kind_and_the_json() -> None:
    event = kafka_row("1.5")
    chunk = SseFraming().event("backfill", "BTCUSDT:50~42", event)
    assert chunk == b"id: BTCUSDT:50~42\nevent: backfill\ndata: " + event.body + b"\n\n"
    close = SseFraming().close("slow", "why")
    assert close == b'event: close\ndata: {"reason":"slow","detail":"why"}\n\n'


def test_websocket_messages_are_json_with_the_id_and_the_trade() -> None:
    event = kafka_row("1.5")
    message = orjson.loads(WsFraming().event("trade", "BTCUSDT:42", event))
    assert message == {"event": "trade", "id": "BTCUSDT:42", "data": orjson.loads(event.body)}

"""Kafka record value → `crypto_prices` row, without building a TradeEvent: the consumer's hot path.

The record value is our own JSON (`TradeEvent.to_kafka_value`), so nearly every record is valid
and in one shape. msgspec decodes that shape into a Struct in C, pipeline.trade_checks does the
checks msgspec cannot express, and the row is built from that, at a fraction of the cost of
`TradeEvent.model_validate_json` + its row (docs/perf.md). TradeEvent stays the contract: this
path only ever *accepts* a subset of what TradeEvent accepts (same values), and everything it does
not accept — a poison record, or a valid one spelled otherwise (the one-letter aliases, a price
of " 1.5") — goes through `trade_from_kafka`, which returns the row or raises InvalidTrade with
pydantic's reason (the DLQ's). tests/unit/kafka/test_records.py holds the two to that.

The bounds are TradeEvent's, with "now" the consumer's: a record replayed long after it was
written passes (its times are old, not before 2017-07-01), one dated ahead of the consumer's
clock by more than the allowed skew does not (it would stay the latest price until then).
"""

from __future__ import annotations

import msgspec

from pipeline.core.trade_checks import (
    DecodedEpochMillis,
    DecodedTradeId,
    is_symbol,
    latest_now,
    positive_decimal,
)
from pipeline.core.trades import Row, trade_from_kafka


class _KafkaTrade(msgspec.Struct):
    """TradeEvent's JSON shape. msgspec is strict by default: ints only from JSON integers (no
    1.0, no true), bools only from true/false, strings only from strings; unknown keys are
    ignored like TradeEvent's extra="ignore"."""

    symbol: str  # checked by is_symbol: its cache beats msgspec's regex per record
    trade_id: DecodedTradeId
    # Strings, turned into Decimal by positive_decimal: msgspec's Decimal takes JSON numbers too.
    price: str
    quantity: str
    event_time: DecodedEpochMillis
    trade_time: DecodedEpochMillis
    is_buyer_maker: bool
    processed_at: DecodedEpochMillis


_decode = msgspec.json.Decoder(_KafkaTrade).decode


def row_from_kafka(value: bytes | None, latest_ms: int | None = None) -> Row:
    """The row of a record written by `to_kafka_value`; raise InvalidTrade for a poison record.

    No time may be after `latest_ms` (now plus the allowed clock skew; by default the wall
    clock plus the default skew): a caller decoding a batch takes "now" once for all of it."""
    if latest_ms is None:
        latest_ms = latest_now()
    if value is not None:
        try:
            trade = _decode(value)
        except (msgspec.DecodeError, UnicodeDecodeError):  # DecodeError: also ValidationError
            pass
        else:
            price = positive_decimal(trade.price)
            quantity = positive_decimal(trade.quantity)
            if (
                price is not None
                and quantity is not None
                and is_symbol(trade.symbol)
                # Bounded below and by EPOCH_MILLIS_END while decoding.
                and trade.event_time <= latest_ms
                and trade.trade_time <= latest_ms
                and trade.processed_at <= latest_ms
            ):
                return (
                    trade.symbol,
                    trade.trade_id,
                    price,
                    quantity,
                    trade.event_time,
                    trade.trade_time,
                    trade.is_buyer_maker,
                    trade.processed_at,
                )
    # Not accepted above: TradeEvent judges, and words the DLQ reason.
    return trade_from_kafka(value, latest_ms).as_row()

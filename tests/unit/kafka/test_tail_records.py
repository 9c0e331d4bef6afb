"""A tailed record is decoded only on demand; its trade id can be read without decoding."""

from __future__ import annotations

import pytest

from pipeline.core.errors import InvalidTrade
from pipeline.kafka.tail import TailRecord
from tests.factories import make_trades


def record(value: bytes | None) -> TailRecord:
    return TailRecord(0, 0, 0, b"BTCUSDT", value)


def test_the_trade_id_is_read_from_the_value_as_decoding_would() -> None:
    for trade in make_trades(["BTCUSDT"], 5, first_id=2**53 + 1):
        tailed = record(trade.to_kafka_value())
        assert tailed.trade_id() == trade.trade_id == tailed.row()[1]


@pytest.mark.parametrize("value", [None, b"", b"{}", b'{"trade_id":"x"}', b"not json"])
def test_a_record_that_is_not_a_trade_has_no_trade_id_and_no_row(value: bytes | None) -> None:
    tailed = record(value)
    assert tailed.trade_id() is None
    with pytest.raises(InvalidTrade):
        tailed.row()

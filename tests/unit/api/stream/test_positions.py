"""A stream's position per symbol: trades in id order, holes that backfilled trades fill once,
and the event id that spells it all (api.stream.positions)."""

from __future__ import annotations

import pytest

from api.stream.positions import (
    BACKFILL,
    HOLE_HORIZON,
    MAX_HOLES,
    MAX_TRADE_ID,
    NO_TRADE,
    TRADE,
    SymbolPosition,
    parse_event_id,
)


def test_trades_above_the_position_are_delivered_and_repeats_are_not() -> None:
    position = SymbolPosition(100)
    assert [position.accept(i) for i in (101, 102, 102, 101, 100, 103)] == [
        TRADE,
        TRADE,
        None,
        None,
        None,
        TRADE,
    ]
    assert position.high == 103
    assert position.holes == []


def test_a_jump_leaves_a_hole_that_backfilled_trades_fill_each_once() -> None:
    position = SymbolPosition(100)
    assert position.accept(105) == TRADE
    assert position.holes == [(101, 104)]
    assert position.encode("BTCUSDT") == "BTCUSDT:105~4-1"  # ids 101..104: 4 to 1 below
    assert position.accept(103) == BACKFILL
    assert position.holes == [(101, 102), (104, 104)]
    assert position.accept(103) is None  # the same backfilled trade again: a duplicate
    assert [position.accept(i) for i in (101, 104, 102)] == [BACKFILL, BACKFILL, BACKFILL]
    assert position.holes == []
    assert position.encode("BTCUSDT") == "BTCUSDT:105"


def test_the_first_trade_of_a_symbol_without_stored_trades_opens_no_hole() -> None:
    position = SymbolPosition(NO_TRADE)
    assert position.accept(4_000_000_000) == TRADE
    assert position.holes == []
    assert position.encode("ETHUSDT") == "ETHUSDT:4000000000"


def test_resume_reads_the_holes_first_then_everything_above_the_position() -> None:
    position = SymbolPosition(200, [(150, 160), (170, 170)])
    assert position.missing() == [(150, 160), (170, 170), (201, MAX_TRADE_ID)]


def test_holes_far_below_the_position_or_beyond_the_count_are_forgotten_oldest_first() -> None:
    position = SymbolPosition(0)
    trade_id = 0
    for _ in range(MAX_HOLES + 3):
        trade_id += 2
        position.accept(trade_id)
    assert len(position.holes) == MAX_HOLES
    assert position.holes[0] == (trade_id - 2 * MAX_HOLES + 1, trade_id - 2 * MAX_HOLES + 1)
    position.accept(trade_id + HOLE_HORIZON + 5)
    assert position.holes == [(trade_id + 5, trade_id + HOLE_HORIZON + 4)]
    assert position.accept(trade_id - 1) is None  # in a forgotten hole: counts as delivered


def test_a_conflated_position_only_moves_forward_and_keeps_no_holes() -> None:
    position = SymbolPosition(10)
    assert [position.accept_latest(i) for i in (15, 12, 15, 20)] == [True, False, False, True]
    assert position.holes == []


@pytest.mark.parametrize(
    "event_id",
    [
        "BTCUSDT:123",
        "BTCUSDT:-1",
        "BTCUSDT:0,ETHUSDT:456",
        "BTCUSDT:123~23-13~8,ETHUSDT:9",
        "BTCUSDT:123~123",
        f"BTCUSDT:{MAX_TRADE_ID}",
    ],
)
def test_an_event_id_spells_its_positions_exactly(event_id: str) -> None:
    positions = parse_event_id(event_id)
    assert ",".join(p.encode(s) for s, p in positions.items()) == event_id


@pytest.mark.parametrize(
    "event_id",
    [
        "",
        "BTCUSDT",
        "btcusdt:1",
        "BTCUSDT:01",
        "BTCUSDT:-2",
        "BTCUSDT:1,BTCUSDT:2",
        "BTCUSDT:10~3-5",
        "BTCUSDT:10~5-3~4",
        "BTCUSDT:10~11",
        "BTCUSDT:10~0",
        "BTCUSDT:10~",
        "BTCUSDT:1 ",
        f"BTCUSDT:{MAX_TRADE_ID + 1}",
        "BTCUSDT:100" + "".join(f"~{i}" for i in range(2 * (MAX_HOLES + 1), 0, -2)),
        "A" * 20_000,
    ],
)
def test_anything_else_is_not_an_event_id(event_id: str) -> None:
    with pytest.raises(ValueError):
        parse_event_id(event_id)

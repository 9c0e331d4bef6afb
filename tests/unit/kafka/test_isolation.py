"""Poison isolation: a batch with rows the database refuses for good is split until each refused
row stands alone; every other row is stored, once, in the batch's order."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from pipeline.core.errors import RowsRejected
from pipeline.core.trades import Row
from pipeline.kafka.isolation import store_isolating
from tests.factories import make_trades, rows_of


class RefusingSink:
    """Stores a batch whole or not at all, like PostgresSink; refuses any batch holding a row
    whose trade id is in `poison`, naming the first such row."""

    def __init__(self, poison: set[int], fail_after: int | None = None) -> None:
        self.poison = poison
        self.stored: list[Row] = []
        self.writes = 0
        self._fail_after = fail_after

    async def write(self, batch: Sequence[Row]) -> int:
        self.writes += 1
        if self._fail_after is not None and self.writes > self._fail_after:
            raise RuntimeError("bug in the sink")
        bad = [row for row in batch if row[1] in self.poison]
        if bad:
            raise RowsRejected(f"23514 check violation: trade {bad[0][1]}")
        self.stored.extend(batch)
        return len(batch)


ROWS = rows_of(make_trades(["BTCUSDT"], 1000))  # trade ids 1..1000 at indices 0..999


async def test_a_batch_the_sink_takes_is_written_once_and_whole() -> None:
    sink = RefusingSink(poison=set())
    result = await store_isolating(sink.write, ROWS)
    assert (result.stored, result.rejected, sink.writes) == (1000, [], 1)
    assert sink.stored == ROWS


async def test_one_refused_row_is_isolated_and_every_other_row_is_stored_in_order() -> None:
    sink = RefusingSink(poison={500})
    result = await store_isolating(sink.write, ROWS)
    assert result.rejected == [(499, "23514 check violation: trade 500")]
    assert result.stored == 999
    assert sink.stored == [row for row in ROWS if row[1] != 500]
    # The whole batch, then two halves per level down to the row.
    assert sink.writes <= 1 + 2 * math.ceil(math.log2(len(ROWS)))


@pytest.mark.parametrize(
    "poison",
    [{1}, {1000}, {1, 1000}, {2, 3}, {7, 250, 251, 999}],
    ids=["first", "last", "both ends", "neighbours", "scattered"],
)
async def test_every_refused_row_is_found_wherever_it_is(poison: set[int]) -> None:
    sink = RefusingSink(poison=poison)
    result = await store_isolating(sink.write, ROWS)
    assert [index for index, _ in result.rejected] == sorted(trade_id - 1 for trade_id in poison)
    assert all(f"trade {index + 1}" in reason for index, reason in result.rejected)
    assert sink.stored == [row for row in ROWS if row[1] not in poison]
    assert result.stored == len(ROWS) - len(poison)


async def test_a_batch_of_refused_rows_only_stores_nothing_and_rejects_each() -> None:
    rows = ROWS[:5]
    sink = RefusingSink(poison={1, 2, 3, 4, 5})
    result = await store_isolating(sink.write, rows)
    assert [index for index, _ in result.rejected] == [0, 1, 2, 3, 4]
    assert (result.stored, sink.stored) == (0, [])


async def test_an_empty_batch_writes_nothing() -> None:
    sink = RefusingSink(poison=set())
    result = await store_isolating(sink.write, [])
    assert (result.stored, result.rejected, sink.writes) == (0, [], 0)


async def test_an_error_that_is_not_a_rejection_is_raised_and_parts_stored_before_stay() -> None:
    """Not a row's fault (a bug): nothing is dead-lettered; the replay after the restart finds
    the stored part already there (the sink is idempotent)."""
    sink = RefusingSink(poison={900}, fail_after=2)  # whole batch refused, first half stored
    with pytest.raises(RuntimeError, match="bug in the sink"):
        await store_isolating(sink.write, ROWS)
    assert sink.stored == ROWS[:500]

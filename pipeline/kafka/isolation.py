"""Poison isolation: store a batch some of whose rows the database refuses for good.

A sink stores a batch whole or not at all, and raises RowsRejected when a value in it can never
be stored (PostgreSQL's numeric range, a CHECK constraint). Retrying such a batch would replay
it forever and hold up every record behind it; skipping it would lose its valid rows. So the
batch is split in halves, each half written on its own (one transaction each), and a half that
is refused again split again, until every refused part is a single row: that row is the
offender. Every other row is stored exactly as the whole batch would have been (the sink is
idempotent, so a part stored before a crash is absorbed by the replay).

With one offender in n rows this takes about 2·log2(n) writes, and the rows sent add up to about
2n; each further offender adds about as many again. Parts are written in the batch's order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from pipeline.core.errors import RowsRejected
from pipeline.core.trades import Row


@dataclass(slots=True)
class Isolated:
    """What came of a batch: the rows stored as new, and the rows refused (index in the batch,
    the database's reason), in batch order."""

    stored: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)


async def store_isolating(
    write: Callable[[Sequence[Row]], Awaitable[int]], rows: Sequence[Row]
) -> Isolated:
    """Store `rows` with `write` (all or nothing; RowsRejected when a row can never be stored),
    splitting around the rows it refuses. Any other error of `write` is raised as it is; parts
    stored before it stay stored."""
    result = Isolated()
    parts = [(0, len(rows))]  # half-open ranges still to write; the next one last
    while parts:
        start, end = parts.pop()
        if start == end:
            continue
        try:
            result.stored += await write(rows[start:end])
        except RowsRejected as exc:
            if end - start == 1:
                result.rejected.append((start, str(exc)))
                continue
            middle = (start + end) // 2
            parts += [(middle, end), (start, middle)]
    return result

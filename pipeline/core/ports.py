"""The seams between sibling layers: the exchange hands trades to Kafka, Kafka hands batches to
the database. Each side knows only these protocols; the runtime wires the concrete ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.core.trades import Row, TradeEvent


class TradePublisher(Protocol):
    """Where trades go (the Kafka producer; a list in tests)."""

    async def publish(self, event: TradeEvent) -> None:
        """Hand over one valid trade; may wait (backpressure) while Kafka is slow or down."""

    async def dead_letter(self, raw: bytes, reason: str, source: str) -> None:
        """Hand over a frame or record that is not a valid trade, with the reason."""


class TradeSink(Protocol):
    """Where the consumer's batches are stored (PostgreSQL)."""

    async def write(self, batch: Sequence[Row]) -> int:
        """Store the batch atomically and return how many rows were new; raise SinkUnavailable
        (nothing stored) while the store is down or refuses every write, RowsRejected (nothing
        stored) when some row of the batch can never be stored."""

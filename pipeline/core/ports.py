"""The seams between sibling layers: the exchange hands trades to Kafka, Kafka hands batches to
the database, history jobs keep their progress in the database. Each side knows only these
protocols; the runtime wires the concrete ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.core.history import HistoryJob, JobProgress, JobState
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


class DurablePublisher(TradePublisher, Protocol):
    """A publisher that can say when everything handed over is safe (acknowledged by Kafka)."""

    async def drain(self, timeout: float) -> bool:
        """Wait until everything published so far is acknowledged; False if `timeout` ran out."""


class HistoryJobStore(Protocol):
    """Where history jobs are kept (PostgreSQL), as the job runner needs them.

    `owner` names one runner; a job is claimed by one owner at a time. Raises
    JobStoreUnavailable while the store cannot be reached.
    """

    async def claim(self, owner: str, limit: int, stale_s: float) -> list[HistoryJob]:
        """Up to `limit` queued jobs, or running ones whose owner went silent for `stale_s`,
        now running for `owner` (never for two owners)."""

    async def renew(self, owner: str, job_ids: Sequence[int]) -> set[int]:
        """Renew `owner`'s claim on these jobs; the ids still running for it (a cancelled or
        taken-over job is missing)."""

    async def save(self, job_id: int, owner: str, progress: JobProgress) -> bool:
        """Record progress; False when the job is no longer running for `owner`."""

    async def finish(self, job_id: int, owner: str, state: JobState, progress: JobProgress) -> bool:
        """End the job (done or failed) with its last progress; False as for `save`."""

    async def release(self, owner: str, job_ids: Sequence[int]) -> None:
        """Queue `owner`'s running jobs again (a clean stop): another runner resumes them."""

    async def stored_between(
        self, symbol: str, first_id: int, last_id: int, start_ms: int, end_ms: int
    ) -> int:
        """Stored trades of `symbol` with ids first_id..last_id and times start_ms..end_ms."""

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state."""

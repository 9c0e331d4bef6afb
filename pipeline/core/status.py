"""The running pipeline's status: one set of types from the roles to GET /pipeline/status.

The roles build these, `Pipeline.status()` assembles a `PipelineStatus`, a worker process sends
it to the API process as JSON (msgspec) which decodes it back into the same types with
validation, and the API returns it as the response model (pydantic documents it from the very
same dataclasses). A renamed or retyped field is therefore a type error, not a broken page.

Frozen, slotted stdlib dataclasses: msgspec encodes and validates them, pydantic builds their
schema. Descriptions live in `Annotated[..., Field(...)]`, which pydantic reads and msgspec
ignores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

TaskState = Literal["starting", "running", "restarting", "stopped"]
ConnectionState = Literal["connecting", "connected", "backoff", "closed"]

EpochSeconds = Annotated[float, Field(description="epoch seconds of the last state change")]


@dataclass(frozen=True, slots=True)
class TaskStatus:
    name: str
    state: TaskState
    restarts: int
    last_error: str | None
    since: EpochSeconds


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    name: str
    state: ConnectionState
    since: EpochSeconds
    url: str
    streams: tuple[str, ...]
    frames: int
    reconnects: int


@dataclass(frozen=True, slots=True)
class SymbolStatus:
    last_trade_id: int | None
    last_trade_time: Annotated[int | None, Field(description="epoch ms")]


@dataclass(frozen=True, slots=True)
class ExchangeGap:
    """Trade ids the exchange's REST API does not have (or no longer keeps)."""

    symbol: str
    first_id: int
    last_id: int


@dataclass(frozen=True, slots=True)
class BackfillStatus:
    gaps_found: int
    trades_backfilled: int
    trades_skipped: int  # beyond backfill_max_trades or older than backfill_max_age_s
    exchange_gap_trades: int
    exchange_gaps: tuple[ExchangeGap, ...]  # the most recent ones
    in_progress: dict[str, int]  # symbol → trade ids still to fetch


@dataclass(frozen=True, slots=True)
class SourceStatus:
    running: bool
    connections: tuple[ConnectionStatus, ...]
    symbols: dict[str, SymbolStatus]
    received: Annotated[int, Field(description="frames that were not replies to our requests")]
    valid: int
    invalid: Annotated[int, Field(description="dead-lettered")]
    reconnects: int
    gaps_found: int
    trades_backfilled: int
    trades_skipped: Annotated[int, Field(description="gap trades beyond the backfill bounds")]
    exchange_gap_trades: Annotated[int, Field(description="trade ids REST does not have")]
    exchange_gaps: Annotated[tuple[ExchangeGap, ...], Field(description="the most recent ones")]
    backfill_in_progress: Annotated[
        dict[str, int], Field(description="symbol → trade ids still to fetch")
    ]


@dataclass(frozen=True, slots=True)
class ProducerStatus:
    kafka_up: bool
    queued: int
    in_flight: int
    delivered: int
    dead_letters: int
    delivery_failures: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    assigned: tuple[int, ...]
    consumed: int
    stored: int
    duplicates: int
    dead_letters: Annotated[int, Field(description="records sent to the DLQ, rejected included")]
    batches: int
    sink_up: Annotated[
        bool,
        Field(
            description="false while PostgreSQL is down or refuses every write (read-only, "
            "no privilege): the batch is retried, offsets wait; the reason is last_error"
        ),
    ]
    last_error: str | None
    last_commit_at: float | None
    rejected: Annotated[
        int, Field(description="rows PostgreSQL refused for good, dead-lettered with its reason")
    ] = 0
    dlq_up: Annotated[
        bool,
        Field(
            description="false while dead letters cannot be delivered: retried, offsets wait; "
            "the reason is last_error"
        ),
    ] = True


@dataclass(frozen=True, slots=True)
class Counts:
    """The path end to end; null where this instance does not run the role."""

    received: Annotated[int | None, Field(description="frames from the exchange")]
    produced: Annotated[int | None, Field(description="trades acknowledged by Kafka")]
    stored: Annotated[int | None, Field(description="rows inserted into crypto_prices")]
    dead_letters: Annotated[int, Field(description="records sent to the DLQ topic")]


@dataclass(frozen=True, slots=True)
class Gaps:
    found: int
    backfilled: int


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """One instance's roles, tasks and counters; a role this instance does not run is null."""

    # Built by `PipelineStatus.of()`, which derives `counts` and `gaps` from the roles.

    roles: tuple[str, ...]
    uptime_s: float
    tasks: tuple[TaskStatus, ...]
    counts: Counts
    gaps: Gaps | None
    source: SourceStatus | None = None
    producer: ProducerStatus | None = None
    consumer: ConsumerStatus | None = None

    @classmethod
    def of(
        cls,
        roles: Iterable[str],
        uptime_s: float,
        tasks: Iterable[TaskStatus],
        source: SourceStatus | None = None,
        producer: ProducerStatus | None = None,
        consumer: ConsumerStatus | None = None,
    ) -> PipelineStatus:
        """The status of these roles, with the end-to-end summary (`counts`, `gaps`) added."""
        counts = Counts(
            received=source.received if source else None,
            produced=producer.delivered if producer else None,
            stored=consumer.stored if consumer else None,
            dead_letters=(producer.dead_letters if producer else 0)
            + (consumer.dead_letters if consumer else 0),
        )
        gaps = Gaps(source.gaps_found, source.trades_backfilled) if source else None
        return cls(
            roles=tuple(sorted(roles)),
            uptime_s=uptime_s,
            tasks=tuple(tasks),
            counts=counts,
            gaps=gaps,
            source=source,
            producer=producer,
            consumer=consumer,
        )

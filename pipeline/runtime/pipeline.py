"""Pipeline: the enabled roles wired together, started and stopped in order.

producer role: SymbolRegistry → BinanceSource → EventProducer → Kafka (SYMBOLS applied to the
registry at start, and with SYMBOLS=ALL exchangeInfo followed: pipeline/runtime/symbols.py)
               HistoryJobs → HistoryRunner → its own EventProducer → Kafka (history jobs)
consumer role: Kafka → TradeConsumer → PostgresSink
Each role runs as a SupervisedTask. Stop order drains the path front to back: the source stops
taking frames, the producer flushes what it accepted, the consumer finishes its batch.

A role's modules are imported when the role starts: a worker process running one role loads
only that role's libraries (the consumer's needs no SQLAlchemy, httpx or websockets), which
keeps each process smaller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from pipeline.core import metrics
from pipeline.core.settings import ALL_SYMBOLS, Settings
from pipeline.core.status import PipelineStatus, TaskStatus
from pipeline.kafka.admin import ensure_topics
from pipeline.runtime.supervisor import SupervisedTask

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from pipeline.exchange.client import ExchangeClient
    from pipeline.exchange.source import BinanceSource
    from pipeline.kafka.consumer import TradeConsumer
    from pipeline.kafka.producer import EventProducer
    from pipeline.storage.registry import SymbolRegistry
    from pipeline.storage.sink import PostgresSink

logger = logging.getLogger(__name__)


@dataclass
class _ProducerRole:
    producer: EventProducer
    source: BinanceSource
    tasks: list[SupervisedTask] = field(default_factory=list)


@dataclass
class _ConsumerRole:
    sink: PostgresSink
    consumer: TradeConsumer
    task: SupervisedTask


class PipelineControl(Protocol):
    """What the API needs from the roles, wherever they run (Pipeline or ProcessPipeline)."""

    @property
    def registry(self) -> SymbolRegistry: ...

    @property
    def roles(self) -> frozenset[str]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def refresh(self) -> None:
        """Bring status() and metrics() up to date (workers in other processes report)."""

    def tasks(self) -> list[TaskStatus]: ...

    def status(self) -> PipelineStatus: ...

    def metrics(self) -> bytes: ...


class Pipeline:
    """Owns the roles of one service instance; `start()` returns at once, work runs in tasks."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine | None = None,
        exchange: ExchangeClient | None = None,
    ) -> None:
        """`engine` and `exchange` are needed by the producer role (and the API's registry)."""
        self.settings = settings
        self._engine = engine
        self._exchange = exchange
        self._producer_role: _ProducerRole | None = None
        self._consumer_role: _ConsumerRole | None = None
        self._history_producer: EventProducer | None = None
        self._started_at = time.time()

    @cached_property
    def registry(self) -> SymbolRegistry:
        from pipeline.storage.registry import SymbolRegistry

        if self._engine is None:
            raise RuntimeError("the symbol registry needs a database engine")
        return SymbolRegistry(self._engine)

    @property
    def exchange(self) -> ExchangeClient:
        if self._exchange is None:
            raise RuntimeError("the producer role needs an exchange client")
        return self._exchange

    @property
    def roles(self) -> frozenset[str]:
        return self.settings.roles

    async def start(self) -> None:
        if "producer" in self.roles:
            await self._start_producer_role()
        if "consumer" in self.roles:
            self._start_consumer_role()

    async def _start_producer_role(self) -> None:
        from pipeline.exchange.source import BinanceSource
        from pipeline.kafka.producer import EventProducer
        from pipeline.runtime.symbols import ListingsFollower, track_at_start

        tracked = await track_at_start(self.registry, self.settings)
        producer = EventProducer(self.settings.kafka)
        source = BinanceSource(
            self.settings.binance,
            producer,
            self.exchange,
            resume_from=await self.registry.resume_points(
                tracked, self.settings.binance.backfill_max_trades
            ),
        )
        role = _ProducerRole(producer, source)
        role.tasks = [
            SupervisedTask("topics", self._ensure_topics_once),
            SupervisedTask("producer", producer.run),
            SupervisedTask("source", lambda: source.run(source.symbols or tracked)),
            SupervisedTask("symbols", self._follow_registry),
            *self._history_tasks(),
        ]
        if self.settings.symbols == ALL_SYMBOLS:
            listings = ListingsFollower(
                self.exchange, self.registry, self.settings.binance.listings_poll_s
            )
            role.tasks.append(SupervisedTask("listings", listings.run))
        self._producer_role = role
        for task in role.tasks:
            task.start()

    def _history_tasks(self) -> list[SupervisedTask]:
        """History jobs (POST /backfills): a runner with a producer of its own, so that its
        pages (acknowledged one at a time, see HistoryRunner) never hold up live trades."""
        from pipeline.exchange.history import HistoryRunner
        from pipeline.kafka.producer import EventProducer
        from pipeline.storage.jobs import HistoryJobs

        if self._engine is None:
            raise RuntimeError("history jobs need a database engine")
        producer = EventProducer(self.settings.kafka)
        runner = HistoryRunner(
            self.settings.binance, self.exchange, producer, HistoryJobs(self._engine)
        )
        self._history_producer = producer
        return [
            SupervisedTask("history producer", producer.run),
            SupervisedTask("history", runner.run),
        ]

    def _start_consumer_role(self) -> None:
        from pipeline.kafka.consumer import TradeConsumer
        from pipeline.storage.sink import PostgresSink

        sink = PostgresSink(self.settings.database)
        consumer = TradeConsumer(self.settings.kafka, sink, self.settings.binance.max_clock_skew_ms)

        async def consume() -> None:
            # Before subscribing: a consumer subscribed to a topic that does not exist yet is
            # assigned nothing until its next metadata refresh (minutes).
            await ensure_topics(self.settings.kafka)
            await consumer.run()

        self._consumer_role = _ConsumerRole(sink, consumer, SupervisedTask("consumer", consume))
        self._consumer_role.task.start()

    async def _ensure_topics_once(self) -> None:
        await ensure_topics(self.settings.kafka)
        # Done: park, so the supervisor does not rerun a finished job.
        await asyncio.Event().wait()

    async def _follow_registry(self) -> None:
        """Re-subscribe whenever the registry changes (any instance may have changed it)."""
        assert self._producer_role is not None
        async for symbols in self.registry.follow():
            await self._producer_role.source.set_symbols(symbols)

    async def stop(self) -> None:
        """Stop in order within settings.shutdown_timeout_s; nothing accepted is dropped silently."""
        deadline = time.monotonic() + self.settings.shutdown_timeout_s

        def left() -> float:
            return max(deadline - time.monotonic(), 0.5)

        if self._producer_role is not None:
            role = self._producer_role
            by_name = {task.name: task for task in role.tasks}
            # The history runner hands its jobs back; what it published is flushed.
            await by_name["history"].stop(left())
            if self._history_producer is not None:
                await self._history_producer.drain(left() / 4)
            await by_name["history producer"].stop(left())
            for name in ("listings", "symbols", "source", "topics"):
                if name in by_name:
                    await by_name[name].stop(left())
            if not await role.producer.drain(left() / 2):
                logger.warning("producer did not flush everything before shutdown")
            await by_name["producer"].stop(left())
        if self._consumer_role is not None:
            consumer_role = self._consumer_role
            await consumer_role.task.stop(left())
            await consumer_role.sink.close()

    def tasks(self) -> list[TaskStatus]:
        found: list[SupervisedTask] = []
        if self._producer_role is not None:
            found.extend(self._producer_role.tasks)
        if self._consumer_role is not None:
            found.append(self._consumer_role.task)
        return [task.status() for task in found]

    def status(self) -> PipelineStatus:
        """Everything /pipeline/status shows."""
        producer_role, consumer_role = self._producer_role, self._consumer_role
        return PipelineStatus.of(
            self.roles,
            round(time.time() - self._started_at, 1),
            self.tasks(),
            source=producer_role.source.status() if producer_role else None,
            producer=producer_role.producer.status() if producer_role else None,
            consumer=consumer_role.consumer.status() if consumer_role else None,
        )

    def metrics(self) -> bytes:
        """The Prometheus exposition of this process, where the roles run."""
        return metrics.exposition()

    async def refresh(self) -> None:
        """Nothing to do: status() and metrics() read this process's state directly."""

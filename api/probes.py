"""Probes of the service's dependencies: readiness (PostgreSQL, migrations, Kafka, tasks, the
sink) and consumer lag. Both are bounded by short timeouts and cached, so frequent probes stay cheap."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaClient
from sqlalchemy.ext.asyncio import AsyncEngine

from api.schemas.health import CheckOut, ReadinessOut
from pipeline.core import metrics
from pipeline.core.settings import KafkaSettings
from pipeline.kafka.admin import ConsumerLag, consumer_lag
from pipeline.kafka.client import start_within
from pipeline.kafka.outage import is_outage
from pipeline.runtime.pipeline import PipelineControl
from pipeline.storage import migrate

logger = logging.getLogger(__name__)

READY_TTL_S = 1.0
READY_TIMEOUT_S = 2.0
LAG_TIMEOUT_S = 5.0
# Requests within this many seconds of a measurement share it.
LAG_REUSE_S = 0.5
# /metrics refreshes the lag gauge at most this often, and waits for Kafka at most this long.
METRICS_LAG_MAX_AGE_S = 5.0
METRICS_LAG_TIMEOUT_S = 2.0


class KafkaUnreachable(Exception):
    """Kafka did not answer within the probe's timeout."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


async def probe_kafka(settings: KafkaSettings, timeout_s: float = READY_TIMEOUT_S) -> int:
    """Fetch cluster metadata from a bootstrap server; the number of brokers that answered."""
    client = AIOKafkaClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-ready",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        await start_within(client.bootstrap(), timeout_s)
        return len(client.cluster.brokers())
    finally:
        await client.close()


class ReadinessProbe:
    """GET /ready's checks, run concurrently, cached for `ttl_s` (one run shared by callers)."""

    def __init__(
        self,
        engine: AsyncEngine,
        kafka: KafkaSettings,
        pipeline: PipelineControl,
        head: str | None,
        ttl_s: float = READY_TTL_S,
        timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self._engine = engine
        self._kafka = kafka
        self._pipeline = pipeline
        self._head = head
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._cached: tuple[float, ReadinessOut] | None = None

    async def report(self) -> ReadinessOut:
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self._ttl_s:
                return self._cached[1]
            report = await self._run()
            self._cached = (time.monotonic(), report)
            if not report.ready:
                down = [name for name, check in report.checks.items() if not check.ok]
                logger.debug("not ready: %s", down)
            return report

    async def _run(self) -> ReadinessOut:
        (postgres, migrations), kafka = await asyncio.gather(self._database(), self._broker())
        checks = {
            "postgres": postgres,
            "migrations": migrations,
            "kafka": kafka,
            "tasks": self._tasks(),
            "sink": self._sink(),
        }
        ready = all(check.ok for check in checks.values())
        return ReadinessOut(status="ready" if ready else "not ready", checks=checks)

    async def _database(self) -> tuple[CheckOut, CheckOut]:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                revision = await migrate.current_revision(self._engine)
        except Exception as exc:
            down = CheckOut(ok=False, detail=f"PostgreSQL unreachable: {_reason(exc)}")
            return down, CheckOut(ok=False, detail="unknown: PostgreSQL unreachable")
        elapsed_ms = (time.monotonic() - started) * 1000
        postgres = CheckOut(ok=True, detail=f"answered in {elapsed_ms:.0f} ms")
        if revision == self._head:
            return postgres, CheckOut(ok=True, detail=f"at head {revision}")
        return postgres, CheckOut(ok=False, detail=f"at {revision}, head is {self._head}")

    async def _broker(self) -> CheckOut:
        try:
            brokers = await probe_kafka(self._kafka, self._timeout_s)
        except Exception as exc:
            return CheckOut(ok=False, detail=f"Kafka unreachable: {_reason(exc)}")
        return CheckOut(ok=True, detail=f"{brokers} broker(s) answered")

    def _tasks(self) -> CheckOut:
        tasks = self._pipeline.tasks()
        failing = [task for task in tasks if task.state != "running"]
        if not failing:
            return CheckOut(ok=True, detail=f"{len(tasks)} task(s) running")
        described = "; ".join(
            f"{task.name} {task.state}" + (f" ({task.last_error})" if task.last_error else "")
            for task in failing
        )
        return CheckOut(ok=False, detail=described)

    def _sink(self) -> CheckOut:
        """Whether the consumer stores what it reads: PostgreSQL can be up (the postgres check
        passes) and still refuse every write, e.g. read-only after a failover."""
        if "consumer" not in self._pipeline.roles:
            return CheckOut(ok=True, detail="no consumer role in this instance")
        consumer = self._pipeline.status().consumer
        if consumer is None:
            return CheckOut(ok=True, detail="consumer starting")
        if not consumer.sink_up:
            return CheckOut(
                ok=False, detail=f"not storing, retrying without committing: {consumer.last_error}"
            )
        if not consumer.dlq_up:
            return CheckOut(
                ok=False,
                detail=f"dead letters not delivered, retrying without committing: "
                f"{consumer.last_error}",
            )
        return CheckOut(
            ok=True, detail=f"storing: {consumer.stored} rows, {consumer.rejected} rejected"
        )


class LagProbe:
    """Consumer lag of the sink's group, from Kafka; updates the Prometheus gauge."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._lock = asyncio.Lock()
        self._measuring = asyncio.Lock()
        self._last: ConsumerLag | None = None
        self._measured_at = float("-inf")

    async def measure(self, timeout_s: float = LAG_TIMEOUT_S) -> ConsumerLag:
        """Measure (or reuse a measurement under LAG_REUSE_S old); KafkaUnreachable when Kafka
        does not answer within `timeout_s`.

        Each measurement opens Kafka clients: callers arriving together wait for one and share
        it, so polling clients cannot starve the pipeline sharing this event loop.
        """
        async with self._measuring:
            if self._last is not None and time.monotonic() - self._measured_at < LAG_REUSE_S:
                return self._last
            try:
                async with asyncio.timeout(timeout_s):
                    lag = await consumer_lag(self._kafka)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._last = None
                raise KafkaUnreachable(f"Kafka unreachable: {_reason(exc)}") from exc
            finally:
                self._measured_at = time.monotonic()
            self._last = lag
        for partition in lag.partitions:
            metrics.CONSUMER_LAG.labels(str(partition.partition)).set(partition.lag)
        return lag

    async def refresh_gauge(self) -> None:
        """For /metrics: re-measure when the gauge is older than a few seconds, briefly."""
        if self._lock.locked():
            return  # a scrape is measuring already
        async with self._lock:
            if time.monotonic() - self._measured_at < METRICS_LAG_MAX_AGE_S:
                return
            try:
                await self.measure(METRICS_LAG_TIMEOUT_S)
            except KafkaUnreachable as exc:
                logger.debug("consumer lag gauge not updated: %s", exc)

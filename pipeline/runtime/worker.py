"""A worker process: one role of the pipeline, run for the API process that started it.

`python -m pipeline.runtime.worker [role]` reads its settings as one JSON line on stdin and runs a
`Pipeline` with those roles (the argument only names it in ps), at its role's CPU priority
(pipeline.runtime.priority). On its original stdout it writes a report (a `WorkerReport`: the typed
`PipelineStatus` and the Prometheus exposition) as one JSON line every REPORT_INTERVAL_S, and at
once for every `report <n>` line on stdin, answering `n` (so the API's /pipeline/status is never
stale).

It stops cleanly (source stopped, producer flushed, consumer's batch committed) when stdin
closes — the parent asked, or died: a SIGKILLed API process leaves no orphan running — or on
SIGTERM. It ignores SIGINT: a Ctrl+C in the terminal reaches every process of its group, and
the API process stops its workers itself.

Anything else that writes to stdout lands on stderr, so it cannot corrupt the reports.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from pipeline.core.logs import configure_logging
from pipeline.core.metrics import exposition
from pipeline.core.settings import Settings, WorkerPriority
from pipeline.core.status import PipelineStatus
from pipeline.runtime.pipeline import Pipeline
from pipeline.runtime.priority import lower_priority

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from pipeline.exchange.client import ExchangeClient

logger = logging.getLogger(__name__)

# Allocations between young collections; then every 20th young one, and every 100th of those.
GC_THRESHOLDS = (50_000, 20, 100)

REPORT_INTERVAL_S = 1.0
REPORT_REQUEST = b"report"


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One report: what the parent shows at /pipeline/status, /ready and /metrics."""

    answer: int | None  # the `report <n>` request this answers; None when unasked
    status: PipelineStatus
    metrics: str  # Prometheus exposition


_encoder = msgspec.json.Encoder()


def report_line(report: WorkerReport) -> bytes:
    """A report as the worker sends it: one JSON line (see processes.read_report)."""
    return _encoder.encode(report) + b"\n"


def report(pipeline: Pipeline, answer: int | None = None) -> bytes:
    """The report line of this moment."""
    return report_line(WorkerReport(answer, pipeline.status(), exposition().decode()))


async def _stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _reports_pipe(fd: int) -> asyncio.StreamWriter:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", buffering=0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)


async def _send(reports: asyncio.StreamWriter, line: bytes) -> bool:
    """Write one report; False once the parent has closed its end (it is gone)."""
    if reports.is_closing():
        return False
    try:
        reports.write(line)
        await reports.drain()
    except (ConnectionError, RuntimeError):
        return False
    return True


async def _report_forever(pipeline: Pipeline, reports: asyncio.StreamWriter) -> None:
    """Report every REPORT_INTERVAL_S; return when the parent is gone."""
    while True:
        if not await _send(reports, report(pipeline)):
            return
        await asyncio.sleep(REPORT_INTERVAL_S)


async def _answer_requests(
    pipeline: Pipeline, stdin: asyncio.StreamReader, reports: asyncio.StreamWriter
) -> None:
    """Report on request; return when stdin closes."""
    while line := await stdin.readline():
        command, _, number = line.strip().partition(b" ")
        if command == REPORT_REQUEST and number.isdigit():
            await _send(reports, report(pipeline, int(number)))


async def serve(settings: Settings, stdin: asyncio.StreamReader, reports_fd: int) -> None:
    configure_logging(settings)
    logger.info(
        "worker started roles=%s priority=%s",
        ",".join(sorted(settings.roles)),
        worker_priority(settings),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # A Ctrl+C reaches the whole terminal's process group: the API process stops its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reports = await _reports_pipe(reports_fd)
    async with AsyncExitStack() as resources:
        engine: AsyncEngine | None = None
        exchange: ExchangeClient | None = None
        if "producer" in settings.roles:
            # Imported here: a consumer worker does without SQLAlchemy and httpx (see
            # pipeline.runtime.pipeline on imports per role).
            from pipeline.exchange.client import ExchangeClient
            from pipeline.storage.tables import create_engine

            engine = create_engine(settings.database)
            resources.push_async_callback(engine.dispose)
            exchange = ExchangeClient(settings.binance)
            resources.push_async_callback(exchange.close)
        pipeline = Pipeline(settings, engine, exchange)
        await pipeline.start()
        reporter = asyncio.create_task(_report_forever(pipeline, reports))
        closed = asyncio.create_task(_answer_requests(pipeline, stdin, reports))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({closed, waiter, reporter}, return_when=asyncio.FIRST_COMPLETED)
        for task in (closed, waiter, reporter):
            task.cancel()
        await pipeline.stop()
        await _send(reports, report(pipeline))  # the final counters
    logger.info("worker stopped roles=%s", ",".join(sorted(settings.roles)))


async def _main() -> None:
    # Keep the real stdout for reports; point fd 1 at stderr for everything else.
    reports_fd = os.dup(1)
    os.dup2(2, 1)
    stdin = await _stdin()
    line = await stdin.readline()
    if not line:
        return  # the parent went away before sending settings
    settings = Settings.model_validate(orjson.loads(line))
    lower_priority(worker_priority(settings))
    rarer_collections()
    await serve(settings, stdin, reports_fd)


def worker_priority(settings: Settings) -> WorkerPriority:
    """This worker's CPU priority: its role's; the source's when it runs the source at all."""
    return settings.worker_priority_of("producer" if "producer" in settings.roles else "consumer")


def rarer_collections() -> None:
    """Collect reference cycles every GC_THRESHOLDS[0] allocations instead of every 700.

    A worker's hot path keeps a whole batch of young objects alive (5,000 records, rows,
    Decimals: ~25,000 containers), which Python's default young-generation collections traverse
    again and again and then promote, feeding costly older collections. The hot paths create no
    cycles (reference counting frees their objects), so rarer collections reclaim as much for
    far less CPU (docs/perf.md has the measurements). What exists at startup (modules, settings) is frozen out of every scan.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def settings_line(settings: Settings) -> bytes:
    """The settings a worker needs, as its first stdin line (the API key stays in the API)."""
    data: dict[str, Any] = settings.model_dump(mode="json", exclude={"api"})
    return orjson.dumps(data) + b"\n"


def main() -> None:
    try:
        import uvloop
    except ImportError:  # optional: the default loop works, a little slower
        asyncio.run(_main())
    else:
        uvloop.run(_main())


if __name__ == "__main__":
    main()

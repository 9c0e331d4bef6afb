"""ProcessPipeline: each role in its own worker process, supervised from the API process.

One Python process runs one core at a time. With the roles as tasks on the API's event loop,
full ingest saturates that loop and the API answers in seconds; and the producer and consumer
share one core while the second one idles. Here each role is a `python -m pipeline.runtime.worker`
child: the producer, the consumer and the API each get a core's worth of scheduling, and the
API only serves HTTP.

The interface is Pipeline's (`start`, `stop`, `status`, `tasks`, `registry`, `roles`), built
from the workers' reports, each decoded and validated into the worker's own types (a
`WorkerReport` holding a `PipelineStatus`). A worker that exits is restarted with backoff
(SupervisedTask); stopping closes its stdin and waits for its clean stop, bounded, then kills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import replace

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.core.metrics import exposition, merge_expositions
from pipeline.core.settings import Role, Settings
from pipeline.core.status import PipelineStatus, TaskStatus
from pipeline.runtime.supervisor import SupervisedTask
from pipeline.runtime.worker import WorkerReport, settings_line
from pipeline.storage.registry import SymbolRegistry

logger = logging.getLogger(__name__)

# Beyond settings.shutdown_timeout_s (the worker's own stop budget) before it is killed.
KILL_GRACE_S = 1.0
REPORT_LINE_LIMIT = 16 << 20
# How long /pipeline/status and /metrics wait for a worker's fresh report before using the last.
REFRESH_TIMEOUT_S = 1.0

_decoder = msgspec.json.Decoder(WorkerReport)


def read_report(line: bytes) -> WorkerReport:
    """A worker's report line (see worker.report_line), validated: msgspec.ValidationError when
    a field is missing or of the wrong type, msgspec.DecodeError when it is not JSON."""
    return _decoder.decode(line)


class WorkerProcess:
    """One role's worker: started, read, restarted and stopped by a SupervisedTask."""

    def __init__(self, role: Role, settings: Settings) -> None:
        self.role = role
        self._settings = settings.model_copy(update={"roles": frozenset({role})})
        self._task = SupervisedTask(f"{role} process", self._run)
        self._process: asyncio.subprocess.Process | None = None
        self.report: WorkerReport | None = None
        self._asked = 0
        self._answered = 0
        self._reported = asyncio.Condition()

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop(self._settings.shutdown_timeout_s + KILL_GRACE_S + 0.5)

    async def _run(self) -> None:
        self.report = None
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipeline.runtime.worker",
            # Unread by the worker (its settings come on stdin): names the role in ps and top.
            self.role,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=REPORT_LINE_LIMIT,
            # Same session as the API process, on purpose: a new one would be a scheduler
            # autogroup of its own, sharing the CPU with the API as an equal whatever its nice.
        )
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(settings_line(self._settings))
            await process.stdin.drain()
            await self._read_reports(process)
            code = await process.wait()
            raise RuntimeError(f"worker exited with status {code}")
        finally:
            await self._terminate(process)

    async def _read_reports(self, process: asyncio.subprocess.Process) -> None:
        """Keep the latest report until the worker closes its stdout; wake who asked for one.

        A line that does not decode into a WorkerReport counts as no report: the last one
        stands (none yet: the worker shows as starting), and who asked waits out its timeout.
        """
        assert process.stdout is not None
        warned = False
        while line := await process.stdout.readline():
            try:
                report = read_report(line)
            except msgspec.DecodeError as exc:  # ValidationError included
                if not warned:
                    logger.warning("%s worker sent an unreadable report: %s", self.role, exc)
                    warned = True
                continue
            self.report = report
            async with self._reported:
                if report.answer is not None:
                    self._answered = max(self._answered, report.answer)
                self._reported.notify_all()

    async def refresh(self) -> None:
        """Ask the worker for a report and wait for it (bounded): the figures of this moment."""
        process = self._process
        if process is None or process.returncode is not None or process.stdin is None:
            return
        self._asked += 1
        asked = self._asked
        try:
            process.stdin.write(b"report %d\n" % asked)
            async with asyncio.timeout(REFRESH_TIMEOUT_S), self._reported:
                await self._reported.wait_for(lambda: self._answered >= asked)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass  # busy, stopping or gone: the last report stands

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is not None:
            return
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()  # the worker's signal to stop cleanly
        deadline = self._settings.shutdown_timeout_s + KILL_GRACE_S
        try:
            async with asyncio.timeout(deadline):
                # Keep reading: the last report holds the final counters, and a full pipe
                # would block the worker's stop.
                await self._read_reports(process)
                await process.wait()
        except TimeoutError:
            logger.error("%s worker did not stop within %.0f s; killing it", self.role, deadline)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        logger.info("%s worker stopped status=%d", self.role, process.returncode)

    def tasks(self) -> list[TaskStatus]:
        """The worker's own tasks as it last reported them, after the process itself."""
        supervisor = self._task.status()
        if supervisor.state == "running" and self.report is None:
            supervisor = replace(supervisor, state="starting", last_error=None)
        reported = self.report.status.tasks if self.report is not None else ()
        return [supervisor, *reported]


class ProcessPipeline:
    """Pipeline's interface over one worker process per enabled role."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.registry = SymbolRegistry(engine)
        self._workers = [
            WorkerProcess(role, settings)
            for role in ("producer", "consumer")
            if role in settings.roles
        ]
        self._started_at = time.time()

    @property
    def roles(self) -> frozenset[str]:
        return self.settings.roles

    async def start(self) -> None:
        for worker in self._workers:
            worker.start()

    async def refresh(self) -> None:
        await asyncio.gather(*(worker.refresh() for worker in self._workers))

    async def stop(self) -> None:
        # Together: each worker stops in order on its own, and Kafka keeps what the producer
        # flushed after the consumer left.
        await asyncio.gather(*(worker.stop() for worker in self._workers))

    def tasks(self) -> list[TaskStatus]:
        return [task for worker in self._workers for task in worker.tasks()]

    def status(self) -> PipelineStatus:
        """Pipeline.status(), merged from the workers' latest reports (one role each)."""
        reported = [w.report.status for w in self._workers if w.report is not None]
        return PipelineStatus.of(
            self.roles,
            round(time.time() - self._started_at, 1),
            self.tasks(),
            source=next((s.source for s in reported if s.source is not None), None),
            producer=next((s.producer for s in reported if s.producer is not None), None),
            consumer=next((s.consumer for s in reported if s.consumer is not None), None),
        )

    def metrics(self) -> bytes:
        """This process's exposition merged with the workers' latest (see merge_expositions)."""
        reports = [w.report.metrics for w in self._workers if w.report is not None]
        return merge_expositions([exposition().decode(), *reports])

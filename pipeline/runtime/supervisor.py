"""SupervisedTask: a background role that is restarted with backoff, never silently dead."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pipeline.core import metrics
from pipeline.core.retry import Backoff
from pipeline.core.status import TaskState, TaskStatus

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.5, 30.0)
# A run that lasted this long was healthy: the next crash starts the backoff over.
HEALTHY_RUN_S = 60.0


class SupervisedTask:
    """Runs `work()` in a task; when it raises, logs, waits (exponential backoff) and reruns it."""

    def __init__(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._work = work
        self._task: asyncio.Task[None] | None = None
        self._state: TaskState = "stopped"
        self._restarts = 0
        self._last_error: str | None = None
        self._since = time.time()

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=self.name)

    def status(self) -> TaskStatus:
        return TaskStatus(self.name, self._state, self._restarts, self._last_error, self._since)

    @property
    def running(self) -> bool:
        return self._state == "running"

    def _set_state(self, state: TaskState) -> None:
        self._state = state
        self._since = time.time()

    async def _supervise(self) -> None:
        backoff = Backoff(*RESTART_BACKOFF_S)
        while True:
            self._set_state("running")
            started = time.monotonic()
            try:
                await self._work()
                raise RuntimeError("returned unexpectedly")
            except asyncio.CancelledError:
                self._set_state("stopped")
                raise
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._restarts += 1
                metrics.TASK_RESTARTS.labels(self.name).inc()
                if time.monotonic() - started > HEALTHY_RUN_S:
                    backoff.reset()
                delay = backoff.next_delay()
                logger.exception("%s crashed; restarting in %.1f s", self.name, delay)
                self._set_state("restarting")
                await asyncio.sleep(delay)

    async def stop(self, timeout: float) -> None:
        """Cancel and wait at most `timeout` seconds for the work to unwind."""
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            logger.error("%s did not stop within %.0f s", self.name, timeout)
        self._set_state("stopped")

"""CPU priorities of the service's processes: the API's requests come before ingest work.

On a machine that the service shares with the broker and the database (the bench's two cores,
a small host), ingest saturates the CPU and the API's requests queue behind everything else's
time slices. Workers therefore run at SCHED_IDLE (`worker_priority`), and the API process may run
at the lowest real-time priority (`api_priority: realtime`): a request then preempts any
ordinary process at once. The API is one event-loop thread, so it can hold one core at most,
and Linux keeps 5 % of every second for ordinary processes even then (`sched_rt_runtime_us`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from pipeline.core.settings import ApiPriority, WorkerPriority

logger = logging.getLogger(__name__)


def lower_priority(priority: WorkerPriority) -> None:
    """Give the API process's requests precedence over this worker's CPU use."""
    if priority == "idle" and hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif priority in ("idle", "low"):  # no SCHED_IDLE outside Linux: the lowest nice instead
        os.nice(19 if priority == "idle" else 10)


def raise_priority(priority: ApiPriority) -> Callable[[], None]:
    """Put the calling thread (the API's event loop) at `priority`; returns what undoes it.

    Real-time needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 1 (compose's
    `ulimits: rtprio`); without them this logs a warning and the thread stays as it was.
    Children and new threads start at the normal policy (SCHED_RESET_ON_FORK): workers and
    helper threads never inherit it.
    """
    if priority == "normal" or not hasattr(os, "sched_setscheduler"):
        return _nothing
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(1))
    except OSError as exc:
        logger.warning(
            "api_priority realtime not permitted (%s); the API runs at normal priority. "
            "Allow it with CAP_SYS_NICE or `ulimit -r 1`, or set PIPELINE_API_PRIORITY=normal",
            exc.strerror or exc,
        )
        return _nothing
    logger.info("API event loop at real-time priority (SCHED_RR 1)")

    def restore() -> None:
        os.sched_setscheduler(0, *before)

    return restore


def _nothing() -> None:
    return None

"""CPU priorities of the service's processes: the source first, the API second, the sink last.

The source is the one stage that cannot wait: the exchange disconnects a reader that does not
answer its pings or falls behind its stream, and what it pushed meanwhile must be backfilled
over REST, within limits. The sink can lag: Kafka holds what is not stored yet, and it catches
up once the CPU is free. So the producer worker (source + producer) runs at normal priority
(`producer_priority`), as the API does, and the consumer worker below both
(`consumer_priority`, nice 10 by default): under a saturated CPU, an HTTP flood and the
source share it, and the sink takes what is left.

Every shipped default needs no privilege (a process may always lower its own priority).
`api_priority: realtime` is an opt-in for a machine where the API's latency matters more than
ingest: the API's event loop then preempts everything else, the source and the broker
included, which is why it is not the default.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from pipeline.core.settings import ApiPriority, WorkerPriority

logger = logging.getLogger(__name__)

# nice increments of the lowered priorities where SCHED_IDLE is not available.
LOW_NICE = 10
IDLE_NICE = 19


def lower_priority(priority: WorkerPriority) -> None:
    """Put this worker process at `priority` (normal leaves it as started)."""
    if priority == "idle" and hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif priority in ("idle", "low"):  # no SCHED_IDLE outside Linux: the lowest nice instead
        os.nice(IDLE_NICE if priority == "idle" else LOW_NICE)


def raise_priority(priority: ApiPriority) -> Callable[[], None]:
    """Put the calling thread (the API's event loop) at `priority`; returns what undoes it.

    Real-time needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 1 (`ulimit -r 1`, or
    compose's `ulimits: rtprio: 1`); without them this logs a warning and the thread stays as
    it was. Children and new threads start at the normal policy (SCHED_RESET_ON_FORK): workers
    and helper threads never inherit it.
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

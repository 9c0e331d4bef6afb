"""`CpuMeter`: CPU used per component during a phase, in cores (CPU seconds ÷ wall seconds).

On a shared 2-core machine this says where the time went: the service, the Kafka broker,
PostgreSQL (postmaster and backends), the bench itself (the simulator and the probes) and
everything else on the machine (other users' work included).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import psutil


def _cpu_seconds(pid: int, children: bool) -> float:
    """User + system CPU seconds of a process; with `children`, of its whole tree (live
    children, and the exited ones it has reaped)."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = float(times.user + times.system)
        if not children:
            return total
        total += float(times.children_user + times.children_system)
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += float(child_times.user + child_times.system)
        return total
    except psutil.Error:
        return 0.0


def _machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(sum(times) - idle)


@dataclass
class CpuMeter:
    """Processes to watch: name → (pid, include its children)."""

    processes: dict[str, tuple[int, bool]]
    _started: float = 0.0
    _before: dict[str, float] = field(default_factory=dict)
    _machine_before: float = 0.0

    def start(self) -> None:
        self._before = self._sample()
        self._machine_before = _machine_busy_seconds()
        self._started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """Cores used per component since `start()`, plus `machine` and `other` (the rest)."""
        wall = max(time.perf_counter() - self._started, 1e-9)
        after = self._sample()
        cores = {
            name: round((after[name] - self._before.get(name, 0.0)) / wall, 2) for name in after
        }
        machine = round((_machine_busy_seconds() - self._machine_before) / wall, 2)
        cores["machine"] = machine
        cores["other"] = round(
            max(machine - sum(v for k, v in cores.items() if k != "machine"), 0), 2
        )
        cores["wall_s"] = round(wall, 2)
        return cores

    def _sample(self) -> dict[str, float]:
        return {
            name: _cpu_seconds(pid, children) for name, (pid, children) in self.processes.items()
        }

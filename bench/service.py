"""`ServiceProcess`: the service under test, `uvicorn api.main:app` in its own process.

Its environment points it at the run's stack and the simulator; its peak RSS (with children) is
sampled every 100 ms by `RssSampler`. With `profile_dir` set it runs under pyinstrument instead
(`python -m bench.profiled`): `profile_start()`/`profile_stop(label)` bracket a window of
interest, whose report lands in `profile_dir/profile-<label>.txt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil

from devtools.stack import free_port
from pipeline.core.settings import PROJECT_ROOT

RSS_INTERVAL_S = 0.1
STOP_TIMEOUT_S = 30.0


class RssSampler:
    """Peak resident memory of a process and its children, sampled on a thread."""

    def __init__(self, pid: int, interval_s: float = RSS_INTERVAL_S) -> None:
        self.peak_bytes = 0
        self.samples = 0
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self._process.memory_info().rss
                for child in self._process.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += child.memory_info().rss
            except psutil.Error:
                return  # the process is gone
            self.peak_bytes = max(self.peak_bytes, rss)
            self.samples += 1
            self._stop.wait(self._interval_s)


class ServiceProcess:
    """One instance of the service; `start()` returns once GET /health answers."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log_path: Path,
        profile_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.profile_dir = profile_dir
        self._profile_out = profile_dir / f".profile-{name}.txt" if profile_dir else None
        self._env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self._process: asyncio.subprocess.Process | None = None
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=10.0)
        self.rss: RssSampler | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def realtime(self) -> bool:
        """Whether the API process runs at a real-time priority (`api_priority: realtime`)."""
        if not hasattr(os, "sched_getscheduler"):
            return False  # no real-time scheduling outside Linux
        policy = os.sched_getscheduler(self.pid) & ~os.SCHED_RESET_ON_FORK
        return policy in (os.SCHED_RR, os.SCHED_FIFO)

    async def start(self, timeout: float) -> None:
        if self._profile_out is not None:
            self._env["BENCH_PROFILE_OUT"] = str(self._profile_out)
            module = ["-m", "bench.profiled"]
        else:
            module = ["-m", "uvicorn", "api.main:app", "--no-access-log"]
        command = [sys.executable, *module, "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *command,
                cwd=PROJECT_ROOT,
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.rss = RssSampler(self._process.pid)
        self.rss.start()
        deadline = time.monotonic() + timeout
        while True:
            if self._process.returncode is not None:
                raise RuntimeError(
                    f"service {self.name} exited with code {self._process.returncode} "
                    f"during start; see {self.log_path}"
                )
            with contextlib.suppress(httpx.TransportError):
                if (await self._client.get("/health")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {self.name} did not answer /health in {timeout:.0f} s")
            await asyncio.sleep(0.1)

    async def status(self) -> dict[str, Any]:
        """GET /pipeline/status as plain data."""
        response = await self._client.get("/pipeline/status")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def metrics_text(self) -> str:
        response = await self._client.get("/metrics")
        response.raise_for_status()
        return response.text

    async def wait_assigned(self, partitions: int, timeout: float) -> float:
        """Wait until the consumer holds `partitions` partitions; return that moment (perf_counter)."""
        deadline = time.monotonic() + timeout
        while True:
            consumer = (await self.status()).get("consumer") or {}
            if len(consumer.get("assigned", [])) >= partitions:
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {self.name}: consumer not assigned in {timeout:.0f} s")
            await asyncio.sleep(0.02)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until GET /ready answers 200 (Kafka, PostgreSQL and the roles' tasks are up)."""
        deadline = time.monotonic() + timeout
        while (await self._client.get("/ready")).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {self.name}: not ready in {timeout:.0f} s")
            await asyncio.sleep(0.1)

    def profile_start(self) -> None:
        if self._profile_out is not None:
            self._profile_out.unlink(missing_ok=True)
            os.kill(self.pid, signal.SIGUSR1)

    async def profile_stop(self, label: str, timeout: float = 60.0) -> Path | None:
        """Stop the profiler; return the text report once written (None when not profiling)."""
        out = self._profile_out
        if out is None or self.profile_dir is None:
            return None
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not out.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no profile written to {out}")
            await asyncio.sleep(0.2)
        saved = self.profile_dir / f"profile-{label}.txt"
        out.replace(saved)
        return saved

    async def stop(self) -> int | None:
        """SIGTERM (graceful: drain, commit, close), SIGKILL after a timeout; the exit code."""
        await self._client.aclose()
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self.rss is not None:
            self.rss.stop()
        return process.returncode

    @property
    def rss_mb_peak(self) -> float:
        return round(self.rss.peak_bytes / 2**20, 1) if self.rss else 0.0

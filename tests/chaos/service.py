"""ServiceProcess: the service as users run it — `python -m uvicorn api.main:app` in a child
process — that a scenario can SIGKILL, SIGTERM and start again with the very same command."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import psutil

from devtools.stack import free_port
from pipeline.core.settings import PROJECT_ROOT

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 8.0


class ServiceDied(AssertionError):
    """The process exited while the scenario expected it to run."""


class ServiceProcess:
    """One instance of the service on its own port; its output goes to `log_file`.

    `start()` after `kill()`/`terminate()` runs the same command on the same port: a restart
    after a crash needs no manual step.
    """

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.port = free_port()
        self.log_file = log_dir / f"{name}.log"
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "api.main:app",
            "--host", LOOPBACK, "--port", str(self.port), "--no-access-log",
        ]  # fmt: skip

    @property
    def pid(self) -> int | None:
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def spawn(self) -> None:
        """Start the process (returns at once; `wait_healthy()` waits for it to serve)."""
        if self.running:
            raise RuntimeError(f"{self.name} already runs (pid {self.pid})")
        self.starts += 1
        with self.log_file.open("ab") as out:
            out.write(
                f"\n===== {self.name} start #{self.starts} at {time.time():.3f} =====\n".encode()
            )
            out.flush()
            self._proc = subprocess.Popen(
                self.command,
                cwd=PROJECT_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def start(self, timeout: float = START_TIMEOUT_S) -> float:
        """Spawn and wait until /health answers; the seconds that took."""
        started = time.monotonic()
        self.spawn()
        await self.wait_healthy(timeout)
        return time.monotonic() - started

    async def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                if (await self.get("/health", timeout=1.0)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not answer /health within {timeout:.0f} s")
            await asyncio.sleep(0.1)

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise ServiceDied(f"{self.name} exited with code {self._proc.returncode}")

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would; waits until it is gone."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    async def terminate(self, timeout: float = 60.0) -> tuple[float, int | None]:
        """SIGTERM (what orchestrators send) and wait; (seconds until exit, exit code)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return 0.0, proc.returncode if proc else None
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return time.monotonic() - started, None
        return time.monotonic() - started, code

    def rss(self) -> int:
        """Resident memory of the service with its worker processes, bytes."""
        pid = self.pid
        if pid is None:
            raise ServiceDied(f"{self.name} is not running")
        service = psutil.Process(pid)
        total = 0
        for process in (service, *service.children(recursive=True)):
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    async def get(self, path: str, timeout: float = HTTP_TIMEOUT_S) -> httpx.Response:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.base_url, timeout=HTTP_TIMEOUT_S)
        return await self._http.get(path, timeout=timeout)

    async def json(self, path: str) -> Any:
        response = await self.get(path)
        response.raise_for_status()
        return response.json()

    async def ready(self) -> tuple[int, Any]:
        """GET /ready: (status code, body)."""
        response = await self.get("/ready")
        return response.status_code, response.json()

    async def total_lag(self) -> int | None:
        """GET /consumer/lag's total_lag; None while Kafka does not answer."""
        try:
            response = await self.get("/consumer/lag")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return int(response.json()["total_lag"])

    def tail(self, lines: int = 80) -> str:
        try:
            with self.log_file.open("rb") as fh:
                last = deque(fh, maxlen=lines)
        except FileNotFoundError:
            return f"({self.log_file} does not exist)"
        return b"".join(last).decode("utf-8", errors="replace")

    def log_count(self, needle: bytes) -> int:
        """Lines of the log (all starts) containing `needle`."""
        try:
            with self.log_file.open("rb") as fh:
                return sum(needle in line for line in fh)
        except FileNotFoundError:
            return 0

    async def close(self) -> None:
        self.kill()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

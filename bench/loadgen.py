"""An open-loop HTTP load generator in its own process, and `LoadGenerator` that drives it.

`python -m bench.loadgen --port P --path /prices/BTCUSDT --rate 1000 --duration 8` opens
keep-alive connections (raw HTTP/1.1 on asyncio streams, uvloop when available), warms up,
prints `ready`, waits for a line on stdin, then offers `rate` GETs per second for `duration`
seconds whatever the answers' pace, and prints one JSON line of results. Latency is counted from
each request's *scheduled* time (no coordinated omission): a server that falls behind shows it.

The client runs at real-time priority when the OS lets it (root or CAP_SYS_NICE): on the bench's
shared cores its own wake-up delays would otherwise count as the server's latency, which a
client on another machine would not add. `realtime` in the results says whether it did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.stats import summary

DRAIN_TIMEOUT_S = 30.0
WARMUP_REQUESTS = 200


class _Connection:
    def __init__(self, host: str, port: int, request: bytes) -> None:
        self._host, self._port, self._request = host, port, request
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self) -> int:
        """One request on the kept-alive connection (reconnecting if needed); the status."""
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        try:
            self._writer.write(self._request)
            head = await self._reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await self._reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        return status

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class _Results:
    latency_ms: list[float] = field(default_factory=list)  # from the scheduled send time
    service_ms: list[float] = field(default_factory=list)  # from the actual send time
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    last_done: float = 0.0


async def _worker(connection: _Connection, queue: asyncio.Queue[float], results: _Results) -> None:
    while True:
        scheduled = await queue.get()
        sent = time.perf_counter()
        try:
            status = await connection.get()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            results.errors += 1
        else:
            done = time.perf_counter()
            results.statuses[status] += 1
            results.latency_ms.append((done - scheduled) * 1000)
            results.service_ms.append((done - sent) * 1000)
            results.last_done = done
        finally:
            queue.task_done()


async def _offer(queue: asyncio.Queue[float], rate: float, duration: float) -> float:
    """Schedule rate * duration requests at exact intervals; return the start time."""
    total = int(rate * duration)
    start = time.perf_counter()
    issued = 0
    while issued < total:
        due = min(int((time.perf_counter() - start) * rate) + 1, total)
        while issued < due:
            queue.put_nowait(start + issued / rate)
            issued += 1
        await asyncio.sleep(max(start + issued / rate - time.perf_counter(), 0.0))
    return start


def _try_realtime() -> bool:
    """SCHED_FIFO at the lowest real-time priority, if permitted; whether it took."""
    if not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:  # not permitted, or no real-time budget in this cgroup
        return False
    return True


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()
    connections = [_Connection(args.host, args.port, request) for _ in range(args.connections)]
    for i in range(WARMUP_REQUESTS):
        await connections[i % len(connections)].get()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    queue: asyncio.Queue[float] = asyncio.Queue()
    results = _Results()
    workers = [asyncio.create_task(_worker(c, queue, results)) for c in connections]
    start = await _offer(queue, args.rate, args.duration)
    drained = True
    try:
        await asyncio.wait_for(queue.join(), DRAIN_TIMEOUT_S)
    except TimeoutError:
        drained = False
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    for connection in connections:
        connection.close()
    completed = len(results.latency_ms)
    elapsed = max(results.last_done - start, 1e-9)
    return {
        "offered_rps": args.rate,
        "duration_s": args.duration,
        "requests": int(args.rate * args.duration),
        "completed": completed,
        "errors": results.errors,
        "unfinished": int(args.rate * args.duration) - completed - results.errors,
        "drained": drained,
        "achieved_rps": round(completed / elapsed, 1),
        "statuses": {str(code): count for code, count in sorted(results.statuses.items())},
        "latency_ms": summary(results.latency_ms),
        "service_ms": summary(results.service_ms),
        "realtime": args.realtime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second offered")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds")
    args = parser.parse_args()
    args.realtime = _try_realtime()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(_main(args))
    else:
        result = uvloop.run(_main(args))
    print(json.dumps(result), flush=True)


class LoadGenerator:
    """The bench's handle on one load-generator process: `start()` warms up, `run()` measures."""

    def __init__(
        self, port: int, path: str, rate: float, connections: int, duration: float
    ) -> None:
        self._args = [
            "--port", str(port), "--path", path, "--rate", str(rate),
            "--connections", str(connections), "--duration", str(duration),
        ]  # fmt: skip
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 60.0) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.loadgen", *self._args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
        if line.strip() != b"ready":
            raise RuntimeError(f"load generator did not start: {line!r}")

    async def run(self, timeout: float) -> dict[str, Any]:
        """Start the measurement window; its results once it is over."""
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        process.stdin.close()
        line = await asyncio.wait_for(process.stdout.readline(), timeout)
        await process.wait()
        result: dict[str, Any] = json.loads(line)
        return result

    async def close(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


if __name__ == "__main__":
    main()

"""Many push-feed clients in a process of their own, and `StreamClients` that drives it.

`python -m bench.streamclients --port P --clients 1000 --symbols A,B,C [--each one|all]
[--conflate 100ms] [--bootstrap H:P --topic T]` opens the SSE connections (raw HTTP/1.1 on
asyncio streams, uvloop when available), waits until every one has its `ready` event, prints
`ready`, then obeys lines on stdin: `start` opens a measurement window, `stop` closes it and
prints one JSON line of its figures, `quit` hangs up and exits.

Per window: events received (by kind), per client and in total; `close` events by reason and
connections ended; and the latency of trades, sampled on a few clients: the wall time an event
arrived minus the trade's `trade_time`. With `--bootstrap` the process also reads the topic
directly (no group, from its end) and measures the same latency there: the baseline of what
the push feed adds to Kafka. The bench runs that reader in a process of its own (`--clients 0`),
so that parsing a thousand streams does not delay it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.stats import summary

LATENCY_SAMPLED_CLIENTS = 20
_TRADE_TIME = re.compile(rb'"trade_time":(\d+)')
_REASON = re.compile(rb'"reason":"([a-z_]+)"')


@dataclass
class _Window:
    events: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    latency_ms: list[float] = field(default_factory=list)
    kafka_ms: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


class _Clients:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.window: _Window | None = None
        self.ready = 0
        self.ended = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.all_ready = asyncio.Event()

    def path(self, index: int) -> str:
        symbols = self.args.symbols.split(",")
        wanted = symbols if self.args.each == "all" else [symbols[index % len(symbols)]]
        query = f"symbols={','.join(wanted)}"
        if self.args.conflate:
            query += f"&conflate={self.args.conflate}"
        return f"/stream?{query}"

    async def run_one(self, index: int) -> None:
        sampled = index < LATENCY_SAMPLED_CLIENTS
        reader, writer = await asyncio.open_connection(self.args.host, self.args.port)
        try:
            writer.write(
                f"GET {self.path(index)} HTTP/1.1\r\nHost: {self.args.host}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(f"stream refused: {head[:200]!r}")
            leftover = b""
            counted = False
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                now_ms = time.time() * 1000
                parts = (leftover + chunk).split(b"\n\n")
                leftover = parts.pop()
                window = self.window
                for part in parts:
                    # Chunked transfer encoding puts its size lines between parts: look inside.
                    kind_at = part.find(b"event: ")
                    if kind_at < 0:
                        continue
                    kind = part[kind_at + 7 : part.find(b"\n", kind_at)].decode()
                    if kind == "ready" and not counted:
                        counted = True
                        self.ready += 1
                        if self.ready == self.args.clients:
                            self.all_ready.set()
                    if window is None:
                        continue
                    window.events[kind] += 1
                    if kind == "close":
                        reason = _REASON.search(part)
                        window.closes[reason[1].decode() if reason else "?"] += 1
                    elif sampled and kind in ("trade", "backfill"):
                        match = _TRADE_TIME.search(part)
                        if match:
                            window.latency_ms.append(now_ms - int(match[1]))
        finally:
            self.ended += 1
            writer.close()

    async def read_kafka(self) -> None:
        """The same trades read straight from the topic: the baseline of the latency."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            self.args.topic,
            bootstrap_servers=self.args.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                now_ms = time.time() * 1000
                window = self.window
                if window is None:
                    continue
                for records in batches.values():
                    for record in records:
                        match = _TRADE_TIME.search(record.value or b"")
                        if match:
                            window.kafka_ms.append(now_ms - int(match[1]))
        finally:
            await consumer.stop()

    def report(self, window: _Window) -> dict[str, Any]:
        seconds = time.perf_counter() - window.started
        trades = window.events["trade"] + window.events["backfill"]
        latency = summary(window.latency_ms)
        kafka = summary(window.kafka_ms)
        added = (
            round(latency["p99"] - kafka["p99"], 1) if "p99" in latency and "p99" in kafka else None
        )
        return {
            "clients": self.args.clients,
            "seconds": round(seconds, 3),
            "events": dict(window.events),
            "events_per_s": round(trades / seconds) if seconds > 0 else None,
            "closes": dict(window.closes),
            "connections_ended": self.ended,
            "latency_ms": latency,
            "kafka_direct_ms": kafka,
            "added_p99_ms": added,
        }


async def _main(args: argparse.Namespace) -> None:
    clients = _Clients(args)
    kafka = asyncio.create_task(clients.read_kafka()) if args.bootstrap else None
    for index in range(args.clients):
        clients.tasks.append(asyncio.create_task(clients.run_one(index)))
        if index % 50 == 49:
            await asyncio.sleep(0.05)  # a ramp, not a thundering herd of connects
    if args.clients == 0:
        clients.all_ready.set()
    try:
        await asyncio.wait_for(clients.all_ready.wait(), args.ready_timeout)
    except TimeoutError:
        failed = [t for t in clients.tasks if t.done() and t.exception() is not None]
        reason = repr(failed[0].exception()) if failed else "timed out"
        print(json.dumps({"error": f"{clients.ready} of {args.clients} ready: {reason}"}))
        return
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "start":
            clients.window = _Window()
        elif line == "stop" and clients.window is not None:
            window, clients.window = clients.window, None
            print(json.dumps(clients.report(window)), flush=True)
        elif line in ("quit", ""):
            break
    for task in clients.tasks:
        task.cancel()
    if kafka is not None:
        kafka.cancel()
    await asyncio.gather(*clients.tasks, *([kafka] if kafka else []), return_exceptions=True)


def _allow_open_files(needed: int) -> None:
    """A socket per client: raise the soft limit on open files towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streamclients")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--symbols", required=True, help="comma-separated")
    parser.add_argument("--each", choices=("one", "all"), default="one", help="symbols per client")
    parser.add_argument("--conflate", default="", help="e.g. 100ms; empty: every trade")
    parser.add_argument("--bootstrap", default="", help="Kafka, for the direct-read baseline")
    parser.add_argument("--topic", default="")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args = parser.parse_args()
    _allow_open_files(args.clients + 256)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))


class StreamClients:
    """The bench's handle on one stream-clients process."""

    def __init__(self, port: int, clients: int, symbols: list[str], **options: str) -> None:
        self._args = ["--port", str(port), "--clients", str(clients)]
        self._args += ["--symbols", ",".join(symbols)]
        for name, value in options.items():
            self._args += [f"--{name.replace('_', '-')}", value]
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self, timeout: float) -> None:
        """Until every client has its `ready` event."""
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.streamclients", *self._args,
            "--ready-timeout", str(timeout),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout + 10)
        if line.strip() != b"ready":
            raise RuntimeError(f"stream clients did not start: {line.decode(errors='replace')}")

    async def _say(self, command: str) -> None:
        process = self._process
        assert process is not None and process.stdin is not None
        process.stdin.write(command.encode() + b"\n")
        await process.stdin.drain()

    async def begin(self) -> None:
        await self._say("start")

    async def end(self, timeout: float = 60.0) -> dict[str, Any]:
        await self._say("stop")
        assert self._process is not None and self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
        result: dict[str, Any] = json.loads(line)
        return result

    async def close(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ConnectionError, AssertionError):
            await self._say("quit")
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


if __name__ == "__main__":
    main()

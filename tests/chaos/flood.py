"""An HTTP flood in its own process: closed-loop clients reading the API as fast as it answers.

`python -m tests.chaos.flood --base-url http://127.0.0.1:8000 --clients 20 --duration 10
--path /metrics --path /prices ...` runs `clients` concurrent clients, each sending its next GET
(cycling through the paths) as soon as the last one answered, for `duration` seconds, and prints
one JSON line: requests, answers per status, transport errors, latency percentiles (ms).

Its own process, so that the clients' CPU does not slow the test process's event loop, where
the exchange simulator runs: the flood competes with the service for the machine, not with the
exchange for its loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

REQUEST_TIMEOUT_S = 30.0


@dataclass
class Answers:
    latencies_ms: list[float] = field(default_factory=list)
    by_path_ms: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)

    def summary(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        return {
            "requests": len(ordered) + sum(self.errors.values()),
            "per_s": round(len(ordered) / seconds, 1) if seconds > 0 else 0.0,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "server_errors": self.server_errors[:5],
            "p50_ms": percentile(ordered, 0.50),
            "p99_ms": percentile(ordered, 0.99),
            "max_ms": round(ordered[-1], 1) if ordered else None,
            "p99_ms_by_path": {
                path: percentile(sorted(latencies), 0.99)
                for path, latencies in self.by_path_ms.items()
            },
        }


def percentile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)], 1)


async def _client(
    http: httpx.AsyncClient, paths: Sequence[str], offset: int, ends: float, answers: Answers
) -> None:
    turn = offset
    while time.monotonic() < ends:
        path = paths[turn % len(paths)]
        turn += 1
        started = time.perf_counter()
        try:
            response = await http.get(path)
        except httpx.HTTPError as exc:
            answers.errors[type(exc).__name__] += 1
            continue
        latency_ms = (time.perf_counter() - started) * 1000
        answers.latencies_ms.append(latency_ms)
        answers.by_path_ms.setdefault(path, []).append(latency_ms)
        answers.statuses[response.status_code] += 1
        if response.status_code >= 500:
            answers.server_errors.append(f"{path} {response.status_code} {response.text[:200]}")


async def flood(
    base_url: str, paths: Sequence[str], clients: int, duration: float
) -> dict[str, Any]:
    answers = Answers()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as http:
        started = time.monotonic()
        ends = started + duration
        await asyncio.gather(*(_client(http, paths, i, ends, answers) for i in range(clients)))
        return answers.summary(time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.flood")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--path", action="append", required=True, dest="paths")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    args = parser.parse_args()
    result = asyncio.run(flood(args.base_url, args.paths, args.clients, args.duration))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""Helpers for the push-feed tests: the service served by uvicorn in this process, and SSE and
WebSocket readers that keep every event they receive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from api.main import create_app
from devtools.stack import free_port
from pipeline.core.settings import Settings


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[str]:
    """The app (lifespan and all) behind a real uvicorn on a free port; its base URL."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(60):
            while not server.started:
                if task.done():
                    task.result()
                    raise AssertionError("uvicorn stopped during start")
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Event:
    kind: str
    id: str | None
    data: dict[str, Any]


@dataclass
class Received:
    """Every event of one or more connections, in order."""

    events: list[Event] = field(default_factory=list)

    def trades(self, symbol: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if e.kind in ("trade", "backfill") and (symbol is None or e.data["symbol"] == symbol)
        ]

    def ids(self, symbol: str) -> list[int]:
        return [e.data["trade_id"] for e in self.trades(symbol)]

    @property
    def last_id(self) -> str | None:
        """The Last-Event-ID an EventSource would send now."""
        for event in reversed(self.events):
            if event.id is not None:
                return event.id
        return None

    def kinds(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def __str__(self) -> str:
        """A summary for failure messages: events per kind, ids per symbol, the last events."""
        kinds: dict[str, int] = {}
        for event in self.events:
            kinds[event.kind] = kinds.get(event.kind, 0) + 1
        symbols = sorted({e.data["symbol"] for e in self.trades()})
        spans = {s: (min(self.ids(s)), max(self.ids(s)), len(self.ids(s))) for s in symbols}
        last = [(e.kind, e.id) for e in self.events[-3:]]
        return f"received {kinds}, (first, last, count) per symbol {spans}, last {last}"


class SseStream:
    """GET /stream, read in a task of its own into `received`."""

    def __init__(
        self,
        url: str,
        params: dict[str, str],
        headers: dict[str, str] | None = None,
        received: Received | None = None,
        until: Callable[[Event], bool] | None = None,
    ) -> None:
        """`until`: hang up right after the first event it is true for."""
        self.received = received if received is not None else Received()
        self._until = until
        self.status: int | None = None
        self.body = b""
        self._url = url
        self._params = params
        self._headers = headers or {}
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()

    async def __aenter__(self) -> SseStream:
        self._task = asyncio.create_task(self._read())
        async with asyncio.timeout(30):
            await self._opened.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def ended(self) -> bool:
        return self._task is not None and self._task.done()

    async def _read(self) -> None:
        async with (
            httpx.AsyncClient(base_url=self._url, timeout=httpx.Timeout(10, read=None)) as http,
            http.stream("GET", "/stream", params=self._params, headers=self._headers) as response,
        ):
            self.status = response.status_code
            if response.status_code != 200:
                self.body = await response.aread()
                self._opened.set()
                return
            self._opened.set()
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                    continue
                if "data" in fields:
                    event = Event(
                        fields.get("event", "message"),
                        fields.get("id"),
                        orjson.loads(fields["data"]),
                    )
                    self.received.events.append(event)
                    if self._until is not None and self._until(event):
                        return
                fields = {}

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self.received):
                    if self.ended:
                        raise AssertionError(f"stream ended before {what}: {self.received}")
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout:.0f} s; {self.received}") from None


class WsStream:
    """WS /ws, read in a task of its own into `received`; `close_code` once the server closed."""

    def __init__(self, url: str, query: str, headers: dict[str, str] | None = None) -> None:
        self.received = Received()
        self.close_code: int | None = None
        self.close_reason = ""
        self._uri = url.replace("http://", "ws://") + "/ws?" + query
        self._headers = headers or {}
        self._task: asyncio.Task[None] | None = None
        self._socket: ClientConnection | None = None

    async def __aenter__(self) -> WsStream:
        self._socket = await connect(self._uri, additional_headers=self._headers)
        self._task = asyncio.create_task(self._read(self._socket))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _read(self, socket: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            async for message in socket:
                body = orjson.loads(message)
                self.received.events.append(
                    Event(body["event"], body.get("id"), body.get("data") or body)
                )
        self.close_code = socket.close_code
        self.close_reason = socket.close_reason or ""

    async def closed(self, timeout: float = 10) -> int | None:
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=timeout)
        return self.close_code

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self.received):
                    if self._task is not None and self._task.done():
                        raise AssertionError(f"socket closed ({self.close_code}) before {what}")
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout:.0f} s; {self.received}") from None

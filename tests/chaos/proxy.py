"""TcpProxy: a loopback TCP port that forwards to a TCP or unix-socket server, and can fail.

Put it between the service and a dependency (DATABASE_URL pointing at the proxy's port) to
inject network faults without touching the server: `cut()` resets every open connection and
refuses new ones (the listening socket is closed, so connects get ECONNREFUSED), `restore()`
listens again on the same port. What clients send goes through `client_to_server`, raw by
default; a test may pass its own to hold or inspect requests. It runs in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024

# Forwards one direction of a link until the reader ends.
Pump = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`: ("host", port) over TCP, or a unix socket path."""

    def __init__(
        self, target: tuple[str, int] | Path, client_to_server: Pump | None = None
    ) -> None:
        self.target = target
        self._client_to_server = client_to_server or _pump
        self.port = 0
        self.accepted = 0  # connections forwarded since start
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    @property
    def is_cut(self) -> bool:
        return self._server is None

    async def start(self) -> None:
        await self._listen()

    async def stop(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones (RST, as a dead link looks)."""
        if self._server is not None:
            self.cuts += 1
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()
        for client, upstream in list(self._links):
            _reset(client)
            _reset(upstream)
        self._links.clear()

    async def restore(self) -> None:
        """Accept connections again, on the same port."""
        if self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if isinstance(self.target, Path):
                up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        if self._server is None:  # cut while connecting
            _reset(writer)
            _reset(up_writer)
            return
        self.accepted += 1
        link = (writer, up_writer)
        self._links.add(link)
        pumps = [
            self._spawn(self._client_to_server(reader, up_writer)),
            self._spawn(_pump(up_reader, writer)),
        ]
        # When either direction ends, the other one goes too (a half-open link is a dead link).
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        self._links.discard(link)
        for end in link:
            end.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_INET:
        # SO_LINGER 0: close() sends RST instead of FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()

"""The two ways a stream reaches its client: a text/event-stream response, or a WebSocket.

Either one writes what the client's buffer holds (api.stream.client) until the stream is
closed, and watches the other direction for the client going away. Both leave the hub when
they end, whatever ended them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import WebSocket, WebSocketDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.stream.client import CloseReason, StreamClient
from api.stream.hub import StreamHub
from api.stream.positions import SymbolPosition

logger = logging.getLogger(__name__)

# WebSocket close reasons are at most 123 bytes; ours are short words.
_MAX_CLOSE_REASON = 123


class EventStreamResponse(Response):
    """Server-Sent Events: the stream's chunks as they come, until it is closed."""

    media_type = "text/event-stream"

    def __init__(
        self,
        hub: StreamHub,
        client: StreamClient,
        resume: dict[str, SymbolPosition] | None,
    ) -> None:
        self.status_code = 200
        self.background = None
        # Proxies must pass events on at once, and nobody may cache them.
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._hub = hub
        self._client = client
        self._resume = resume

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client, hub = self._client, self._hub
        client.task = asyncio.current_task()
        watcher = asyncio.create_task(_until_disconnect(receive, client))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            hub.begin(client, self._resume)
            while (chunks := await client.next_chunks()) is not None:
                if chunks:
                    body = b"".join(chunk for chunk in chunks if isinstance(chunk, bytes))
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not _aborted(client):
                raise
            # The client stopped reading and was closed; its connection is given up (uvicorn
            # then reports the response as not completed).
            logger.info("event stream abandoned: the client did not read (%s)", client.closed)
        finally:
            watcher.cancel()
            hub.leave(client)


async def _until_disconnect(receive: Receive, client: StreamClient) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    client.close(CloseReason.GONE)


async def serve_websocket(
    websocket: WebSocket,
    hub: StreamHub,
    client: StreamClient,
    resume: dict[str, SymbolPosition] | None,
) -> None:
    """Run an accepted WebSocket's stream until it is closed (by either side)."""
    client.task = asyncio.current_task()
    reader = asyncio.create_task(_until_closed(websocket, client))
    try:
        hub.begin(client, resume)
        while (chunks := await client.next_chunks()) is not None:
            for chunk in chunks:
                await websocket.send_text(chunk if isinstance(chunk, str) else chunk.decode())
        if client.closed is not CloseReason.GONE:
            # The client may be gone by now: Starlette refuses a close after the disconnect.
            with contextlib.suppress(RuntimeError):
                await websocket.close(client.close_code, (client.closed or "")[:_MAX_CLOSE_REASON])
    except WebSocketDisconnect:
        pass
    except asyncio.CancelledError:
        if not _aborted(client):
            raise
        logger.info("websocket stream abandoned: the client did not read (%s)", client.closed)
    finally:
        reader.cancel()
        hub.leave(client)


async def _until_closed(websocket: WebSocket, client: StreamClient) -> None:
    try:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass  # what a client sends is ignored
    except (WebSocketDisconnect, RuntimeError):
        pass
    client.close(CloseReason.GONE)


def _aborted(client: StreamClient) -> bool:
    """Whether the cancellation being handled is the hub's abort() alone."""
    task = asyncio.current_task()
    return client.aborted and task is not None and task.uncancel() == 0

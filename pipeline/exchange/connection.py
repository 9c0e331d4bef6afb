"""StreamConnection: one combined-stream WebSocket to Binance, kept alive for as long as it runs.

It owns a set of streams (`btcusdt@trade`, ...) and keeps the server's subscriptions equal to it:
the streams go into the URL at connect time, later changes become paced SUBSCRIBE/UNSUBSCRIBE
messages (Binance closes connections sending more than 5 messages/s, pongs included). Around
that: reconnect with jittered exponential backoff, a watchdog for silent connections, and a
proactive rotation before Binance's 24 h cut (new socket first, then the old one closes).

Frames go to a handler as raw bytes; the handler returns a control reply ({"result":..,"id":..})
when the frame was one, so replies to our requests can be checked here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, Literal

import aiohttp
import orjson
from aiohttp.http_websocket import WSMessageTextBytes

from pipeline.core import metrics
from pipeline.core.retry import Backoff
from pipeline.core.settings import BinanceSettings
from pipeline.core.status import ConnectionState, ConnectionStatus
from pipeline.exchange.pacing import AttemptWindow, Pacer

logger = logging.getLogger(__name__)

FrameHandler = Callable[[bytes], Awaitable[dict[str, Any] | None]]

STREAM_SUFFIX = "@trade"
# Keep the connect URL well under common proxy/server limits; the rest is subscribed by message.
MAX_URL_STREAM_CHARS = 4_000
# Streams per SUBSCRIBE/UNSUBSCRIBE message.
MAX_PARAMS_PER_MESSAGE = 200
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0


def stream_name(symbol: str) -> str:
    return f"{symbol.lower()}{STREAM_SUFFIX}"


def symbol_of(stream: str) -> str:
    return stream.removesuffix(STREAM_SUFFIX).upper()


def url_streams(streams: Iterable[str], max_chars: int = MAX_URL_STREAM_CHARS) -> list[str]:
    """The streams (sorted) that fit into the connect URL; the others are subscribed later."""
    chosen: list[str] = []
    used = 0
    for stream in sorted(streams):
        used += len(stream) + 1
        if used > max_chars and chosen:
            break
        chosen.append(stream)
    return chosen


def next_request(
    desired: Collection[str], active: Collection[str], max_params: int = MAX_PARAMS_PER_MESSAGE
) -> tuple[str, list[str]] | None:
    """The next message that brings the server's `active` streams closer to `desired`."""
    removed = sorted(set(active) - set(desired))
    if removed:
        return "UNSUBSCRIBE", removed[:max_params]
    added = sorted(set(desired) - set(active))
    if added:
        return "SUBSCRIBE", added[:max_params]
    return None


class _Reconnect(Exception):
    """The current socket must be replaced (silence, server close)."""


Socket = aiohttp.ClientWebSocketResponse[Literal[False]]
# What the reader gets instead of a frame when the socket is done (closed, failed, too big).
_DATA_FRAMES = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)


class StreamConnection:
    """One WebSocket carrying up to `max_streams_per_connection` streams; `run()` until cancelled."""

    def __init__(
        self,
        name: str,
        settings: BinanceSettings,
        handler: FrameHandler,
        attempts: AttemptWindow,
        streams: Iterable[str] = (),
    ) -> None:
        self.name = name
        self._settings = settings
        self._handler = handler
        self._attempts = attempts
        self._desired: set[str] = set(streams)
        self._active: set[str] = set()  # what the current socket is subscribed to (as we know)
        self._http: aiohttp.ClientSession | None = None
        self._ws: Socket | None = None
        self._changed = asyncio.Event()
        self._pacer = Pacer(settings.max_messages_per_second)
        self._request_id = 0
        self._requests: dict[int, tuple[str, list[str]]] = {}
        self._tick_s = min(1.0, settings.silence_timeout_s / 4)
        self.state: ConnectionState = "connecting"
        self.since = time.time()
        self.url = ""
        self.frames = 0
        self.reconnects = 0

    @property
    def streams(self) -> frozenset[str]:
        return frozenset(self._desired)

    def add(self, streams: Iterable[str]) -> None:
        self._desired.update(streams)
        self._changed.set()

    def remove(self, streams: Iterable[str]) -> None:
        self._desired.difference_update(streams)
        self._changed.set()

    def status(self) -> ConnectionStatus:
        return ConnectionStatus(
            self.name,
            self.state,
            self.since,
            self.url,
            tuple(sorted(self._desired)),
            self.frames,
            self.reconnects,
        )

    async def run(self) -> None:
        """Connect, serve, reconnect; never returns, never raises but CancelledError."""
        sync = asyncio.create_task(self._sync_subscriptions(), name=f"{self.name}-subscriptions")
        backoff = Backoff(self._settings.reconnect_min_s, self._settings.reconnect_max_s)
        # trust_env: HTTP(S)_PROXY / NO_PROXY from the environment, as the REST client's httpx.
        self._http = aiohttp.ClientSession(trust_env=True)
        try:
            while True:
                await self._session(backoff)
                self.reconnects += 1
                metrics.SOURCE_RECONNECTS.inc()
                await self._pause(backoff.next_delay())
        finally:
            self._set_state("closed")
            sync.cancel()
            await asyncio.gather(sync, return_exceptions=True)
            await self._http.close()

    async def _session(self, backoff: Backoff) -> None:
        """One socket's life (several, when rotated), until it fails."""
        self._set_state("connecting")
        try:
            ws = await self._open()
        except Exception as exc:  # every failure to connect means: back off and retry
            logger.warning("connection failed name=%s error=%s", self.name, _describe(exc))
            return
        opened = time.monotonic()
        try:
            await self._serve(ws)
        except (_Reconnect, aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("connection lost name=%s reason=%s", self.name, _describe(exc))
        except Exception:
            logger.exception("connection failed unexpectedly name=%s", self.name)
        if time.monotonic() - opened >= self._settings.healthy_after_s:
            backoff.reset()

    async def _open(self) -> Socket:
        assert self._http is not None, "run() opens the HTTP session"
        await self._attempts.acquire()
        streams = url_streams(self._desired)
        url = f"{self._settings.ws_url}/stream?streams={'/'.join(streams)}"
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            # aiohttp, not websockets: its compiled frame reader costs a fraction of the CPU per
            # frame (docs/perf.md), and the source is the pipeline's busiest process. It reads
            # ahead a bounded amount before it stops reading the socket (backpressure).
            ws = await self._http.ws_connect(
                url,
                # Trade frames are small and we are CPU-bound at high rates: no deflate.
                compress=0,
                max_msg_size=self._settings.max_frame_bytes,
                # Frames stay bytes: the handler parses bytes, and a dead letter keeps them.
                decode_text=False,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
                # No client pings: under backpressure their pongs queue behind unread frames.
                # Binance pings us (answered on reading, autoping); the silence watchdog
                # catches dead connections.
                heartbeat=None,
            )
        self._ws, self._active, self.url = ws, set(streams), url
        self._changed.set()
        metrics.SOURCE_CONNECTED.inc()
        self._set_state("connected")
        return ws

    async def _serve(self, ws: Socket) -> None:
        reader = self._start_reader(ws)
        opened = time.monotonic()
        seen, seen_at = self.frames, opened
        try:
            while True:
                await asyncio.wait({reader}, timeout=self._tick_s)
                if reader.done():
                    reader.result()  # raises what ended it
                    raise _Reconnect("reader stopped")
                now = time.monotonic()
                if self.frames != seen:
                    seen, seen_at = self.frames, now
                elif now - seen_at >= self._settings.silence_timeout_s:
                    raise _Reconnect(f"silent for {now - seen_at:.1f}s")
                if now - opened >= self._settings.connection_max_age_s:
                    # Before Binance's 24 h cut: open the new socket first, then close the old
                    # one, so no trade is missed (a few arrive twice; the sink dedupes).
                    new_ws = await self._replacement(now - opened)
                    if new_ws is None:  # keep the old one, try again later
                        opened += self._settings.reconnect_max_s
                        continue
                    old_ws, old_reader = ws, reader
                    ws, reader, opened = new_ws, self._start_reader(new_ws), time.monotonic()
                    await self._close(old_ws, old_reader)
        finally:
            await self._close(ws, reader)

    async def _replacement(self, age_s: float) -> Socket | None:
        logger.info("rotating connection name=%s age_s=%.0f", self.name, age_s)
        try:
            return await self._open()
        except Exception as exc:
            logger.warning("rotation failed name=%s error=%s", self.name, _describe(exc))
            return None

    def _start_reader(self, ws: Socket) -> asyncio.Task[None]:
        return asyncio.create_task(self._read(ws), name=f"{self.name}-reader")

    async def _read(self, ws: Socket) -> None:
        # The hot path: one await per frame for the socket and one for the handler.
        receive = ws.receive
        handler = self._handler
        while True:
            message = await receive()
            if message.type not in _DATA_FRAMES:
                raise _Reconnect(_describe_end(message, ws))
            self.frames += 1
            reply = await handler(message.data)
            if reply is not None:
                self._on_reply(reply)

    async def _close(self, ws: Socket, reader: asyncio.Task[None]) -> None:
        if self._ws is ws:
            self._ws = None
        metrics.SOURCE_CONNECTED.dec()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        # A close cancelled before the handshake's end drops the connection (aiohttp closes
        # the response on CancelledError), so no socket leaks either way.
        with contextlib.suppress(Exception):  # a broken socket may fail to close; it is gone
            await ws.close()

    async def _sync_subscriptions(self) -> None:
        """Send SUBSCRIBE/UNSUBSCRIBE until the socket's streams equal the desired ones."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._send_changes()
            except Exception:
                # Not fatal: the next change or reconnect (URL streams) brings them in line.
                logger.exception("subscription update failed name=%s", self.name)

    async def _send_changes(self) -> None:
        while self._ws is not None and next_request(self._desired, self._active):
            await self._pacer.wait()
            # Look again after the wait: the streams or even the socket may have changed.
            ws, request = self._ws, next_request(self._desired, self._active)
            if ws is None or request is None or not await self._send(ws, *request):
                return

    async def _send(self, ws: Socket, method: str, streams: list[str]) -> bool:
        self._request_id += 1
        message = {"method": method, "params": streams, "id": self._request_id}
        try:
            await ws.send_str(orjson.dumps(message).decode())
        except (aiohttp.ClientError, ConnectionError):
            return False  # the reconnect subscribes from the URL
        self._requests[self._request_id] = (method, streams)
        if method == "SUBSCRIBE":
            self._active.update(streams)
        else:
            self._active.difference_update(streams)
        logger.info(
            "%s sent name=%s id=%d streams=%d", method, self.name, message["id"], len(streams)
        )
        return True

    def _on_reply(self, reply: dict[str, Any]) -> None:
        request_id = reply.get("id")
        method, streams = self._requests.pop(request_id, ("?", []))  # type: ignore[arg-type]
        # SUBSCRIBE/UNSUBSCRIBE succeed with {"result": null}; anything else is a refusal.
        if reply.get("result", False) is not None:
            logger.error(
                "subscription request refused name=%s id=%s method=%s streams=%s reply=%s",
                self.name,
                request_id,
                method,
                ",".join(streams[:10]),
                reply,
            )

    async def _pause(self, delay: float) -> None:
        self._set_state("backoff")
        logger.info("reconnecting name=%s in_s=%.2f", self.name, delay)
        await asyncio.sleep(delay)

    def _set_state(self, state: ConnectionState) -> None:
        if state != self.state:
            if state != "connecting":
                logger.info("connection state name=%s state=%s", self.name, state)
            self.state = state
            self.since = time.time()


def _describe_end(message: aiohttp.WSMessage | WSMessageTextBytes, ws: Socket) -> str:
    """Why the socket stopped giving frames: the server's close, an error, a too-big frame."""
    if message.type is aiohttp.WSMsgType.ERROR:
        return f"socket error: {_describe(message.data)}"
    code = ws.close_code if ws.close_code is not None else message.data
    reason = f" {message.extra}" if message.extra else ""
    return f"socket closed (code {code}{reason})"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

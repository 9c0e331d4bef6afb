"""Live SUBSCRIBE/UNSUBSCRIBE on one connection: paced, coalesced, replies checked by id."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import orjson
import pytest

from pipeline.core.settings import BinanceSettings
from pipeline.exchange.connection import Socket, StreamConnection
from pipeline.exchange.pacing import AttemptWindow


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[float, dict[str, Any]]] = []

    async def send_str(self, message: str) -> None:
        self.sent.append((time.monotonic(), orjson.loads(message)))


async def no_frames(raw: bytes) -> None:
    return None


def open_connection(streams: list[str], rate: float = 4.0) -> tuple[StreamConnection, FakeSocket]:
    settings = BinanceSettings(max_messages_per_second=rate)
    connection = StreamConnection("ws-1", settings, no_frames, AttemptWindow(300, 300), streams)
    socket = FakeSocket()
    # As if connected with `streams` in the URL.
    connection._ws = cast(Socket, socket)
    connection._active = set(streams)
    return connection, socket


async def test_changes_become_subscribe_and_unsubscribe_messages_with_increasing_ids() -> None:
    connection, socket = open_connection(["btcusdt@trade"])
    connection.add(["ethusdt@trade", "solusdt@trade"])
    connection.remove(["btcusdt@trade"])
    await connection._send_changes()
    assert [message for _, message in socket.sent] == [
        {"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 1},
        {"method": "SUBSCRIBE", "params": ["ethusdt@trade", "solusdt@trade"], "id": 2},
    ]
    assert connection.streams == frozenset({"ethusdt@trade", "solusdt@trade"})


async def test_outgoing_messages_are_paced_to_max_messages_per_second() -> None:
    connection, socket = open_connection(["btcusdt@trade"], rate=5.0)
    connection.remove(["btcusdt@trade"])
    connection.add(["ethusdt@trade"])
    await connection._send_changes()
    (first, _), (second, _) = socket.sent
    assert second - first >= 0.19


async def test_add_then_remove_before_sending_sends_nothing() -> None:
    connection, socket = open_connection(["btcusdt@trade"])
    connection.add(["ethusdt@trade"])
    connection.remove(["ethusdt@trade"])
    await connection._send_changes()
    assert socket.sent == []


async def test_refused_request_is_logged_with_what_it_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connection, _ = open_connection([])
    connection.add(["ethusdt@trade"])
    await connection._send_changes()
    with caplog.at_level(logging.ERROR, logger="pipeline.exchange.connection"):
        caplog.clear()  # only what the reply logs, whatever logging level earlier tests left
        connection._on_reply({"error": {"code": 2, "msg": "Invalid request"}, "id": 1})
    [record] = caplog.records
    assert "id=1 method=SUBSCRIBE streams=ethusdt@trade" in record.getMessage()


async def test_successful_reply_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    connection, _ = open_connection([])
    connection.add(["ethusdt@trade"])
    await connection._send_changes()
    with caplog.at_level(logging.DEBUG, logger="pipeline.exchange.connection"):
        caplog.clear()  # only what the reply logs, whatever logging level earlier tests left
        connection._on_reply({"result": None, "id": 1})
    assert caplog.records == []

"""Cutting an aiokafka client's start short leaves no connection open (aiokafka #715)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import struct

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import KafkaConnectionError

from pipeline.kafka_start import BOOTSTRAP_GRACE_S, start_within
from pipeline.stack import LocalKafka

pytestmark = pytest.mark.integration

METADATA = 3
API_VERSIONS = 18
# Well within start_within's grace: a slow broker, not a dead one.
METADATA_DELAY_S = 0.3


class HoldingProxy:
    """A TCP proxy to the broker that holds each request of one API for `delay_s` and sets
    `asked` when one arrives (for Metadata: a bootstrap whose first metadata request is in
    flight)."""

    def __init__(self, broker: str, api_key: int, delay_s: float) -> None:
        host, port = broker.rsplit(":", 1)
        self._broker = (host, int(port))
        self._api_key = api_key
        self._delay_s = delay_s
        self.asked = asyncio.Event()
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection(*self._broker)
        requests = asyncio.create_task(self._requests(client_r, broker_w))
        answers = asyncio.create_task(self._pipe(broker_r, client_w))
        self._tasks |= {requests, answers}
        await asyncio.wait({requests, answers}, return_when=asyncio.FIRST_COMPLETED)
        for writer in (broker_w, client_w):
            writer.close()

    async def _requests(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                size = await source.readexactly(4)
                body = await source.readexactly(struct.unpack(">i", size)[0])
                if struct.unpack(">h", body[:2])[0] == self._api_key:
                    self.asked.set()
                    await asyncio.sleep(self._delay_s)
                sink.write(size + body)
                await sink.drain()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()


def held(kafka: LocalKafka, api_key: int, delay_s: float) -> HoldingProxy:
    return HoldingProxy(kafka.bootstrap_servers, api_key, delay_s)


def open_connections(port: int) -> list[AIOKafkaConnection]:
    """Connections to `port` still open, reachable or not (a leaked one is kept alive by its
    own read task until the event loop is gone); they are closed before returning, so that a
    failing test does not warn in a later one."""
    found = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, AIOKafkaConnection) and obj.port == port and obj.connected()
    ]
    for conn in found:
        conn.close()
    return found


@pytest.mark.parametrize("client_type", [AIOKafkaProducer, AIOKafkaConsumer])
async def test_a_start_cancelled_during_the_first_metadata_request_leaves_no_connection(
    kafka_broker: LocalKafka, client_type: type[AIOKafkaProducer] | type[AIOKafkaConsumer]
) -> None:
    async with held(kafka_broker, METADATA, METADATA_DELAY_S) as proxy:
        client = client_type(bootstrap_servers=f"127.0.0.1:{proxy.port}")
        starting = asyncio.create_task(start_within(client.start(), timeout_s=10))
        await proxy.asked.wait()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        await client.stop()
        assert open_connections(proxy.port) == []


async def test_a_start_that_outlasts_its_timeout_by_less_than_the_grace_counts_as_started(
    kafka_broker: LocalKafka,
) -> None:
    """Not a failure to retry: a retry would start the same client a second time."""
    async with held(kafka_broker, METADATA, METADATA_DELAY_S) as proxy:
        client = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{proxy.port}")
        try:
            await start_within(client.start(), timeout_s=METADATA_DELAY_S / 3)
            assert client.client.cluster.brokers()
        finally:
            await client.stop()
        assert open_connections(proxy.port) == []


async def test_a_start_that_outlasts_the_grace_times_out_and_leaves_no_connection(
    kafka_broker: LocalKafka,
) -> None:
    async with held(kafka_broker, API_VERSIONS, delay_s=60) as proxy:
        client = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{proxy.port}")
        with pytest.raises(TimeoutError, match=f"not started within {0.1 + BOOTSTRAP_GRACE_S:g} s"):
            await start_within(client.start(), timeout_s=0.1)
        await client.stop()
        assert open_connections(proxy.port) == []


async def test_a_start_that_fails_raises_its_own_error(unused_tcp_port: int) -> None:
    client = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{unused_tcp_port}")
    with pytest.raises(KafkaConnectionError):
        await start_within(client.start(), timeout_s=10)
    await client.stop()


async def test_a_start_in_time_leaves_the_client_started(kafka_broker: LocalKafka) -> None:
    client = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    await start_within(client.start(), timeout_s=10)
    try:
        assert client.client.cluster.brokers()
    finally:
        await client.stop()

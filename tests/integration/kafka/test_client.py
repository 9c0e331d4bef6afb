"""Cutting an aiokafka client's start short leaves no connection open (aiokafka #715)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import struct
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import KafkaConnectionError

from devtools.stack import LocalKafka
from pipeline.kafka.client import BOOTSTRAP_GRACE_S, start_within
from tests.chaos.proxy import TcpProxy

pytestmark = pytest.mark.integration

METADATA = 3
API_VERSIONS = 18
# Well within start_within's grace: a slow broker, not a dead one.
METADATA_DELAY_S = 0.3


class HeldRequests:
    """The client-to-broker side of a TcpProxy, Kafka request by request: each request of one
    API is held for `delay_s`, and `asked` is set when one arrives (for Metadata: a bootstrap
    whose first metadata request is in flight)."""

    def __init__(self, api_key: int, delay_s: float) -> None:
        self._api_key = api_key
        self._delay_s = delay_s
        self.asked = asyncio.Event()

    async def __call__(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            while True:
                size = await source.readexactly(4)
                body = await source.readexactly(struct.unpack(">i", size)[0])
                if struct.unpack(">h", body[:2])[0] == self._api_key:
                    self.asked.set()
                    await asyncio.sleep(self._delay_s)
                sink.write(size + body)
                await sink.drain()


@contextlib.asynccontextmanager
async def held(
    kafka: LocalKafka, api_key: int, delay_s: float
) -> AsyncIterator[tuple[TcpProxy, HeldRequests]]:
    """A proxy to the broker that holds the requests of one API."""
    host, port = kafka.bootstrap_servers.rsplit(":", 1)
    requests = HeldRequests(api_key, delay_s)
    proxy = TcpProxy((host, int(port)), client_to_server=requests)
    await proxy.start()
    try:
        yield proxy, requests
    finally:
        await proxy.stop()


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
    async with held(kafka_broker, METADATA, METADATA_DELAY_S) as (proxy, requests):
        client = client_type(bootstrap_servers=proxy.address)
        starting = asyncio.create_task(start_within(client.start(), timeout_s=10))
        await requests.asked.wait()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        await client.stop()
        assert open_connections(proxy.port) == []


async def test_a_start_that_outlasts_its_timeout_by_less_than_the_grace_counts_as_started(
    kafka_broker: LocalKafka,
) -> None:
    """Not a failure to retry: a retry would start the same client a second time."""
    async with held(kafka_broker, METADATA, METADATA_DELAY_S) as (proxy, _):
        client = AIOKafkaProducer(bootstrap_servers=proxy.address)
        try:
            await start_within(client.start(), timeout_s=METADATA_DELAY_S / 3)
            assert client.client.cluster.brokers()
        finally:
            await client.stop()
        assert open_connections(proxy.port) == []


async def test_a_start_that_outlasts_the_grace_times_out_and_leaves_no_connection(
    kafka_broker: LocalKafka,
) -> None:
    async with held(kafka_broker, API_VERSIONS, delay_s=60) as (proxy, _):
        client = AIOKafkaProducer(bootstrap_servers=proxy.address)
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

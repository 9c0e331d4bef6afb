"""_aiokafka_compat on the aiokafka installed: what it reaches into is where it looks, and the
module refuses a release it was not written for.

No broker: the producers here are created and never connected. Putting batches into one
without a broker takes its message accumulator, the very internals the module acts on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from pipeline.core.versions import spec_of
from pipeline.kafka import _aiokafka_compat
from pipeline.kafka._aiokafka_compat import check_version, fail_all_batches, sender_task
from tests.pins import pinned_range

QUEUED = TopicPartition("trades", 0)
TAKEN = TopicPartition("trades", 1)


def new_producer() -> AIOKafkaProducer:
    # Not idempotent: its sender then starts without asking a broker for a producer id.
    return AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", request_timeout_ms=1000)


@pytest.fixture
async def producer() -> AsyncIterator[AIOKafkaProducer]:
    producer = new_producer()
    yield producer
    task = sender_task(producer)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await producer.stop()


async def hold_batches(producer: AIOKafkaProducer) -> list[asyncio.Future[object]]:
    """Two batches, as the producer holds them: one queued, one taken by its sender; their
    delivery futures."""
    accumulator = producer._message_accumulator
    deliveries = []
    for tp in (QUEUED, TAKEN):
        builder = producer.create_batch()
        builder.append(timestamp=None, key=b"BTCUSDT", value=b"{}")
        deliveries.append(await accumulator.add_batch(builder, tp, timeout=1))
    accumulator._pop_batch(TAKEN)
    return deliveries


async def reported_after_dropping(
    fail: Callable[[AIOKafkaProducer], None], caplog: pytest.LogCaptureFixture
) -> list[str]:
    """Hold batches in a producer, `fail` them, read their deliveries, stop the producer and
    drop it: what asyncio then logs about futures garbage collected with an exception unread."""
    gc.collect()  # earlier garbage is not this test's
    caplog.clear()
    caplog.set_level(logging.ERROR, logger="asyncio")
    producer = new_producer()
    deliveries = await hold_batches(producer)
    fail(producer)
    await asyncio.gather(*deliveries, return_exceptions=True)
    await producer.stop()
    del producer, deliveries
    gc.collect()
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]


async def test_sender_task_is_none_before_start_then_the_task_that_sends(
    producer: AIOKafkaProducer,
) -> None:
    assert sender_task(producer) is None
    await producer._sender.start()  # the sender alone: start() would want a broker
    task = sender_task(producer)
    assert isinstance(task, asyncio.Task)
    assert not task.done()
    assert task.get_coro().__qualname__ == "Sender._sender_routine"  # type: ignore[union-attr]


async def test_fail_all_batches_fails_every_batch_held_with_the_error_given(
    producer: AIOKafkaProducer,
) -> None:
    deliveries = await hold_batches(producer)
    replaced = KafkaError("producer replaced")
    fail_all_batches(producer, replaced)
    for delivery in deliveries:
        with pytest.raises(KafkaError) as raised:
            await delivery
        assert raised.value is replaced


async def test_fail_all_batches_leaves_asyncio_nothing_to_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail(producer: AIOKafkaProducer) -> None:
        fail_all_batches(producer, KafkaError("producer replaced"))

    assert await reported_after_dropping(fail, caplog) == []


async def test_without_it_asyncio_would_report_the_failed_drain_waiters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Why fail_all_batches reads the drain waiters: aiokafka's own fail_all() does not, and
    nothing else waits for a batch that send_batch() queued to be drained."""

    def fail(producer: AIOKafkaProducer) -> None:
        producer._message_accumulator.fail_all(KafkaError("producer replaced"))

    reported = await reported_after_dropping(fail, caplog)
    assert reported
    assert all(r.startswith("Future exception was never retrieved") for r in reported)


def test_the_guard_accepts_exactly_the_range_pyproject_pins() -> None:
    assert spec_of(*_aiokafka_compat.SUPPORTED) == pinned_range("aiokafka")
    for version in ("0.14.0", "0.14.7", "0.14.1rc1"):
        check_version(version)


@pytest.mark.parametrize("version", ["0.13.0", "0.15.0", "0.15.0rc1", "1.0.0", ""])
def test_a_release_it_was_not_written_for_is_refused_at_import(version: str) -> None:
    with pytest.raises(ImportError, match=r"aiokafka.*>=0\.14,<0\.15"):
        check_version(version)

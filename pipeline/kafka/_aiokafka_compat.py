"""The one module of ours that touches aiokafka's internals; written for aiokafka 0.14.

aiokafka has no public way to drop a producer without flushing it: its stop() waits for every
batch it holds to be delivered, which never happens once a delivery has failed for good. The
producer is replaced then (pipeline.kafka.producer), and these functions stop its sender and
fail its batches beforehand. They reach into the producer's sender and message accumulator,
which may change in any release: importing this module with another release raises ImportError.
"""

from __future__ import annotations

import asyncio
from itertools import chain

import aiokafka
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.core.versions import Release, require_release

# The range pyproject.toml pins.
SUPPORTED: tuple[Release, Release] = ((0, 14), (0, 15))


def check_version(version: str) -> None:
    """ImportError unless `version` of aiokafka is one this module was written for."""
    require_release("aiokafka", version, *SUPPORTED)


check_version(aiokafka.__version__)


def sender_task(producer: AIOKafkaProducer) -> asyncio.Task[None] | None:
    """The task that sends the producer's batches; None until start() has started it."""
    sender = producer._sender
    return None if sender is None else sender.sender_task


def fail_all_batches(producer: AIOKafkaProducer, exc: KafkaError) -> None:
    """Fail every batch the producer holds with `exc`, so that its stop() has none to flush.

    Each batch's delivery future gets `exc`. So does its drain waiter, which nobody awaits when
    batches are sent with send_batch(): it is retrieved here, or asyncio would log it as
    "Future exception was never retrieved" once it is garbage. Stop the sender task first: it
    would otherwise go on sending them.
    """
    accumulator = producer._message_accumulator
    batches = [*chain.from_iterable(accumulator._batches.values()), *accumulator._pending_batches]
    accumulator.fail_all(exc)
    for batch in batches:
        if not batch._drain_waiter.cancelled():
            batch._drain_waiter.exception()

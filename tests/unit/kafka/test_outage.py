"""Which errors mean Kafka is unreachable: the producer, consumer and lag probe retry those."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
)

from pipeline.kafka.outage import is_outage


@pytest.mark.parametrize(
    "error",
    [
        KafkaConnectionError("Unable to bootstrap from [('localhost', 9092)]"),
        KafkaTimeoutError(),
        RequestTimedOutError(),
        NotLeaderForPartitionError(),
        ConnectionRefusedError(111, "refused"),
        TimeoutError("not started within 11 s"),
    ],
)
def test_an_unreachable_broker_is_an_outage(error: Exception) -> None:
    assert is_outage(error)


@pytest.mark.parametrize("error", [ValueError("bug"), RuntimeError("bug"), KeyError("topic")])
def test_a_bug_is_not_an_outage(error: Exception) -> None:
    assert not is_outage(error)

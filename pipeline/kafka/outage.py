"""Whether an error means Kafka is unreachable: the one answer every Kafka client here uses."""

from __future__ import annotations

from aiokafka.errors import KafkaError


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` means the broker is not there (or not answering) right now.

    aiokafka reports a refused or lost broker as a KafkaError (KafkaConnectionError, a request
    timing out, no leader for a partition); the socket's own OSError and the TimeoutError of our
    bounded calls (`start_within`, `wait_for`) can reach us unwrapped.
    """
    return isinstance(exc, KafkaError | OSError | TimeoutError)

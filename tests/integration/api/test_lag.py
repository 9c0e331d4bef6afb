"""GET /consumer/lag against a real broker: a burst shows as lag, and the consumer drains it."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from pipeline.core.settings import Settings
from pipeline.core.trades import TradeEvent
from pipeline.kafka.admin import ensure_topics
from pipeline.kafka.client import build_producer
from tests.api_harness import eventually, serve

pytestmark = pytest.mark.integration

BURST = 600


async def _produce_burst(settings: Settings, symbol: str, count: int) -> None:
    await ensure_topics(settings.kafka)
    producer = build_producer(settings.kafka)
    await producer.start()
    try:
        now = int(time.time() * 1000)
        for trade_id in range(1, count + 1):
            event = TradeEvent(
                symbol=symbol,
                trade_id=trade_id,
                price=Decimal("101.25"),
                quantity=Decimal("0.5"),
                event_time=now,
                trade_time=now,
                is_buyer_maker=False,
                processed_at=now,
            )
            await producer.send(settings.kafka.topic, event.to_kafka_value(), key=symbol.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def test_consumer_lag_counts_a_burst_and_returns_to_zero_once_stored(
    make_settings: Callable[..., Settings],
) -> None:
    api_only = make_settings(PIPELINE_ROLES="none")
    await _produce_burst(api_only, "BTCUSDT", BURST)

    async with serve(api_only) as client:
        before = await client.get("/consumer/lag")
    assert before.status_code == 200, before.text
    body = before.json()
    assert body["group"] == api_only.kafka.group_id
    assert body["topic"] == api_only.kafka.topic
    assert body["total_lag"] == BURST
    assert len(body["partitions"]) == api_only.kafka.partitions
    assert sum(p["lag"] for p in body["partitions"]) == BURST
    assert all(p["committed"] is None for p in body["partitions"])

    consumer = make_settings(
        PIPELINE_ROLES="consumer",
        KAFKA_TOPIC=api_only.kafka.topic,
        KAFKA__GROUP_ID=api_only.kafka.group_id,
        DATABASE_URL=api_only.database.url,
    )
    async with serve(consumer) as client:

        async def drained() -> dict[str, Any] | None:
            lag = (await client.get("/consumer/lag")).json()
            return lag if lag["total_lag"] == 0 else None

        after = await eventually(drained, 30, "consumer lag back to 0")
        latest = await client.get("/prices/BTCUSDT")
        metrics = await client.get("/metrics")
    assert sum(p["end_offset"] for p in after["partitions"]) == BURST
    assert latest.json()["trade_id"] == BURST
    assert 'pipeline_consumer_lag{partition="0"} 0.0' in metrics.text


async def test_consumer_lag_is_503_when_kafka_is_unreachable(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(PIPELINE_ROLES="none", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    async with serve(settings) as client:
        response = await client.get("/consumer/lag")
        metrics = await client.get("/metrics")  # still served, without a fresh lag
    assert response.status_code == 503
    assert response.json()["detail"].startswith("Kafka unreachable")
    assert metrics.status_code == 200

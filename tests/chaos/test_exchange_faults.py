"""The exchange misbehaves: it drops the WebSocket every few seconds (clean closes and TCP
resets), repeats frames and bursts; and it sends malformed, truncated, oversized and wrongly
typed frames. Every valid trade is stored once; every bad frame is in the DLQ with its reason."""

from __future__ import annotations

import asyncio
import base64
import random
import re
import time
from typing import Any

import httpx
import pytest

import devtools.simulator.server as simulator_server
from devtools.simulator import BinanceSimulator
from pipeline.kafka.dead_letters import DEAD_LETTER_MAX_BYTES
from tests.chaos.checks import read_topic
from tests.chaos.conftest import StartRun
from tests.chaos.scenario import ChaosRun, scale

pytestmark = pytest.mark.chaos

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
RATE = 100.0

FLAP_S = scale(10.0, 60.0)
DISCONNECT_EVERY_S = 3.0  # the simulator's clean closes (1001)
DUPLICATE_RATIO = 0.05
BURST_EVERY_S, BURST_SIZE = 2.0, 300
# From the last drop: reconnect (backoff ≤ 5 s, see scenario.RECONNECT_MAX_S) + gap backfill.
FLAP_RECOVERY_BOUND_S = 20.0

BAD_FRAMES_S = scale(8.0, 40.0)
MALFORMED_RATIO = 0.05
BAD_RECOVERY_BOUND_S = 20.0
MAX_FRAME_BYTES = 1024 * 1024  # binance.max_frame_bytes, the default


async def source_status(run: ChaosRun) -> dict[str, Any]:
    status = await run.services[0].json("/pipeline/status")
    return {
        "reconnects": status["source"]["reconnects"],
        "gaps_found": status["gaps"]["found"],
        "backfilled": status["gaps"]["backfilled"],
        "duplicates_absorbed": status["consumer"]["duplicates"],
    }


@pytest.mark.timeout(scale(180, 600))
async def test_dropped_connections_duplicates_and_bursts(chaos: StartRun) -> None:
    run = await chaos(
        "exchange_flaps",
        SYMBOLS,
        rate=RATE,
        duplicate_ratio=DUPLICATE_RATIO,
        burst_every_s=BURST_EVERY_S,
        burst_size=BURST_SIZE,
    )
    service = run.service()
    await run.start(service)
    run.simulator.config.disconnect_every_s = DISCONNECT_EVERY_S
    ends = time.monotonic() + FLAP_S
    while time.monotonic() < ends:
        await asyncio.sleep(run.rng.uniform(1.5, 4.0))
        await run.simulator.disconnect_all(abrupt=True)  # a TCP reset, no close frame
        run.faults += 1
    run.simulator.config.disconnect_every_s = None
    run.faults += int(FLAP_S / DISCONNECT_EVERY_S)
    await run.recovered(time.monotonic(), FLAP_RECOVERY_BOUND_S, "after the last drop")
    await run.finish(
        "WS dropped every ~2 s, 5 % duplicates, bursts",
        FLAP_RECOVERY_BOUND_S,
        extra=await source_status(run),
    )


# -- bad frames ----------------------------------------------------------------------------

_SYMBOL = re.compile(rb'"s":"([A-Z0-9]+)"')


class MalformedLog:
    """Wraps the simulator's `malform`: every corrupted frame as the service receives it
    (inside the combined-stream wrapper), by kind."""

    def __init__(self) -> None:
        self.frames: dict[bytes, str] = {}
        self._malform = simulator_server.malform

    def __call__(self, kind: str, raw: bytes, trade: Any) -> bytes:
        bad = self._malform(kind, raw, trade)
        found = _SYMBOL.search(raw)
        assert found is not None
        prefix = b'{"stream":"%b@trade","data":' % found[1].lower()
        self.frames[prefix + bad + b"}"] = kind
        return bad


def inject(simulator: BinanceSimulator, frame: bytes) -> None:
    """Send a raw frame on every open connection (the simulator has no knob for arbitrary
    frames, so this uses its connection list)."""
    for client in list(simulator._clients):
        client.push(frame)


def hand_made_frames(rng: random.Random) -> dict[bytes, str]:
    """Bad frames the simulator's knob does not produce."""
    trade = (
        b'{"e":"trade","E":1764085200123,"s":"BTCUSDT","t":%b,"p":%b,"q":"0.001",'
        b'"T":1764085200120,"m":%b,"M":true}'
    )

    def combined(data: bytes) -> bytes:
        return b'{"stream":"btcusdt@trade","data":' + data + b"}"

    # Incompressible padding up to just under the WebSocket frame limit: delivered, invalid,
    # and (with its reason) larger than the largest record Kafka takes.
    shell = combined(b'{"e":"trade","s":"BTCUSDT","pad":""}')
    pad = base64.b64encode(rng.randbytes(MAX_FRAME_BYTES))[: MAX_FRAME_BYTES - len(shell) - 64]
    return {
        combined(trade % (b'"12"', b'"1.5"', b"false")): "id as a string",
        combined(trade % (b"12", b"1.5", b"false")): "price as a number",
        combined(trade % (b"12", b'"1.5"', b'"no"')): "side as a string",
        combined(trade % (b"-12", b'"1.5"', b"false")): "negative id",
        combined(trade % (b"12", b'"NaN"', b"false")): "NaN price",
        b"[1, 2, 3]": "an array",
        b"null": "null",
        b'"trade"': "a string",
        b"{}": "an empty object",
        b'{"stream":"btcusdt@trade","data":[]}': "data not an object",
        b'{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","pad":"'
        + pad
        + b'"}}': "near the frame limit",
    }


async def tape_trades(
    simulator: BinanceSimulator, ranges: dict[str, tuple[int, int]]
) -> dict[str, dict[int, tuple[str, str, bool]]]:
    """The exchange's own record of each trade (REST historicalTrades), for the content check."""
    trades: dict[str, dict[int, tuple[str, str, bool]]] = {}
    async with httpx.AsyncClient(base_url=simulator.rest_url, timeout=10) as http:
        for symbol, (first, last) in ranges.items():
            trades[symbol] = {}
            from_id = first
            while from_id <= last:
                page = (
                    await http.get(
                        "/api/v3/historicalTrades",
                        params={"symbol": symbol, "fromId": from_id, "limit": 1000},
                    )
                ).json()
                for item in page:
                    trades[symbol][item["id"]] = (item["price"], item["qty"], item["isBuyerMaker"])
                from_id = page[-1]["id"] + 1
    return trades


@pytest.mark.timeout(scale(180, 600))
async def test_bad_frames_are_dead_lettered_with_a_reason(
    chaos: StartRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    malformed = MalformedLog()
    monkeypatch.setattr(simulator_server, "malform", malformed)
    run = await chaos("bad_frames", SYMBOLS, rate=RATE)
    service = run.service()
    # Valid frames until every symbol has rows: the window starts at a trade the service saw.
    await run.start(service)
    hand_made = hand_made_frames(run.rng)
    run.simulator.config.malformed_ratio = MALFORMED_RATIO
    ends = time.monotonic() + BAD_FRAMES_S
    pending = list(hand_made)
    while time.monotonic() < ends:
        await asyncio.sleep(BAD_FRAMES_S / (len(hand_made) + 1))
        if pending:
            inject(run.simulator, pending.pop())
            run.faults += 1
    run.simulator.config.malformed_ratio = 0.0
    run.faults += len(malformed.frames)
    await run.recovered(time.monotonic(), BAD_RECOVERY_BOUND_S, "after the bad frames")
    figures = await run.finish(
        f"{MALFORMED_RATIO:.0%} malformed frames (all kinds) + hand-made bad frames",
        BAD_RECOVERY_BOUND_S,
        dlq_allowed=True,
        extra={"kinds": sorted(set(malformed.frames.values()))},
    )
    records = await read_topic(run.kafka, run.dlq_topic)
    no_reason = [r for r in records if not dict(r.headers).get("error")]
    assert not no_reason, f"{len(no_reason)} DLQ records without an `error` header"
    expected = {**malformed.frames, **hand_made}
    got = {r.value: dict(r.headers) for r in records}
    truncated = {v for v in expected if v not in got and any(_prefix_of(g, v) for g in got)}
    missing = {kind for v, kind in expected.items() if v not in got and v not in truncated}
    assert not missing, f"bad frames not in the DLQ: {sorted(missing)}"
    strangers = [
        g[:120] for g in got if g not in expected and not any(_prefix_of(g, v) for v in expected)
    ]
    assert not strangers, f"DLQ records that were not bad frames: {strangers[:3]}"
    for value in truncated:  # cut to fit in a Kafka record; the reason says so
        kept = next(g for g in got if _prefix_of(g, value))
        assert len(kept) == DEAD_LETTER_MAX_BYTES
        assert f"of {len(value)} bytes kept" in got[kept]["error"].decode()
    tape = await tape_trades(run.simulator, run.tape.ranges())
    assert await run.store.mismatched_rows(run.symbols, tape) == 0, (
        "a stored row differs from its trade"
    )
    reasons = {re.sub(r"\d+", "N", h["error"].decode())[:60] for h in got.values()}
    figures.extra.update(dlq_reasons=len(reasons), truncated=len(truncated))


def _prefix_of(shorter: bytes, longer: bytes) -> bool:
    return len(shorter) < len(longer) and longer.startswith(shorter)

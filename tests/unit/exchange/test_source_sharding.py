"""How symbols map to streams, connections and SUBSCRIBE/UNSUBSCRIBE messages."""

from __future__ import annotations

from pipeline.exchange.connection import (
    MAX_URL_STREAM_CHARS,
    next_request,
    stream_name,
    symbol_of,
    url_streams,
)
from pipeline.exchange.source import assign_streams


def test_stream_names_are_lower_case_trade_streams_and_map_back_to_symbols() -> None:
    assert stream_name("BTCUSDT") == "btcusdt@trade"
    assert symbol_of("btcusdt@trade") == "BTCUSDT"


def test_new_streams_fill_existing_connections_before_opening_new_ones() -> None:
    fills, groups = assign_streams({"ws-1": 2, "ws-2": 1}, ["a", "b", "c"], capacity=2)
    assert fills == {"ws-2": ["a"]}
    assert groups == [["b", "c"]]


def test_streams_beyond_the_limit_are_split_into_connections_of_at_most_the_limit() -> None:
    fills, groups = assign_streams({}, [f"s{i}" for i in range(5)], capacity=2)
    assert fills == {}
    assert groups == [["s0", "s1"], ["s2", "s3"], ["s4"]]


def test_no_new_streams_means_no_change() -> None:
    assert assign_streams({"ws-1": 1}, [], capacity=2) == ({}, [])


def test_connect_url_carries_all_streams_when_they_fit() -> None:
    streams = ["ethusdt@trade", "btcusdt@trade"]
    assert url_streams(streams) == ["btcusdt@trade", "ethusdt@trade"]


def test_connect_url_stays_short_and_leaves_the_rest_for_subscribe_messages() -> None:
    streams = [f"sym{i:05d}usdt@trade" for i in range(1024)]
    chosen = url_streams(streams)
    assert 0 < len(chosen) < len(streams)
    assert sum(len(s) + 1 for s in chosen) <= MAX_URL_STREAM_CHARS
    assert next_request(streams, chosen) == (
        "SUBSCRIBE",
        sorted(set(streams) - set(chosen))[:200],
    )


def test_unsubscribes_go_first_then_subscribes_then_nothing() -> None:
    desired, active = {"a@trade", "b@trade"}, {"b@trade", "c@trade"}
    assert next_request(desired, active) == ("UNSUBSCRIBE", ["c@trade"])
    active.discard("c@trade")
    assert next_request(desired, active) == ("SUBSCRIBE", ["a@trade"])
    active.add("a@trade")
    assert next_request(desired, active) is None


def test_one_message_carries_at_most_max_params_streams() -> None:
    desired = {f"s{i:03d}@trade" for i in range(450)}
    method, params = next_request(desired, set(), max_params=200) or ("", [])
    assert method == "SUBSCRIBE"
    assert len(params) == 200

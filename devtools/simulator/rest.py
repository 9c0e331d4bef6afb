"""The REST half of the simulator: the few `/api/v3` endpoints the pipeline uses.

Answers are computed from the markets and returned as (HTTP status, JSON-able body); errors
carry Binance's `{"code": …, "msg": …}` shapes and codes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

import orjson

from devtools.simulator.market import SCALE, Market, fmt, trade_json

DEFAULT_TRADES_LIMIT = 500
MAX_TRADES_LIMIT = 1000  # Binance silently caps larger limits to this
_ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"]
_STP_MODES = ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"]
_RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
]

Answer = tuple[int, object]

TRADING = "TRADING"
DELISTED = "BREAK"  # Binance's status for a symbol that no longer trades
_ODD_TICK = 10_000  # 0.0001 in 1e-8 units
_ODD_LOT = 10_000_000  # 0.1


class ApiError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.body = {"code": code, "msg": msg}


def answer(
    target: str,
    markets: Mapping[str, Market],
    listed: Mapping[str, str] | None = None,
    rest_lag_s: float = 0.0,
) -> Answer | None:
    """Answer a GET of `target` (path and query), or None when the path is not an endpoint.

    `listed` is what exchangeInfo shows, name → status (TRADING, BREAK, ...), in order: the
    markets' names and odd names with no market behind them. Default: every market, TRADING.
    Trade endpoints see only trades at least `rest_lag_s` old (a REST view behind the stream).
    """
    if listed is None:
        listed = dict.fromkeys(markets, TRADING)
    url = urlsplit(target)
    params = dict(parse_qsl(url.query, keep_blank_values=True))
    try:
        if url.path == "/api/v3/ping":
            return 200, {}
        if url.path == "/api/v3/time":
            return 200, {"serverTime": time.time_ns() // 1_000_000}
        if url.path == "/api/v3/exchangeInfo":
            return 200, _exchange_info(params, markets, listed)
        if url.path == "/api/v3/historicalTrades":
            return 200, _trades(params, markets, int_param(params, "fromId"), rest_lag_s)
        if url.path == "/api/v3/trades":
            return 200, _trades(params, markets, None, rest_lag_s)
    except ApiError as exc:
        return 400, exc.body
    return None


def _trades(
    params: Mapping[str, str], markets: Mapping[str, Market], from_id: int | None, lag_s: float
) -> list[dict[str, object]]:
    """historicalTrades (from_id given: oldest first from it) or the most recent trades, of
    those at least `lag_s` old."""
    market = _market(params.get("symbol", ""), markets)
    limit = int_param(params, "limit")
    limit = DEFAULT_TRADES_LIMIT if limit is None else max(1, min(limit, MAX_TRADES_LIMIT))
    cutoff_ms = time.time_ns() // 1_000_000 - int(lag_s * 1000)
    if from_id is not None:
        trades = market.trades_from(from_id, limit)
    else:
        newer = 0  # the newest trades are not visible yet; the tape is in time order
        while newer < len(market.history) and market.history[-1 - newer].time > cutoff_ms:
            newer += 1
        recent = market.recent(limit + newer)
        trades = recent[: len(recent) - newer]
    return [trade_json(t) for t in trades if t.time <= cutoff_ms]


def _exchange_info(
    params: Mapping[str, str], markets: Mapping[str, Market], listed: Mapping[str, str]
) -> dict[str, object]:
    if "symbol" in params and "symbols" in params:
        raise ApiError(-1128, "Combination of optional parameters invalid.")
    if "symbol" in params:
        selected = [_listed(params["symbol"], listed)]
    elif "symbols" in params:
        try:
            names = orjson.loads(params["symbols"])
        except orjson.JSONDecodeError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ApiError(-1100, "Illegal characters found in parameter 'symbols'.")
        selected = [_listed(name, listed) for name in names]
    else:
        selected = list(listed)
    return {
        "timezone": "UTC",
        "serverTime": time.time_ns() // 1_000_000,
        "rateLimits": _RATE_LIMITS,
        "exchangeFilters": [],
        "symbols": [_symbol_info(name, listed[name], markets.get(name)) for name in selected],
    }


def _listed(symbol: str, listed: Mapping[str, str]) -> str:
    if not symbol:
        raise ApiError(
            -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
        )
    if symbol not in listed:  # case-sensitive, like Binance
        raise ApiError(-1121, "Invalid symbol.")
    return symbol


def _symbol_info(name: str, status: str, market: Market | None) -> dict[str, object]:
    """One exchangeInfo entry; an odd listing (no market) gets the default filters."""
    base, quote = (market.base, market.quote) if market else (name[:-4], name[-4:])
    tick, lot = (market.tick, market.lot) if market else (_ODD_TICK, _ODD_LOT)
    return {
        "symbol": name,
        "status": status,
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": _ORDER_TYPES,
        "icebergAllowed": True,
        "ocoAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": fmt(tick),
                "maxPrice": fmt(1_000_000 * SCALE),
                "tickSize": fmt(tick),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": fmt(lot),
                "maxQty": fmt(9_000_000 * SCALE),
                "stepSize": fmt(lot),
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": _STP_MODES,
    }


def _market(symbol: str, markets: Mapping[str, Market]) -> Market:
    if not symbol:
        raise ApiError(
            -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
        )
    market = markets.get(symbol)  # case-sensitive, like Binance
    if market is None:
        raise ApiError(-1121, "Invalid symbol.")
    return market


def int_param(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise ApiError(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    return int(value)

"""ExchangeClient: the few Binance REST calls the pipeline needs (backfill and symbol checks).

Every request first reserves its weight from a per-minute budget (`rest_weight_per_minute`, also
kept per clock minute), so a long backfill paces itself instead of getting the IP banned; history
jobs' requests yield it to gap filling (`RestBudget`). 5xx, 429/418 and network errors are
retried with jittered exponential backoff; a Retry-After from the exchange is honoured by every
caller (the budget pauses), and a used-weight header at our limit pauses until the next minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from pipeline.core.errors import PipelineError
from pipeline.core.retry import Backoff
from pipeline.core.settings import BinanceSettings
from pipeline.core.symbol_names import SkippedNames
from pipeline.exchange.pacing import RestBudget

logger = logging.getLogger(__name__)

# Request weights from Binance's spot REST docs.
HISTORICAL_TRADES_WEIGHT = 25
AGG_TRADES_WEIGHT = 4
AGG_TRADES_MAX_LIMIT = 1000
# aggTrades refuses a startTime..endTime window longer than an hour (-1127).
AGG_TRADES_MAX_WINDOW_MS = 3_600_000 - 1
EXCHANGE_INFO_WEIGHT = 20
EXCHANGE_INFO_SYMBOL_WEIGHT = 2
HISTORICAL_TRADES_MAX_LIMIT = 1000
INVALID_SYMBOL_CODE = -1121
USED_WEIGHT_HEADER = "x-mbx-used-weight-1m"
# A longer Retry-After (e.g. an IP ban, HTTP 418) is reported to the caller instead of waited out.
MAX_RETRY_AFTER_S = 120.0


class ExchangeError(PipelineError):
    """The exchange refused the request (a 4xx other than rate limiting); retrying won't help."""

    def __init__(self, status: int, code: int | None, message: str) -> None:
        super().__init__(f"exchange refused the request: HTTP {status}, code {code}: {message}")
        self.status = status
        self.code = code


class ExchangeUnavailable(PipelineError):
    """The exchange did not answer usefully after all retries (network, 5xx, rate limit)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Listings:
    """What exchangeInfo lists: the valid TRADING symbols, and how many entries were not."""

    trading: frozenset[str]
    skipped: int  # TRADING entries whose name is not a valid symbol
    listed: int  # entries in any status


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class ExchangeClient:
    """Binance spot REST client on one pooled httpx.AsyncClient; `close()` (or `async with`)."""

    def __init__(
        self,
        settings: BinanceSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_backoff_s: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=settings.rest_url,
            timeout=httpx.Timeout(settings.rest_timeout_s),
            transport=transport,
            headers={"Accept": "application/json"},
        )
        self._budget = RestBudget(settings.rest_weight_per_minute, settings.history_weight_share)
        self._weight_limit = settings.rest_weight_per_minute
        self._max_attempts = settings.rest_max_attempts
        self._retry_backoff_s = retry_backoff_s
        self._skipped = SkippedNames("exchange")

    async def __aenter__(self) -> ExchangeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.aclose()

    async def historical_trades(
        self,
        symbol: str,
        from_id: int | None,
        limit: int = HISTORICAL_TRADES_MAX_LIMIT,
        *,
        background: bool = False,
    ) -> list[dict[str, Any]]:
        """Trades with id >= from_id in ascending order (the newest ones when from_id is None).
        `background`: a history job's request, which yields the weight budget to gap filling."""
        params: dict[str, Any] = {
            "symbol": symbol.upper(),
            "limit": max(1, min(limit, HISTORICAL_TRADES_MAX_LIMIT)),
        }
        if from_id is not None:
            params["fromId"] = from_id
        data = await self._get(
            "/api/v3/historicalTrades", params, HISTORICAL_TRADES_WEIGHT, background
        )
        if not isinstance(data, list):
            raise ExchangeError(200, None, f"historicalTrades answered {type(data).__name__}")
        return data

    async def agg_trades(
        self,
        symbol: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = AGG_TRADES_MAX_LIMIT,
        *,
        background: bool = False,
    ) -> list[dict[str, Any]]:
        """Aggregate trades with start_ms <= T <= end_ms (at most an hour apart), oldest first,
        or the newest ones without times; each carries `f`/`l`, the first and last trade id it
        aggregates."""
        params: dict[str, Any] = {
            "symbol": symbol.upper(),
            "limit": max(1, min(limit, AGG_TRADES_MAX_LIMIT)),
        }
        if start_ms is not None:
            params["startTime"] = start_ms
        if end_ms is not None:
            params["endTime"] = end_ms
        data = await self._get("/api/v3/aggTrades", params, AGG_TRADES_WEIGHT, background)
        if not isinstance(data, list):
            raise ExchangeError(200, None, f"aggTrades answered {type(data).__name__}")
        return data

    async def listings(self) -> Listings:
        """The spot symbols whose status is TRADING (whole-market mode). Names that are not
        valid symbols are left out, each reported once (log, `pipeline_symbols_skipped_total`)."""
        data = await self._get("/api/v3/exchangeInfo", {}, EXCHANGE_INFO_WEIGHT)
        if not isinstance(data, dict) or not isinstance(data.get("symbols"), list):
            # Not "no symbols": a garbled answer must not read as "everything was delisted".
            raise ExchangeError(200, None, "exchangeInfo answered without a symbols list")
        entries = _symbols_of(data)
        names = [item.get("symbol") for item in entries if item.get("status") == "TRADING"]
        trading = self._skipped.valid(names)
        return Listings(frozenset(trading), skipped=len(names) - len(trading), listed=len(entries))

    async def symbol_exists(self, symbol: str) -> bool:
        """Whether the exchange lists the symbol (in any status)."""
        symbol = symbol.upper()
        try:
            data = await self._get(
                "/api/v3/exchangeInfo", {"symbol": symbol}, EXCHANGE_INFO_SYMBOL_WEIGHT
            )
        except ExchangeError as exc:
            if exc.code == INVALID_SYMBOL_CODE:
                return False
            raise
        return any(item.get("symbol") == symbol for item in _symbols_of(data))

    async def _get(
        self, path: str, params: dict[str, Any], weight: int, background: bool = False
    ) -> Any:
        backoff = Backoff(*self._retry_backoff_s)
        attempt = 1
        while True:
            try:
                return await self._request(path, params, weight, background)
            except _Retryable as exc:
                if attempt >= self._max_attempts:
                    raise ExchangeUnavailable(
                        f"GET {path} failed after {attempt} attempts: {exc}", exc.retry_after
                    ) from None
                delay = max(exc.retry_after or 0.0, backoff.next_delay())
                logger.warning(
                    "exchange request failed, retrying attempt=%d in_s=%.2f error=%s",
                    attempt,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                attempt += 1

    async def _request(
        self, path: str, params: dict[str, Any], weight: int, background: bool = False
    ) -> Any:
        await self._budget.spend(weight, background=background)
        try:
            response = await self._client.get(path, params=params)
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        self._respect_used_weight(response)
        status = response.status_code
        if status in (418, 429):
            raise self._rate_limited(path, response)
        if status >= 500:
            raise _Retryable(f"HTTP {status}")
        if status >= 400:
            code, message = _error_of(response)
            raise ExchangeError(status, code, message)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            # A truncated body (proxy, cut connection) is worth another try.
            raise _Retryable(f"HTTP {status} with a body that is not JSON") from None

    def _rate_limited(self, path: str, response: httpx.Response) -> Exception:
        retry_after = _retry_after_s(response)
        # Every caller waits, not just this one: the limit is per IP.
        self._budget.pause_until(time.monotonic() + retry_after)
        reason = f"HTTP {response.status_code} rate limited, Retry-After {retry_after:g}s"
        if retry_after > MAX_RETRY_AFTER_S:
            return ExchangeUnavailable(f"GET {path}: {reason}", retry_after)
        return _Retryable(reason, retry_after)

    def _respect_used_weight(self, response: httpx.Response) -> None:
        used = response.headers.get(USED_WEIGHT_HEADER)
        if used is not None and used.isdigit():
            self._budget.observe_used(int(used))
        if used is not None and used.isdigit() and int(used) >= self._weight_limit:
            # Binance counts weight per clock minute; wait for the next one.
            self._budget.pause_until(time.monotonic() + 60.0 - time.time() % 60.0)


def _symbols_of(data: Any) -> list[dict[str, Any]]:
    symbols = data.get("symbols") if isinstance(data, dict) else None
    return [item for item in symbols if isinstance(item, dict)] if isinstance(symbols, list) else []


def _retry_after_s(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


def _error_of(response: httpx.Response) -> tuple[int | None, str]:
    """Binance's error body is {"code": -1121, "msg": "Invalid symbol."}."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None, response.text[:200]
    if not isinstance(body, dict):
        return None, str(body)[:200]
    code = body.get("code")
    return (code if isinstance(code, int) else None), str(body.get("msg", ""))[:200]

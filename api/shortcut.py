"""`answer_from_kept(scope, send)`: GET /prices/{symbol} answered from the kept answer, before
FastAPI sees the request (the app's `__call__`, api.main.Service, asks it first).

The hot read (≥ 1,000 req/s, docs/perf.md) costs ~250 µs of CPU per request through FastAPI,
most of it FastAPI's own floor — its telemetry and body-limit wrappers, the middleware stack,
routing through every route, request objects: an empty FastAPI route costs ~170 µs under
uvicorn, a bare ASGI answer ~80 µs. While PriceReads keeps a fresh answer for the symbol, this
sends those bytes itself: what the route would send — status 200, `application/json`, the same
body, orjson's encoding of the same row (tests/integration/test_api_prices.py compares both).

It takes only requests whose answer cannot differ: GET, path `/prices/<SYMBOL>` spelled as
stored (upper case), no request body (BodyLimitMiddleware's 413 stays FastAPI's), and a fresh
kept answer. Everything else — other spellings, unknown symbols, a stale or missing answer, the
first request that fetches it — goes through FastAPI as before. (FastAPI's OpenTelemetry
instrumentation, when configured, sees only the requests that reach FastAPI.)
"""

from __future__ import annotations

from starlette.types import Scope, Send

PREFIX = "/prices/"
_BODY_HEADERS = (b"content-length", b"transfer-encoding")


async def answer_from_kept(scope: Scope, send: Send) -> bool:
    """Send the kept answer if this request is one it answers exactly; False (nothing sent)
    otherwise."""
    if scope["type"] != "http" or scope["method"] != "GET":
        return False
    body = _kept_answer(scope)
    if body is None:
        return False
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return True


def _kept_answer(scope: Scope) -> bytes | None:
    path: str = scope["path"]
    if not path.startswith(PREFIX):
        return None
    symbol = path[len(PREFIX) :]
    if not symbol or "/" in symbol:
        return None
    reads = scope.get("state", {}).get("reads")
    if reads is None:  # not started (yet)
        return None
    if any(name in _BODY_HEADERS for name, _ in scope["headers"]):
        return None
    body: bytes | None = reads.fresh_latest_json(symbol)
    return body

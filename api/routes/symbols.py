"""The tracked symbols: the registry every producer instance follows (polled every second)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import httpx
from fastapi import APIRouter, Body, Depends, HTTPException, Path, Response, status
from fastapi.exceptions import RequestValidationError

from api.deps import ExchangeDep, RegistryDep, SettingsDep
from api.schemas.common import ErrorOut, SymbolInput
from api.schemas.symbols import (
    ExchangeCheck,
    SymbolChangeOut,
    SymbolIn,
    SymbolsOut,
    TrackedSymbolOut,
)
from api.security import require_mutation_access
from pipeline.exchange.client import ExchangeClient, ExchangeError, ExchangeUnavailable

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/symbols", tags=["symbols"])

# Checking a new symbol with the exchange may take this long; then it is added unverified.
VERIFY_TIMEOUT_S = 5.0
SUBSCRIBE_NOTE = "producers subscribe within 2 s"

SymbolPath = Annotated[SymbolInput, Path(description="symbol, case-insensitive")]

MUTATION_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut, "description": "API_KEY is set and X-API-Key is missing or wrong"},
    403: {"model": ErrorOut, "description": "API_KEY is unset and the client is not local"},
    413: {"model": ErrorOut, "description": "request body too large"},
    503: {"model": ErrorOut, "description": "PostgreSQL unavailable"},
}


@router.get("", summary="List the tracked symbols", responses={503: {"model": ErrorOut}})
async def list_symbols(registry: RegistryDep) -> SymbolsOut:
    tracked = await registry.list()
    return SymbolsOut(
        symbols=[
            TrackedSymbolOut(symbol=t.symbol, added_at=t.added_at, source=t.source) for t in tracked
        ]
    )


async def _verify(exchange: ExchangeClient, symbol: str) -> ExchangeCheck:
    """Ask the exchange whether it lists `symbol`; 422 when it does not."""
    try:
        async with asyncio.timeout(VERIFY_TIMEOUT_S):
            listed = await exchange.symbol_exists(symbol)
    except (ExchangeUnavailable, ExchangeError, httpx.HTTPError, TimeoutError) as exc:
        logger.warning("cannot verify %s with the exchange, adding it unverified: %s", symbol, exc)
        return "unavailable"
    if not listed:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "symbol"),
                    "msg": f"{symbol} is not listed on the exchange",
                    "input": symbol,
                }
            ]
        )
    return "listed"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Track a symbol",
    description=(
        "Adds the symbol to the registry; every producer instance subscribes to its trades "
        "within 2 s. 201 when added, 200 when it was tracked already. When "
        "`binance.verify_symbols` is on, a symbol the exchange does not list is refused (422); "
        "if the exchange cannot be reached the symbol is added unverified "
        "(`exchange_check: unavailable`)."
    ),
    responses={
        200: {"model": SymbolChangeOut, "description": "tracked already"},
        201: {"description": "added"},
        400: {"model": ErrorOut, "description": "the body is not parsable JSON"},
        **MUTATION_ERRORS,
    },
    dependencies=[Depends(require_mutation_access)],
)
async def add_symbol(
    body: Annotated[
        SymbolIn,
        Body(
            openapi_examples={
                "lower case": {"summary": "case-insensitive", "value": {"symbol": "adausdt"}},
                "upper case": {"value": {"symbol": "BTCUSDT"}},
            }
        ),
    ],
    response: Response,
    registry: RegistryDep,
    exchange: ExchangeDep,
    settings: SettingsDep,
) -> SymbolChangeOut:
    symbol = body.symbol
    if symbol in await registry.symbols():
        response.status_code = status.HTTP_200_OK
        return SymbolChangeOut(
            symbol=symbol,
            created=False,
            exchange_check="not_checked",
            detail=f"{symbol} is tracked already",
        )
    check: ExchangeCheck = "not_checked"
    if settings.binance.verify_symbols:
        check = await _verify(exchange, symbol)
    created = await registry.add(symbol)
    if not created:  # another request added it meanwhile
        response.status_code = status.HTTP_200_OK
        return SymbolChangeOut(
            symbol=symbol,
            created=False,
            exchange_check=check,
            detail=f"{symbol} is tracked already",
        )
    logger.info("symbol added via API symbol=%s exchange_check=%s", symbol, check)
    detail = f"{symbol} is tracked; {SUBSCRIBE_NOTE}"
    if check == "unavailable":
        detail += " (the exchange did not answer: added without verification)"
    return SymbolChangeOut(symbol=symbol, created=True, exchange_check=check, detail=detail)


@router.delete(
    "/{symbol}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Stop tracking a symbol",
    description=(
        "Removes the symbol from the registry; producers unsubscribe within 2 s. "
        "Its stored trades stay. 404 when it is not tracked."
    ),
    responses={404: {"model": ErrorOut, "description": "not tracked"}, **MUTATION_ERRORS},
    dependencies=[Depends(require_mutation_access)],
)
async def remove_symbol(symbol: SymbolPath, registry: RegistryDep) -> None:
    if not await registry.remove(symbol):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{symbol} is not tracked")
    logger.info("symbol removed via API symbol=%s", symbol)

"""The only place routes get resources from: `Annotated[..., Depends(...)]` aliases.

Resources live in the lifespan state (`AppState`, yielded by api.main's lifespan); Starlette
copies it into every request's `request.state`.

The getters are `async def` although they do not await: FastAPI runs a plain `def` dependency
in the thread pool, a thread hop per request for a dict lookup.
"""

from __future__ import annotations

from typing import Annotated, TypedDict, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from api.probes import LagProbe, ReadinessProbe
from api.reads.prices import PriceReads
from api.stream.hub import StreamHub
from pipeline.core.settings import Settings
from pipeline.exchange.client import ExchangeClient
from pipeline.runtime.pipeline import PipelineControl
from pipeline.storage.registry import SymbolRegistry


class AppState(TypedDict):
    settings: Settings
    engine: AsyncEngine
    exchange: ExchangeClient
    pipeline: PipelineControl
    readiness: ReadinessProbe
    lag: LagProbe
    reads: PriceReads
    stream: StreamHub | None  # None when stream.enabled is false


def _state(request: Request) -> AppState:
    return cast(AppState, request.scope["state"])


async def get_settings(request: Request) -> Settings:
    return _state(request)["settings"]


async def get_engine(request: Request) -> AsyncEngine:
    return _state(request)["engine"]


async def get_reads(request: Request) -> PriceReads:
    return _state(request)["reads"]


async def get_pipeline(request: Request) -> PipelineControl:
    return _state(request)["pipeline"]


async def get_registry(request: Request) -> SymbolRegistry:
    return _state(request)["pipeline"].registry


async def get_exchange(request: Request) -> ExchangeClient:
    return _state(request)["exchange"]


async def get_readiness(request: Request) -> ReadinessProbe:
    return _state(request)["readiness"]


async def get_lag(request: Request) -> LagProbe:
    return _state(request)["lag"]


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
ReadsDep = Annotated[PriceReads, Depends(get_reads)]
PipelineDep = Annotated[PipelineControl, Depends(get_pipeline)]
RegistryDep = Annotated[SymbolRegistry, Depends(get_registry)]
ExchangeDep = Annotated[ExchangeClient, Depends(get_exchange)]
ReadinessDep = Annotated[ReadinessProbe, Depends(get_readiness)]
LagDep = Annotated[LagProbe, Depends(get_lag)]

"""The only place routes get resources from: `Annotated[..., Depends(...)]` aliases.

Resources live in the lifespan state (`AppState`, yielded by api.main's lifespan); Starlette
copies it into every request's `request.state`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, TypedDict, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.probes import LagProbe, ReadinessProbe
from pipeline.exchange import ExchangeClient
from pipeline.registry import SymbolRegistry
from pipeline.service import Pipeline
from pipeline.settings import Settings


class AppState(TypedDict):
    settings: Settings
    engine: AsyncEngine
    exchange: ExchangeClient
    pipeline: Pipeline
    readiness: ReadinessProbe
    lag: LagProbe


def _state(request: Request) -> AppState:
    return cast(AppState, request.scope["state"])


def get_settings(request: Request) -> Settings:
    return _state(request)["settings"]


def get_engine(request: Request) -> AsyncEngine:
    return _state(request)["engine"]


async def get_connection(request: Request) -> AsyncIterator[AsyncConnection]:
    async with _state(request)["engine"].connect() as connection:
        yield connection


def get_pipeline(request: Request) -> Pipeline:
    return _state(request)["pipeline"]


def get_registry(request: Request) -> SymbolRegistry:
    return _state(request)["pipeline"].registry


def get_exchange(request: Request) -> ExchangeClient:
    return _state(request)["exchange"]


def get_readiness(request: Request) -> ReadinessProbe:
    return _state(request)["readiness"]


def get_lag(request: Request) -> LagProbe:
    return _state(request)["lag"]


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
ConnectionDep = Annotated[AsyncConnection, Depends(get_connection)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
RegistryDep = Annotated[SymbolRegistry, Depends(get_registry)]
ExchangeDep = Annotated[ExchangeClient, Depends(get_exchange)]
ReadinessDep = Annotated[ReadinessProbe, Depends(get_readiness)]
LagDep = Annotated[LagProbe, Depends(get_lag)]

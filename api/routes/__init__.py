"""Every router of the API, gathered in one place."""

from fastapi import APIRouter

from api.routes import backfills, health, metrics, pipeline, prices, stream, symbols
from api.routes.dashboard import router as dashboard_router

api_router = APIRouter()
for module in (health, symbols, prices, backfills, pipeline, metrics, stream):
    api_router.include_router(module.router)
api_router.include_router(dashboard_router)  # the page at / (not in the OpenAPI schema)

__all__ = ["api_router"]

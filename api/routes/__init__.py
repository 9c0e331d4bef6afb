"""Every router of the API, gathered in one place."""

from fastapi import APIRouter

from api.routes import health, metrics, pipeline, prices, symbols

api_router = APIRouter()
for module in (health, symbols, prices, pipeline, metrics):
    api_router.include_router(module.router)

__all__ = ["api_router"]

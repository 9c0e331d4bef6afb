"""Field types and models every resource's schemas share."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipeline.core.trade_checks import normalize_symbol

# What clients may send (any case); the API upper-cases it and checks trade_checks.SYMBOL_PATTERN.
SYMBOL_INPUT_PATTERN = r"^[A-Za-z0-9]{2,20}$"
# Epoch milliseconds the API accepts: up to the year 5138, far inside BIGINT.
MAX_EPOCH_MS = 10**14 - 1
MAX_TRADE_ID = 2**63 - 1

SymbolInput = Annotated[
    str,
    Field(
        min_length=2,
        max_length=20,
        pattern=SYMBOL_INPUT_PATTERN,
        description="Binance symbol, case-insensitive (stored upper case)",
        examples=["BTCUSDT"],
    ),
    AfterValidator(normalize_symbol),
]
DecimalString = Annotated[
    str, Field(description="decimal string, exactly as stored", examples=["67123.45000000"])
]
EpochMs = Annotated[int, Field(ge=0, le=MAX_EPOCH_MS, description="epoch milliseconds")]


class ApiModel(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorOut(ApiModel):
    """Every 4xx/5xx answer: `{"detail": ...}` (a message, or FastAPI's validation error list)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "BTCUSDT is not tracked"}]}
    )

    detail: Any

"""Tables and the engine factory, shared by the sink, the registry, the API and migrations/env.py.

The schema itself is owned by Alembic (migrations/versions); these Table objects describe it
for queries and must match the latest migration (a test compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pipeline.core.settings import DatabaseSettings
from pipeline.core.trades import CRYPTO_PRICES_COLUMNS

__all__ = [
    "CRYPTO_PRICES_COLUMNS",
    "backfill_jobs",
    "create_engine",
    "crypto_prices",
    "metadata",
    "tracked_symbols",
]

metadata = MetaData()

crypto_prices = Table(
    "crypto_prices",
    metadata,
    Column("symbol", Text, nullable=False),
    Column("trade_id", BigInteger, nullable=False),
    Column("price", Numeric, nullable=False),
    Column("quantity", Numeric, nullable=False),
    Column("event_time", BigInteger, nullable=False),
    Column("trade_time", BigInteger, nullable=False),
    Column("is_buyer_maker", Boolean, nullable=False),
    Column("processed_at", BigInteger, nullable=False),
    # trade ids are unique per symbol: the natural idempotency key of the sink.
    PrimaryKeyConstraint("symbol", "trade_id", name="crypto_prices_pkey"),
)
# Latest price, history and candles all read one symbol newest-first.
Index(
    "ix_crypto_prices_symbol_trade_time",
    crypto_prices.c.symbol,
    crypto_prices.c.trade_time.desc(),
)

tracked_symbols = Table(
    "tracked_symbols",
    metadata,
    Column("symbol", Text, primary_key=True),
    Column("added_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("source", Text, nullable=False, server_default="api"),
)

# History jobs (POST /backfills), resumable: `position` is the next trade id to fetch, saved
# after each page is in Kafka; `owner`/`heartbeat_at` make sure one instance runs a job.
backfill_jobs = Table(
    "backfill_jobs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("symbol", Text, nullable=False),
    Column("start_time", BigInteger, nullable=False),  # epoch ms, inclusive
    Column("end_time", BigInteger, nullable=False),  # epoch ms, inclusive
    Column("state", Text, nullable=False, server_default="queued"),
    Column("first_id", BigInteger),
    Column("last_id", BigInteger),
    Column("position", BigInteger),
    Column("fetched", BigInteger, nullable=False, server_default="0"),
    Column("stored", BigInteger, nullable=False, server_default="0"),
    Column("stored_to", BigInteger),
    Column("missing", BigInteger, nullable=False, server_default="0"),
    Column("pages", BigInteger, nullable=False, server_default="0"),
    Column("errors", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("rate", Double),
    Column("owner", Text),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("started_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint(
        "state IN ('queued', 'running', 'done', 'failed', 'cancelled')",
        name="backfill_jobs_state",
    ),
    CheckConstraint("end_time > start_time", name="backfill_jobs_range"),
)
# Runners look for the queued and running jobs, oldest first.
Index("ix_backfill_jobs_state_id", backfill_jobs.c.state, backfill_jobs.c.id)

if tuple(column.name for column in crypto_prices.columns) != CRYPTO_PRICES_COLUMNS:
    raise RuntimeError("pipeline.core.trades.CRYPTO_PRICES_COLUMNS no longer matches crypto_prices")

# Channel on which the registry announces symbol changes to every producer instance.
SYMBOLS_CHANNEL = "tracked_symbols_changed"


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An asyncpg-backed engine; `pool_pre_ping` so an engine survives a database restart."""
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )

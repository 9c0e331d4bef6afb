"""The Alembic migrations create exactly the schema of pipeline.storage.tables, and downgrade cleanly."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.storage import migrate
from pipeline.storage.tables import metadata

pytestmark = pytest.mark.integration


async def test_migrated_database_matches_the_tables_the_code_uses(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        diff = await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert diff == []
    assert await migrate.is_at_head(engine)


async def test_crypto_prices_is_keyed_by_symbol_and_trade_id(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        key = await connection.scalar(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'crypto_prices'::regclass AND contype = 'p'"
            )
        )
        index = await connection.scalar(
            text(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_crypto_prices_symbol_trade_time'"
            )
        )
        columns = (
            await connection.execute(
                text(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                    "WHERE table_name = 'crypto_prices' ORDER BY ordinal_position"
                )
            )
        ).all()
    assert key == "PRIMARY KEY (symbol, trade_id)"
    assert "(symbol, trade_time DESC)" in index
    assert columns == [
        ("symbol", "text", "NO"),
        ("trade_id", "bigint", "NO"),
        ("price", "numeric", "NO"),
        ("quantity", "numeric", "NO"),
        ("event_time", "bigint", "NO"),
        ("trade_time", "bigint", "NO"),
        ("is_buyer_maker", "boolean", "NO"),
        ("processed_at", "bigint", "NO"),
    ]


async def test_downgrade_to_base_and_upgrade_again(engine: AsyncEngine) -> None:
    await migrate.downgrade(engine, "base")
    async with engine.connect() as connection:
        tables = set(
            await connection.scalars(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            )
        )
    assert tables == {"alembic_version"}
    assert await migrate.current_revision(engine) is None
    await migrate.upgrade(engine)
    assert await migrate.is_at_head(engine)

"""Alembic environment: async, URL from the app's settings, one code path for CLI and in-process.

In-process callers (app start, test fixtures) pass an open connection in
`config.attributes["connection"]`; the `alembic` CLI gets one from DATABASE_URL / settings.yaml.
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from pipeline.core.settings import load_settings
from pipeline.storage.tables import create_engine, metadata

# Concurrent starts of several instances must not race on the same upgrade.
MIGRATION_LOCK_ID = 0x63727970746F  # "crypto"

config = context.config


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
        context.run_migrations()


async def run_from_settings() -> None:
    engine = create_engine(load_settings().database)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


given = config.attributes.get("connection")
if given is not None:
    run_migrations(given)
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported; run against a database")
    asyncio.run(run_from_settings())

"""The stored-trade reads behind /prices: SQL for asyncpg, and the latest answers kept briefly."""

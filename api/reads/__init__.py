"""The stored-trade reads behind /prices.

prices (PriceReads: the asyncpg pool and every read the routes make) · trades and candles (their
SQL) · cursor (the opaque history cursor) · recent (the latest answers, kept briefly).
"""

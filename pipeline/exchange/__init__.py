"""Binance in: REST client, stream connection, source, gap backfill, pacing."""

"""`make bench`: the one-run benchmark of docs/perf.md.

One run starts its own Kafka + PostgreSQL (or uses `.stack/env`), runs the real service
(`uvicorn api.main:app`) as a separate process against the exchange simulator, and measures, on
the same rows and the same database server: the end-to-end rate and its baselines (a row per
transaction, raw COPY, the sink alone), backlog replay, end-to-end latency at a steady
1,000 msg/s, GET /prices/{symbol} latency idle and under ingest, and the service's peak RSS.
Every run checks its own correctness. Results: a table on stdout and `bench/results/latest.json`.
"""

"""The push feed: live trades from Kafka to SSE and WebSocket clients, resumable exactly.

positions (what a client has of each symbol; the event id; the backfill rule) · events (a trade
rendered once; SSE and WebSocket framing) · client (one stream's bounded buffer) · hub (the
topic tailed once and fanned out; the seam between the table and the feed) · sampler (the
conflated streams) · transports (the event-stream response and the WebSocket loop) · signals
(ending the streams on shutdown). The routes are api.routes.stream.
"""

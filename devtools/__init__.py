"""Development tools, never shipped: the local stack and the exchange simulator."""

"""Kafka: producer, consumer, dead letters, admin, client start/stop."""

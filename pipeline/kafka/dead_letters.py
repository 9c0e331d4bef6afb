"""Dead letters: inputs that are not valid trades, kept on the DLQ topic with the reason."""

from __future__ import annotations

from pipeline.core.settings import KafkaSettings

# A dead letter's value at most; an input frame may be up to binance.max_frame_bytes (1 MiB).
DEAD_LETTER_MAX_BYTES = 256 * 1024


def dead_letter_record(
    settings: KafkaSettings, raw: bytes, reason: str, source: str
) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    """Topic, value and headers of a DLQ record: the raw input, why it failed, where it came from."""
    if len(raw) > DEAD_LETTER_MAX_BYTES:
        # Kafka refuses a record over max_request_size for good, and a refused dead letter
        # would hold up every record behind it: keep the start of the input, and say so.
        reason = f"{reason} [first {DEAD_LETTER_MAX_BYTES} of {len(raw)} bytes kept]"
        raw = raw[:DEAD_LETTER_MAX_BYTES]
    headers = [("error", reason.encode("utf-8", "replace")), ("source", source.encode())]
    return settings.dlq_topic, raw, headers

"""The opaque history cursor: where the next, older page of a symbol's trades starts."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from api.schemas.common import MAX_EPOCH_MS, MAX_TRADE_ID


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position after the last row of a page: the next page holds strictly older rows."""

    trade_time: int
    trade_id: int

    def encode(self) -> str:
        raw = f"{self.trade_time},{self.trade_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor:
        """Parse a cursor from a client; ValueError when it is not one this API issued."""
        if not value or len(value) > 64 or not value.isascii():
            raise ValueError("invalid cursor")
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
        except (binascii.Error, ValueError):
            raise ValueError("invalid cursor") from None
        time_part, sep, id_part = raw.partition(",")
        if not sep or not time_part.isdigit() or not id_part.isdigit():
            raise ValueError("invalid cursor")
        cursor = cls(int(time_part), int(id_part))
        if cursor.trade_time > MAX_EPOCH_MS or cursor.trade_id > MAX_TRADE_ID:
            raise ValueError("invalid cursor")
        if cursor.encode() != value:  # one spelling per position: no lookalike cursors
            raise ValueError("invalid cursor")
        return cursor

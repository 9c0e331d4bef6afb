"""The history cursor: opaque to clients, and only the spellings this API issues are accepted."""

from __future__ import annotations

import pytest

from api.reads.cursor import Cursor
from api.schemas.common import MAX_EPOCH_MS


def test_a_cursor_round_trips_through_its_opaque_encoding() -> None:
    cursor = Cursor(trade_time=1_764_000_000_123, trade_id=4_012_345_678)
    encoded = cursor.encode()
    assert "," not in encoded and "=" not in encoded
    assert Cursor.decode(encoded) == cursor


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not base64!",
        "YSxi",  # "a,b"
        "MTIz",  # "123": no separator
        "LTEsMg",  # "-1,2"
        Cursor(MAX_EPOCH_MS + 1, 1).encode(),
        Cursor(1, 2**63).encode(),
        Cursor(1, 2).encode() + "==",  # another spelling of a valid cursor
        "MSwy" * 20,  # too long
        "é",
    ],
)
def test_cursors_this_api_did_not_issue_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid cursor"):
        Cursor.decode(bad)

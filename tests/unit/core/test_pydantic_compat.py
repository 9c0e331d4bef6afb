"""_pydantic_compat: a model built by `construct` is the model pydantic builds from the same
values, on the pydantic installed, and the module refuses a release or a layout it was not
written for."""

from __future__ import annotations

import copy
import pickle
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core import _pydantic_compat
from pipeline.core._pydantic_compat import check_layout, check_version, construct, field_values
from pipeline.core.trades import TradeEvent
from pipeline.core.versions import spec_of
from tests.pins import pinned_range

VALUES: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "trade_id": 42,
    "price": Decimal("37123.45000000"),
    "quantity": Decimal("0.00120000"),
    "event_time": 1_700_000_000_123,
    "trade_time": 1_700_000_000_120,
    "is_buyer_maker": True,
    "processed_at": 1_700_000_000_200,
}


class _Point(BaseModel):
    model_config = ConfigDict(frozen=True)

    x: int
    y: int = 0


def test_a_constructed_model_is_the_validated_model() -> None:
    built = construct(TradeEvent, dict(VALUES))
    validated = TradeEvent.model_validate(VALUES)
    assert type(built) is TradeEvent
    assert built == validated == TradeEvent.model_construct(**VALUES)
    assert built.model_fields_set == validated.model_fields_set == set(VALUES)
    assert built.model_extra is None
    assert built.model_dump() == validated.model_dump()
    assert built.model_dump_json() == validated.model_dump_json()
    assert hash(built) == hash(validated)
    assert repr(built) == repr(validated)


def test_a_constructed_model_behaves_like_any_other() -> None:
    built = construct(TradeEvent, dict(VALUES))
    with pytest.raises(ValidationError, match="frozen"):
        built.trade_id = 1  # type: ignore[misc]
    assert built.model_copy(update={"trade_id": 43}).trade_id == 43
    assert copy.deepcopy(built) == built
    assert pickle.loads(pickle.dumps(built)) == built
    assert TradeEvent.model_validate_json(built.model_dump_json()) == built


def test_field_values_are_the_fields_by_name_in_declaration_order() -> None:
    for model in (construct(TradeEvent, dict(VALUES)), TradeEvent.model_validate(VALUES)):
        assert list(field_values(model).items()) == list(VALUES.items())
    point = _Point(x=1)
    assert field_values(point) == dict(point) == {"x": 1, "y": 0}
    assert field_values(construct(_Point, {"x": 1, "y": 2})) == {"x": 1, "y": 2}


def test_the_installed_release_stores_models_in_the_layout_filled() -> None:
    check_layout(BaseModel.__slots__)


def test_a_different_layout_is_refused() -> None:
    with pytest.raises(ImportError, match="__pydantic_fields_set__"):
        check_layout(("__dict__", "__pydantic_fields_set__", "__pydantic_extra__"))


def test_the_guard_accepts_exactly_the_range_pyproject_pins() -> None:
    assert spec_of(*_pydantic_compat.SUPPORTED) == pinned_range("pydantic")
    for version in ("2.9.0", "2.14.4", "2.99.0"):
        check_version(version)


@pytest.mark.parametrize("version", ["2.8.2", "1.10.17", "3.0.0", "3.0.0a1"])
def test_a_release_it_was_not_written_for_is_refused_at_import(version: str) -> None:
    with pytest.raises(ImportError, match="pydantic"):
        check_version(version)

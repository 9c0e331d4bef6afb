"""The one module of ours that relies on how pydantic (v2) stores a model instance.

A model's state is four slots: `__dict__` (the field values, in declaration order; with
extra="ignore" and no private attributes nothing else), the set of fields given, the extras and
the private attributes. The trade decoders build a TradeEvent from values they have checked
themselves; pydantic's public `model_construct` does the same but walks the fields, their
aliases and defaults in Python first, which costs more than all the rest of decoding a trade.
So `construct` fills the slots directly, as model_construct does, and `field_values` reads the
field values without copying them. Importing this module with a release outside the range it
was written for raises ImportError, and so does one whose models are stored otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel

from pipeline.core.versions import Release, require_release

# The range pyproject.toml pins.
SUPPORTED: tuple[Release, Release] = ((2, 9), (3,))
# BaseModel's instance layout that `construct` and `field_values` rely on.
LAYOUT = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")

Model = TypeVar("Model", bound=BaseModel)


def check_version(version: str) -> None:
    """ImportError unless `version` of pydantic is one this module was written for."""
    require_release("pydantic", version, *SUPPORTED)


def check_layout(slots: tuple[str, ...]) -> None:
    """ImportError unless BaseModel's `__slots__` are the ones this module fills."""
    if tuple(slots) != LAYOUT:
        raise ImportError(
            f"pydantic's BaseModel stores an instance in {slots!r}, not {LAYOUT!r}: "
            "pipeline.core._pydantic_compat.construct would build broken models"
        )


check_version(pydantic.VERSION)
check_layout(BaseModel.__slots__)

_new = object.__new__
_set = object.__setattr__

# A model's field values, by name in declaration order: the model's own dict, not a copy (never
# change it). Only for models with extra="ignore" or "forbid": with "allow", extras are in it too.
field_values: Callable[[BaseModel], dict[str, Any]] = attrgetter("__dict__")


def construct(model: type[Model], values: dict[str, Any]) -> Model:
    """An instance of `model` holding `values` unvalidated, as `model.model_construct(**values)`
    would build it, for a model without private attributes or a model_post_init.

    `values` must have every field of the model, each by its name, in declaration order, and
    each already valid: nothing is checked, and the dict becomes the model's own.
    """
    instance: Model = _new(model)
    _set(instance, "__dict__", values)
    _set(instance, "__pydantic_fields_set__", set(values))
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance

"""Argument checks shared by the reference models: a bad size is a ConfigError that names
it, before any tensor is allocated."""

from __future__ import annotations

from typing import Any

from torchshrink.errors import ConfigError

# Reference models are small by design; a dimension beyond this is a typo or a hostile file.
MAX_DIM = 2**20


def check_size(model: str, name: str, value: Any, *, low: int = 1, high: int = MAX_DIM) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"{model}: {name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def check_sizes(model: str, name: str, values: Any, *, low: int = 1, high: int = MAX_DIM) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= 64:
        raise ConfigError(f"{model}: {name} must be a non-empty list of at most 64 integers, got {values!r}")
    return tuple(check_size(model, f"{name}[{i}]", v, low=low, high=high) for i, v in enumerate(values))

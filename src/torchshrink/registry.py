"""Method name -> (config class, handler). Recipes, the CLI and contract tests go through here.

A handler is `(module, config, context) -> module`. It returns the same object when it only
attaches parametrizations, or a new module when it changes structure.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from torchshrink.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from torch import nn

    from torchshrink.config import Config

__all__ = ["Context", "Method", "Family", "register", "get_method", "methods", "name_of"]

Family = Literal["prune", "quant", "lowrank", "cluster", "distill", "other"]
C = TypeVar("C", bound="type[Config]")


@dataclasses.dataclass
class Context:
    """What a handler may need beyond the model: example input, data and scoring.

    example: one input batch (tensor or tuple), used for tracing and shape checks.
    calibration: an iterable of batches for observers and data-driven criteria.
    train / val: loaders for fine-tuning stages.
    evaluate: `model -> float` task metric, higher is better.
    progress: whether long work shows a progress bar.
    """

    example: Any = None
    calibration: Iterable[Any] | None = None
    train: Iterable[Any] | None = None
    val: Iterable[Any] | None = None
    evaluate: Callable[[nn.Module], float] | None = None
    progress: bool = True
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


Handler = Callable[["nn.Module", Any, Context], "nn.Module"]


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    config: type[Config]
    handler: Handler
    family: Family


_METHODS: dict[str, Method] = {}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _key(name: str) -> str:
    """Lookup key: 'MagnitudePruning', 'magnitude_pruning' and 'magnitude-pruning' all match."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def register(*, family: Family, handler: Handler, name: str | None = None) -> Callable[[C], C]:
    """Class decorator: `@register(family="prune", handler=apply_magnitude)`.

    The method name defaults to the class name in snake_case (MagnitudePruning ->
    magnitude_pruning).
    """

    def deco(cls: C) -> C:
        method_name = name or _snake(cls.__name__)
        key = _key(method_name)
        existing = _METHODS.get(key)
        if existing is not None and existing.config is not cls:
            raise ConfigError(f"method name {method_name!r} is already registered by {existing.config.__name__}")
        _METHODS[key] = Method(method_name, cls, handler, family)
        return cls

    return deco


def get_method(name: str) -> Method:
    m = _METHODS.get(_key(name))
    if m is None:
        raise ConfigError(f"unknown method {name!r}." + did_you_mean(name, [m.name for m in _METHODS.values()]))
    return m


def methods(family: Family | None = None) -> list[Method]:
    return sorted((m for m in _METHODS.values() if family in (None, m.family)), key=lambda m: m.name)


def name_of(config_cls: type[Config]) -> str:
    for m in _METHODS.values():
        if m.config is config_cls:
            return m.name
    return _snake(config_cls.__name__)

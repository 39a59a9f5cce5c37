"""The verbs: `apply` runs any registered method; `prune`, `quantize`, `factorize` and
`cluster` are the same call with a check that the config belongs to that family."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from torchshrink.config import Config
from torchshrink.errors import ConfigError
from torchshrink.nn import coverage, kinds
from torchshrink.nn.history import HISTORY_ATTR
from torchshrink.nn.select import expand
from torchshrink.registry import Context, Family, get_method

__all__ = ["apply", "recorded", "prune", "quantize", "factorize", "cluster", "HISTORY_ATTR"]



def apply(
    model: nn.Module,
    config: Config,
    *,
    example: Any = None,
    calibration: Iterable[Any] | None = None,
    train: Iterable[Any] | None = None,
    val: Iterable[Any] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    progress: bool = True,
    family: Family | None = None,
    **extras: Any,
) -> nn.Module:
    """Apply one method config to `model` and return the result (the same object where the
    structure is unchanged)."""
    if not isinstance(config, Config):
        raise ConfigError(
            f"expected a torchshrink method config (e.g. ts.MagnitudePruning(sparsity=0.9)), got "
            f"{type(config).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected an nn.Module to compress, got {type(model).__name__}")
    method = get_method(config.method_name())
    if family is not None and method.family != family:
        raise ConfigError(
            f"{type(config).__name__} is a {method.family} method; use ts.{_VERB.get(method.family, 'apply')}() "
            f"(or ts.apply) instead of ts.{_VERB[family]}()"
        )
    ctx = Context(example=example, calibration=calibration, train=train, val=val, evaluate=evaluate,
                  progress=progress, extras=dict(extras))
    return recorded(model, config, lambda m: method.handler(m, config, ctx))


def recorded(model: nn.Module, config: Config, change: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Run `change` (what applies `config` to the model) with the bookkeeping every method
    gets: foreign layer kinds converted first (a Hugging Face Conv1D becomes a Linear), the
    layers it left untouched recorded and warned about, the config added to the history.
    `apply` runs a method's handler through it; `compress` runs a gradual pruning fine-tune."""
    family = get_method(config.method_name()).family
    converted: list[tuple[str, str]] = []
    if family in _LAYER_FAMILIES and getattr(type(config), "convert_kinds", True):
        converted = kinds.normalize(model)
    sizes = kinds.weight_matrices(model)
    before = coverage.snapshot(model)
    excluded = _excluded(model, config, sizes)
    out = change(model)
    if family in _LAYER_FAMILIES:
        coverage.record(model, out, before, sizes, method=type(config).__name__, excluded=excluded,
                        converted=converted)
    history = list(getattr(model, HISTORY_ATTR, []))
    history.append(config.to_dict())
    object.__setattr__(out, HISTORY_ATTR, history)  # plain attribute, not a submodule/buffer
    return out


# Families whose methods edit layers: foreign kinds are converted first, and coverage recorded.
_LAYER_FAMILIES = frozenset({"prune", "quant", "lowrank", "cluster"})


def _excluded(model: nn.Module, config: Config, sizes: dict[str, tuple[str, int]]) -> set[str]:
    """Layers the user's targets/ignore patterns leave out (skipped on request, not warned about)."""
    targets = getattr(config, "targets", None)
    ignore = tuple(getattr(config, "ignore", ()) or ())
    layers = [(n, model.get_submodule(n)) for n in sizes]
    inside = set(sizes) if targets is None else {n for p in targets for n in expand(p, layers)}
    ignored = {n for p in ignore for n in expand(p, layers)}
    return (set(sizes) - inside) | ignored


_VERB: dict[str, str] = {"prune": "prune", "quant": "quantize", "lowrank": "factorize", "cluster": "cluster"}


def prune(model: nn.Module, config: Config, example: Any = None, calibration: Iterable[Any] | None = None,
          **kw: Any) -> nn.Module:
    return apply(model, config, example=example, calibration=calibration, family="prune", **kw)


def quantize(model: nn.Module, config: Config, calibration: Iterable[Any] | None = None, **kw: Any) -> nn.Module:
    return apply(model, config, calibration=calibration, family="quant", **kw)


def factorize(model: nn.Module, config: Config, **kw: Any) -> nn.Module:
    return apply(model, config, family="lowrank", **kw)


def cluster(model: nn.Module, config: Config, **kw: Any) -> nn.Module:
    return apply(model, config, family="cluster", **kw)

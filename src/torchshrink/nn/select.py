"""Choosing which layers a method touches: target types, include and ignore patterns.

Patterns are shell globs on dotted module names (`features.*`, `*.fc1`), or regular
expressions with a `re:` prefix (`re:blocks\\.[0-3]\\.attn`). A pattern that matches no layer
is an error listing the layer names, because a silent no-op is the worst outcome of a typo.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from torch import nn

from torchshrink.errors import ConfigError

__all__ = ["matches", "select_layers", "resolve_per_layer", "DEFAULT_TYPES"]

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
V = TypeVar("V")


def matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _layer_list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
    return shown or "(none)"


def select_layers(
    model: nn.Module,
    *,
    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
    targets: Iterable[str] | None = None,
    ignore: Iterable[str] = (),
    what: str = "targets",
) -> list[tuple[str, nn.Module]]:
    """(name, module) for every module of `types` matching `targets` (all when None) and no
    `ignore` pattern, in model order. Unmatched patterns raise ConfigError naming the layers."""
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, types) and n]
    names = [n for n, _ in candidates]
    target_list = list(targets) if targets is not None else None
    ignore_list = list(ignore)
    for label, pats in (("targets", target_list or []), ("ignore", ignore_list)):
        for p in pats:
            if not any(matches(n, p) for n in names):
                kinds = "/".join(t.__name__ for t in types)
                raise ConfigError(
                    f"{what if label == 'targets' else 'ignore'} pattern {p!r} matches no {kinds} layer "
                    f"in {type(model).__name__}. Layers: {_layer_list(names)}"
                )
    out = []
    for n, m in candidates:
        if target_list is not None and not any(matches(n, p) for p in target_list):
            continue
        if any(matches(n, p) for p in ignore_list):
            continue
        out.append((n, m))
    return out


def resolve_per_layer(
    name: str, per_layer: Mapping[str, V] | None, default: V
) -> V:
    """The value for layer `name`: the first matching pattern in `per_layer`, else default."""
    if per_layer:
        for pattern, value in per_layer.items():
            if matches(name, pattern):
                return value
    return default


def check_per_layer_patterns(model: nn.Module, per_layer: Mapping[str, object] | None,
                             types: tuple[type[nn.Module], ...] = DEFAULT_TYPES) -> None:
    """Every per_layer pattern must match some layer (same error as select_layers)."""
    if per_layer:
        select_layers(model, types=types, targets=list(per_layer), what="per_layer")

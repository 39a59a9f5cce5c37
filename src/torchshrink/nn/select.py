"""Choosing which layers a method touches: target types, include and ignore patterns.

Patterns are shell globs on dotted module names (`features.*`, `*.fc1`), or regular
expressions with a `re:` prefix (`re:blocks\\.[0-3]\\.attn`), or, so one recipe applies to
models whose layers are named otherwise:
- a layer type by class name (`Linear`, `Conv2d`, `Embedding`; any class in the layer's MRO),
- a position among the selected layers (`first`, `last`),
- a role (`role:attention`, `role:mlp`, `role:embedding`, `role:head` = the last layer).
A pattern that matches no layer is an error listing the layer names, because a silent no-op
is the worst outcome of a typo.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from torch import nn

from torchshrink.errors import ConfigError

__all__ = ["matches", "expand", "select_layers", "resolve_per_layer", "DEFAULT_TYPES", "ROLES", "POSITIONS"]

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
V = TypeVar("V")


def matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


POSITIONS = ("first", "last")
# Name fragments of the usual attention and MLP projections (PyTorch, Hugging Face BERT/GPT-2/
# OPT/Llama/ViT, timm), matched on the last two name parts.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "attention": ("*attn*", "*attention*", "q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "query", "key",
                  "value", "c_attn", "qkv"),
    "mlp": ("*mlp*", "*ffn*", "fc1", "fc2", "linear1", "linear2", "intermediate*", "gate_proj", "up_proj",
            "down_proj", "c_fc", "dense_h_to_4h", "dense_4h_to_h"),
}
ROLES = (*ROLE_NAMES, "embedding", "head")


def _is_type_name(pattern: str) -> bool:
    return pattern[:1].isupper() and pattern.isidentifier()


def expand(pattern: str, layers: Sequence[tuple[str, nn.Module]]) -> list[str]:
    """The names of `layers` (in model order) that `pattern` selects."""
    names = [n for n, _ in layers]
    if pattern in POSITIONS or pattern == "role:head":
        return names[:1] if pattern == "first" else names[-1:]
    if pattern.startswith("role:"):
        role = pattern[5:]
        if role == "embedding":
            return [n for n, m in layers if isinstance(m, nn.Embedding)]
        if role not in ROLE_NAMES:
            raise ConfigError(f"unknown layer role {role!r} in pattern {pattern!r}; roles: {', '.join(ROLES)}")
        return [n for n in names if any(fnmatch.fnmatchcase(part, frag) for part in n.split(".")[-2:]
                                        for frag in ROLE_NAMES[role])]
    if _is_type_name(pattern):
        typed = [n for n, m in layers if any(c.__name__ == pattern for c in type(m).__mro__)]
        if typed:
            return typed
    return [n for n in names if matches(n, pattern)]


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
    picked: dict[str, set[str]] = {}
    for label, pats in (("targets", target_list or []), ("ignore", ignore_list)):
        for p in pats:
            picked[p] = set(expand(p, candidates))
            if not picked[p]:
                kinds = "/".join(t.__name__ for t in types)
                raise ConfigError(
                    f"{what if label == 'targets' else 'ignore'} pattern {p!r} matches no {kinds} layer "
                    f"in {type(model).__name__}. Layers: {_layer_list(names)}"
                )
    out = []
    for n, m in candidates:
        if target_list is not None and not any(n in picked[p] for p in target_list):
            continue
        if any(n in picked[p] for p in ignore_list):
            continue
        out.append((n, m))
    return out


def resolve_per_layer(
    name: str, per_layer: Mapping[str, V] | None, default: V,
    layers: Sequence[tuple[str, nn.Module]] | None = None,
) -> V:
    """The value for layer `name`: the first matching pattern in `per_layer`, else default.
    With `layers` (the selected layers), type, position and role patterns resolve too."""
    if per_layer:
        for pattern, value in per_layer.items():
            if name in (expand(pattern, layers) if layers is not None else
                        [name] if matches(name, pattern) else []):
                return value
    return default


def check_per_layer_patterns(model: nn.Module, per_layer: Mapping[str, object] | None,
                             types: tuple[type[nn.Module], ...] = DEFAULT_TYPES) -> None:
    """Every per_layer pattern must match some layer (same error as select_layers)."""
    if per_layer:
        select_layers(model, types=types, targets=list(per_layer), what="per_layer")

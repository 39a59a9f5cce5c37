"""Shapes that layers see in a real forward pass (cost models need them; weights alone do not
say how many positions a convolution or a sequence layer runs at)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

__all__ = ["Shapes", "record_inputs", "record_shapes"]


@dataclasses.dataclass
class Shapes:
    inp: tuple[int, ...]
    out: tuple[int, ...]


def record_shapes(model: nn.Module, example: Any, types: tuple[type[nn.Module], ...],
                  names: set[str] | None = None) -> dict[str, Shapes]:
    """Input and output shapes of every module of `types` (optionally only `names`) in one
    eval-mode forward of `example`, through forward hooks that are removed afterwards."""
    shapes: dict[str, Shapes] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, types) and (names is None or name in names):
            def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor, name: str = name) -> None:
                shapes[name] = Shapes(tuple(args[0].shape), tuple(out.shape))
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example) if isinstance(example, tuple) else model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def record_inputs(model: nn.Module, batches: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """The first positional input of each named module over `batches` (an iterable of batches
    as the model takes them), concatenated along the batch dimension, from eval-mode forwards."""
    from torchshrink.batches import call_model

    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []
    for name in names:
        def hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                seen[name].append(args[0].detach())
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items() if v}

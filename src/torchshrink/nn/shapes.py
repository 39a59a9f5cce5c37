"""Shapes that layers see in a real forward pass (cost models need them; weights alone do not
say how many positions a convolution or a sequence layer runs at)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

__all__ = ["Shapes", "record_shapes"]


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

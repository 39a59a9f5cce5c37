"""What a factorization costs: parameters, and per-sample multiply-adds of each Linear/Conv2d
dense and per unit of rank, from the shapes a forward pass on the example records."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from torchshrink.lowrank.svd import ConvMode
from torchshrink.nn.shapes import Shapes, record_shapes

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

__all__ = ["LAYER_TYPES", "count_params", "dense_macs", "layer_macs", "macs_per_rank"]


def count_params(model: nn.Module) -> int:
    """Parameters of the model, each shared tensor once (parametrized weights count their
    stored original, as the optimizer sees them)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def dense_macs(m: nn.Module, sh: Shapes) -> int:
    """Multiply-adds of one Linear/Conv2d per sample (batch dimension divided out)."""
    batch = sh.out[0] if len(sh.out) > 1 else 1
    if isinstance(m, nn.Linear):
        return math.prod(sh.out) // batch * m.in_features
    assert isinstance(m, nn.Conv2d)
    cin_g = m.in_channels // m.groups
    return math.prod(sh.out) // batch * cin_g * m.kernel_size[0] * m.kernel_size[1]


def layer_macs(model: nn.Module, example: Any) -> dict[str, int]:
    """Per-sample multiply-adds of every Linear and Conv2d in `model` (factor pairs count as
    their two children), measured with forward hooks on `example`."""
    shapes = record_shapes(model, example, LAYER_TYPES)
    mods = dict(model.named_modules())
    return {n: dense_macs(mods[n], sh) for n, sh in shapes.items()}


def macs_per_rank(m: nn.Module, sh: Shapes, mode: ConvMode) -> int:
    batch = sh.out[0] if len(sh.out) > 1 else 1
    if isinstance(m, nn.Linear):
        positions = math.prod(sh.out) // batch // m.out_features
        return positions * (m.in_features + m.out_features)
    assert isinstance(m, nn.Conv2d)
    hw_out = sh.out[-2] * sh.out[-1]
    kh, kw = m.kernel_size
    if mode == "channel":
        return hw_out * (m.in_channels * kh * kw + m.out_channels)
    # first conv (kh x 1) runs at output height and input width; second (1 x kw) at output size
    return sh.out[-2] * sh.inp[-1] * m.in_channels * kh + hw_out * m.out_channels * kw

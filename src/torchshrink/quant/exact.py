"""Running weight-only layers on their exact float path for a while (the function an exported
file must match)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from torchshrink.quant.weight_only import WeightOnlyLayer

__all__ = ["exact_arithmetic"]


@contextlib.contextmanager
def exact_arithmetic(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, `model`'s weight-only layers run the exact float path instead of the
    int4 CPU kernel (which rounds activations and scales to bfloat16). An exported file computes
    in float, so this is the function it must match; the setting is restored on exit."""
    layers = [m for m in model.modules() if isinstance(m, WeightOnlyLayer) and m.cpu_kernel is not False]
    saved = [m.cpu_kernel for m in layers]
    try:
        for m in layers:
            m.cpu_kernel = False
        yield model
    finally:
        for m, c in zip(layers, saved):
            m.cpu_kernel = c

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
    """Inside the block, `model`'s weight-only layers (and int4-kernel inference forms) run the
    exact float path instead of the int4 CPU kernel (which rounds activations and scales to bfloat16). An exported file computes
    in float, so this is the function it must match; the setting is restored on exit."""
    layers = [m for m in model.modules() if isinstance(m, WeightOnlyLayer) and m.cpu_kernel is not False]
    saved = [m.cpu_kernel for m in layers]
    # Other modules with a low-precision kernel say so by a `float_reference` flag (the
    # inference form's Int4Linear): set, they compute their weight's exact float product.
    flagged = [m for m in model.modules() if getattr(m, "float_reference", None) is False]
    try:
        for m in layers:
            m.cpu_kernel = False
        for f in flagged:
            setattr(f, "float_reference", True)  # noqa: B010 (a flag of another family's module)
        yield model
    finally:
        for m, c in zip(layers, saved):
            m.cpu_kernel = c
        for f in flagged:
            setattr(f, "float_reference", False)  # noqa: B010

"""Multiply-accumulates, counted by tracing one forward pass.

torch's FlopCounterMode sees every aten op the forward really runs (mm, addmm, bmm,
convolution, scaled-dot-product attention), so the count follows the model's actual control
flow rather than a per-layer formula table. MACs = FLOPs / 2 (one multiply plus one add).
Bias additions, activations, pooling and normalization are not counted, which matches the
numbers papers quote (LeNet-300-100: 266,200; LeNet-5: 2,293,000).

Ops torch does not count can be taught with `register_mac_formula`: a later family whose layer
calls a custom kernel (an int8 GEMM, a sparse matmul) registers the op with a FLOP formula over
input shapes, in torch's `register_flop_formula` convention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter

__all__ = ["count_macs", "register_mac_formula", "slice_batch"]

_EXTRA_FORMULAS: dict[Any, Callable[..., int]] = {}


def register_mac_formula(op: Any, flops: Callable[..., int]) -> None:
    """Count `op` (e.g. `torch.ops.aten.some_op.default`) with `flops(*input_shapes, out_shape=...,
    **kwargs) -> int`. The function returns FLOPs (2 per MAC), as torch's own formulas do."""
    _EXTRA_FORMULAS[op] = flops


def _sdpa_cpu_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                    out_shape: Any = None, **kwargs: Any) -> int:
    # The CPU flash kernel is not in torch's table; it does the same two batched matmuls.
    return int(flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape))


_cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
if _cpu_flash is not None:
    register_mac_formula(_cpu_flash, _sdpa_cpu_flops)


def slice_batch(example: Any, batch: int) -> Any:
    """The example with its leading (batch) dimension resized to `batch`: rows are taken from the
    front and repeated cyclically when more are needed. Tuples, lists and dicts are handled per
    element; non-tensors pass through."""
    if isinstance(example, torch.Tensor):
        if example.dim() == 0:
            return example
        n = example.shape[0]
        if n >= batch:
            return example[:batch]
        reps = -(-batch // n)
        return example.repeat(reps, *([1] * (example.dim() - 1)))[:batch]
    if isinstance(example, (tuple, list)):
        return type(example)(slice_batch(e, batch) for e in example)
    if isinstance(example, dict):
        return {k: slice_batch(v, batch) for k, v in example.items()}
    return example


def call(model: nn.Module, example: Any) -> Any:
    """Run the model on an example: a tensor, a tuple/list of positional inputs or a dict of
    keyword inputs."""
    if isinstance(example, (tuple, list)):
        return model(*example)
    if isinstance(example, dict):
        return model(**example)
    return model(example)


def count_macs(model: nn.Module, example: Any) -> tuple[int, dict[str, int]]:
    """(total MACs, MACs per module name) of one forward on `example`, in eval mode."""
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=dict(_EXTRA_FORMULAS))
    was_training = model.training
    model.eval()
    try:
        with counter, torch.no_grad():
            call(model, example)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    per_module: dict[str, int] = {}
    for key, ops in counts.items():
        if key == "Global" or "." not in key:
            continue
        # Keys are "<RootClass>.<dotted module name>".
        per_module[key.split(".", 1)[1]] = sum(ops.values()) // 2
    return int(counter.get_total_flops()) // 2, per_module

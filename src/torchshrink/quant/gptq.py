"""GPTQ (Frantar et al. 2022): round a layer's weights to the grid one input column at a time
and move each column's rounding error onto the columns not yet rounded, weighted by the inverse
Hessian of the layer's inputs (H = X^T X over calibration data), so that the layer's output on
that data, not its weights, stays as close as possible to the float layer. At 3-4 bits this
keeps far more of a transformer's quality than rounding to nearest (RTN).

The result is the same `WeightOnlyLayer` (packed codes, one scale per group) that RTN produces:
GPTQ only chooses better codes, so storage and inference are unchanged. Group scales are chosen
when the sweep reaches the group's first column, from the weights as updated so far (as the
reference implementation does); pruned zeros (exact zeros of a parametrized weight) stay zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from torchshrink.batches import call_model, iter_calibration, to_device
from torchshrink.errors import ConfigError
from torchshrink.nn.obs import inverse_hessian_factor, obs_sweep
from torchshrink.quant.fake import (
    Granularity,
    WeightMethod,
    dequantize_codes,
    grid_params,
    h_blocks_for,
    quantize_codes,
)

__all__ = ["gptq_codes", "next_hessians"]


def gptq_codes(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int, symmetric: bool,
               granularity: Granularity, group_size: int | None, method: WeightMethod = "minmax",
               keep_zero: torch.Tensor | None = None, damping: float = 0.01, blocksize: int = 128
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, zero) for `weight` viewed as (out, in_width), in the row order of
    `group_rows(weight, granularity, group_size)`: codes (groups, values) int16, scale and zero
    (groups, 1). `keep_zero`: entries forced to exactly 0 (a pruning mask's zeros)."""
    if granularity == "tensor":
        raise ValueError("gptq_codes handles per-channel and group grids; tensor grids use RTN")
    w = weight.detach().float().reshape(weight.shape[0], -1).clone()
    rows, cols = w.shape
    hinv = inverse_hessian_factor(hessian, w, damping)
    per_group = group_size if granularity == "group" and group_size is not None else cols
    ngroups = cols // per_group
    scale = torch.ones(rows, ngroups)
    zero = torch.zeros(rows, ngroups)
    blocks = h_blocks_for(hessian.detach().float(), granularity, group_size) if method == "output" else None
    if granularity != "group":  # one grid per output row, from the weights before the sweep
        s, z = grid_params(w, bits, symmetric, method, h_blocks=blocks)
        scale[:], zero[:] = s, z
    forced = None if keep_zero is None else keep_zero.reshape(rows, cols).to(torch.bool)

    def fix(col: int, i: int, w1: torch.Tensor, hinv1: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        g = col // per_group
        if granularity == "group" and col % per_group == 0:
            here = w1[:, i:i + per_group]
            grp = here if here.shape[1] == per_group else torch.cat([here, rest[:, : per_group - here.shape[1]]], 1)
            s, z = grid_params(grp, bits, symmetric, method, h_blocks=None if blocks is None else blocks[g : g + 1])
            scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
        s, z = scale[:, g : g + 1], zero[:, g : g + 1]
        x = w1[:, i : i + 1]
        if forced is not None:
            x = torch.where(forced[:, col : col + 1], torch.zeros_like(x), x)
        return dequantize_codes(quantize_codes(x, s, z, bits, symmetric), s, z, bits, symmetric)[:, 0]

    q = obs_sweep(w, hinv, fix, blocksize=blocksize)
    grp_rows = q.reshape(rows * ngroups, per_group)
    s_flat, z_flat = scale.reshape(-1, 1), zero.reshape(-1, 1)
    return quantize_codes(grp_rows, s_flat, z_flat, bits, symmetric), s_flat, z_flat


class _Stop(Exception):
    """Raised inside a forward hook: the layers this pass needed have seen their input."""


def next_hessians(model: nn.Module, pending: Sequence[tuple[str, nn.Module]], calibration: Iterable[Any], *,
                  limit: int | None) -> dict[str, torch.Tensor]:
    """X^T X of the first pending layer the forward reaches and of every pending layer that
    reads the very same input tensor (q, k and v projections, say), over the calibration batches.

    Each forward stops at the next layer with another input, so a pass costs only the model up
    to there; passes follow the forward order, so every layer before the group already carries
    its quantized weights (GPTQ's sequential mode) while the group is measured."""
    from torchshrink.prune.criteria import input_features

    hess: dict[str, torch.Tensor] = {}
    state: dict[str, Any] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if state.get("x0") is None:
                state["x0"] = x
            elif x is not state["x0"]:
                raise _Stop
            rows = input_features(module, x.detach().float())
            h = rows.T @ rows
            hess[name] = hess[name] + h if name in hess else h
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in pending]
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in iter_calibration(calibration, limit):
                state["x0"] = None
                with contextlib.suppress(_Stop):
                    call_model(model, to_device(batch, dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if not hess:
        raise ConfigError(f"calibration data never reached layers {[n for n, _ in pending]}; check the loader is "
                          "not empty and that these layers run in the model's forward")
    return hess

"""GPTQ (Frantar et al. 2022): round a layer's weights to the grid one input column at a time
and move each column's rounding error onto the columns not yet rounded, weighted by the inverse
Hessian of the layer's inputs (H = X^T X over calibration data), so that the layer's output on
that data, not its weights, stays as close as possible to the float layer. At 3-4 bits this
keeps far more of a transformer's quality than rounding to nearest (RTN).

The result is the same `WeightOnlyLayer` (packed codes, one scale per group) that RTN produces:
GPTQ only chooses better codes, so storage and inference are unchanged. Group scales are chosen
when the sweep reaches the group's first column, from the weights as updated so far (as the
reference implementation does); pruned zeros (exact zeros of a parametrized weight) stay zero.

Act-order (`desc_act=True`) sweeps the columns by descending Hessian diagonal, so the inputs
that carry the most energy are rounded first, while most columns are still free to absorb
their error. Groups stay contiguous in the original column order (so storage and kernels are
unchanged): their scales are chosen before the sweep ("static groups"), since a group's
columns are no longer reached together.
"""

from __future__ import annotations

import torch

from torchshrink.nn.obs import inverse_hessian_factor, obs_sweep
from torchshrink.quant.fake import (
    Granularity,
    WeightMethod,
    dequantize_codes,
    grid_params,
    h_blocks_for,
    quantize_codes,
)

__all__ = ["gptq_codes"]


# Rows per sweep: every output row is rounded independently (they share only the inverse
# Hessian), so a large layer (an LM head) is swept in slices of about this many weights, and
# its working copies stay a slice, not the layer, in size.
CHUNK_VALUES = 1 << 22


def gptq_codes(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int, symmetric: bool,
               granularity: Granularity, group_size: int | None, method: WeightMethod = "minmax",
               keep_zero: torch.Tensor | None = None, damping: float = 0.01, blocksize: int = 128,
               desc_act: bool = False, chunk_values: int = CHUNK_VALUES
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, zero) for `weight` viewed as (out, in_width), in the row order of
    `group_rows(weight, granularity, group_size)`: codes (groups, values) uint8, scale and zero
    (groups, 1). `keep_zero`: entries forced to exactly 0 (a pruning mask's zeros)."""
    if granularity == "tensor":
        raise ValueError("gptq_codes handles per-channel and group grids; tensor grids use RTN")
    w_all = weight.detach().reshape(weight.shape[0], -1)
    rows, cols = w_all.shape
    per_group = group_size if granularity == "group" and group_size is not None else cols
    ngroups = cols // per_group
    h = hessian.detach().float()
    blocks = h_blocks_for(h, granularity, group_size) if method == "output" else None
    order = torch.argsort(h.diagonal(), descending=True, stable=True) if desc_act else None
    dead = h.diagonal() == 0  # inputs that never fire: their columns are set to 0
    if order is not None:  # sweep in act order; column j of the sweep is column order[j] of the layer
        h = h[order][:, order]
    hinv = inverse_hessian_factor(h, w_all.new_zeros(0, cols, dtype=torch.float32), damping)
    del h
    forced_all = None if keep_zero is None else keep_zero.reshape(rows, cols).to(torch.bool)
    step = max(1, chunk_values // max(cols, 1))
    codes = torch.empty(rows * ngroups, per_group, dtype=torch.uint8)
    scale = torch.ones(rows, ngroups)
    zero = torch.zeros(rows, ngroups)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        w = w_all[r0:r1].float().clone()
        w[:, dead] = 0.0
        c, s, z = _sweep(w, None if forced_all is None else forced_all[r0:r1], hinv, order, bits=bits,
                         symmetric=symmetric, granularity=granularity, per_group=per_group, method=method,
                         blocks=blocks, blocksize=blocksize)
        codes[r0 * ngroups:r1 * ngroups] = c
        scale[r0:r1], zero[r0:r1] = s, z
    return codes, scale.reshape(-1, 1), zero.reshape(-1, 1)


def _sweep(w: torch.Tensor, forced: torch.Tensor | None, hinv: torch.Tensor, order: torch.Tensor | None, *,
           bits: int, symmetric: bool, granularity: Granularity, per_group: int, method: WeightMethod,
           blocks: torch.Tensor | None, blocksize: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on the rows `w` (float, updated in place): (codes uint8 (rows * groups, per_group),
    scale and zero (rows, groups))."""
    rows, cols = w.shape
    ngroups = cols // per_group
    scale = torch.ones(rows, ngroups)
    zero = torch.zeros(rows, ngroups)
    if granularity != "group" or order is not None:  # grids from the weights before the sweep
        gr = w.reshape(rows * ngroups, per_group)
        s, z = grid_params(gr, bits, symmetric, method, h_blocks=blocks)
        scale[:], zero[:] = s.reshape(rows, ngroups), z.reshape(rows, ngroups)
    if order is not None:
        w = w[:, order]
        forced = None if forced is None else forced[:, order]
    group_of = None if order is None else [j // per_group for j in order.tolist()]

    def fix(col: int, i: int, w1: torch.Tensor, hinv1: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        g = col // per_group if group_of is None else group_of[col]
        if granularity == "group" and order is None and col % per_group == 0:
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
    if order is not None:
        q = q[:, torch.argsort(order)]
    grp_rows = q.reshape(rows * ngroups, per_group)
    codes = quantize_codes(grp_rows, scale.reshape(-1, 1), zero.reshape(-1, 1), bits, symmetric).to(torch.uint8)
    return codes, scale, zero

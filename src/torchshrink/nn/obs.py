"""The column sweep of Optimal Brain Surgeon that SparseGPT and GPTQ share (Frantar & Alistarh
2022, 2023): fix one column of a layer's weight at a time (prune it, or round it to a grid) and
move its error onto the columns not yet fixed, weighted by the inverse Hessian of the layer's
inputs, H = X^T X, so the layer's output on the calibration data changes as little as possible.

Both methods differ only in what "fix a column" means; that is the `fix` callback here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["inverse_hessian_factor", "obs_sweep", "FixColumn"]

# fix(col, i, w_block, hinv_block, rest) -> the fixed column. `col` is the global column
# index, `i` its index in the block; `w_block` holds the block's current (updated) columns and
# `rest` the columns after the block, for callbacks that look ahead (a quantization group, an
# N:M group) across the block boundary.
FixColumn = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def inverse_hessian_factor(hessian: torch.Tensor, w: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    """The upper Cholesky factor of (H + damping * mean(diag H) * I)^-1. Inputs that never fire
    (zero diagonal) get H_jj = 1 and their weight column set to 0 in `w` (in place)."""
    cols = hessian.shape[0]
    h = hessian.detach().float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damping * h.diagonal().mean().clamp_min(1e-8) * torch.eye(cols, device=h.device)
    # Row i of the factor holds the update of the columns after i when column i is fixed (the
    # trick that makes the sequential updates cheap). H^-1 = L^-T L^-1 through a triangular
    # solve: torch.cholesky_inverse is orders of magnitude slower on some CPU builds.
    l_inv = torch.linalg.solve_triangular(torch.linalg.cholesky(h), torch.eye(cols, device=h.device), upper=False)
    return torch.linalg.cholesky(l_inv.T @ l_inv, upper=True)


def obs_sweep(w: torch.Tensor, hinv: torch.Tensor, fix: FixColumn, *, blocksize: int = 128,
              before_block: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Fix every column of `w` (rows, cols; float, modified in place and returned) left to right
    with `fix`, propagating each error through `hinv` (from `inverse_hessian_factor`).
    `before_block(i1, i2, w_block, hinv_block)` runs at the start of each block of columns."""
    cols = w.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        if before_block is not None:
            before_block(i1, i2, w1, hinv1)
        rest = w[:, i2:]
        for i in range(i2 - i1):
            col = w1[:, i]
            q = fix(i1 + i, i, w1, hinv1, rest)
            q1[:, i] = q
            e = (col - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w

"""AWQ (Lin et al. 2024, "Activation-aware Weight Quantization"): the few input channels that
carry large activations matter most, so scale them up before rounding (their weights then get
finer steps) and divide the scale back out. The layer computes Q(W diag(s)) diag(1/s) x, the
same function as W x up to rounding, with s = a^alpha where a is each input channel's activation
size and alpha is searched per layer to minimize the output error on calibration data.

Here the output error for a candidate weight W' is computed from the inputs' second moment
H = X^T X (the matrix GPTQ uses too): ||X W^T - X W'^T||^2 = tr((W - W') H (W - W')^T), and the
activation size is the root mean square sqrt(H_jj / n). The scale stays in the layer (applied to
the dequantized weight's columns, so inference costs nothing extra) instead of being folded
into the previous LayerNorm or Linear, which would need the model's graph; the weight-only
artifact stores it as one float per input column.
"""

from __future__ import annotations

import torch

from torchshrink.quant.fake import (
    Granularity,
    WeightMethod,
    dequantize_codes,
    grid_params,
    group_rows,
    h_blocks_for,
    quantize_codes,
)

__all__ = ["awq_column_scale"]


def _rtn(w: torch.Tensor, bits: int, symmetric: bool, granularity: Granularity, group_size: int | None,
         method: WeightMethod, h: torch.Tensor) -> torch.Tensor:
    rows = group_rows(w, granularity, group_size)
    hb = h_blocks_for(h, granularity, group_size) if method == "output" else None
    scale, zero = grid_params(rows, bits, symmetric, method, h_blocks=hb)
    return dequantize_codes(quantize_codes(rows, scale, zero, bits, symmetric), scale, zero, bits,
                            symmetric).reshape(w.shape)


def awq_column_scale(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int, symmetric: bool,
                     granularity: Granularity, group_size: int | None, method: WeightMethod = "minmax",
                     grid: int = 20) -> torch.Tensor:
    """Per input column scale s (in_width,) minimizing the output error of
    Q(W diag(s)) diag(1/s) over alpha in {0, 1/grid, ..., 1}. alpha = 0 (s = 1, plain rounding) is among the candidates, so the
    result is never worse than RTN on the calibration data."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    h = hessian.detach().float()
    # RMS up to a constant factor, which the normalization below removes
    act = h.diagonal().clamp_min(0).sqrt().clamp_min(1e-8)
    best_err, best_s = float("inf"), torch.ones_like(act)
    for i in range(grid + 1):
        alpha = i / grid
        s = act.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()  # centred in log scale, so neither end of the grid saturates
        wq = _rtn(w * s, bits, symmetric, granularity, group_size, method, h / (s[:, None] * s[None, :])) / s
        d = w - wq
        err = float(((d @ h) * d).sum())
        if err < best_err:
            best_err, best_s = err, s
    return best_s

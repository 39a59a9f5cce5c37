"""AWQ (Lin et al. 2024, "Activation-aware Weight Quantization"): the few input channels that
carry large activations matter most, so scale them up before rounding (their weights then get
finer steps) and divide the scale back out. The layer computes Q(W diag(s)) diag(1/s) x, the
same function as W x up to rounding, with s = a^alpha where a is each input channel's activation
size and alpha is searched per layer to minimize the output error on calibration data.

Here the output error for a candidate weight W' is computed from the inputs' second moment
H = X^T X (the matrix GPTQ uses too): ||X W^T - X W'^T||^2 = tr((W - W') H (W - W')^T), and the
activation size is the root mean square sqrt(H_jj / n).

Layers that read the same input (q, k and v; gate and up) get one scale, chosen on the sum of
their errors, so that it can be folded into the op producing that input (the RMSNorm/LayerNorm
before them, or a Linear): the division by s then costs nothing at run time and the layers
store no scale. Where no such op exists (o_proj reads the attention output, down_proj a
product), the scale stays in the layer, applied to the dequantized weight's columns.
"""

from __future__ import annotations

import torch
from torch import nn

from torchshrink.nn import coverage, get_module
from torchshrink.nn.calib import InputStats
from torchshrink.nn.scales import fold_output_scale
from torchshrink.quant.fake import (
    Granularity,
    WeightMethod,
    dequantize_codes,
    grid_params,
    group_rows,
    h_blocks_for,
    quantize_codes,
)
from torchshrink.quant.layers import weight_of

__all__ = ["awq_column_scale", "awq_group_scale", "awq_input_scales"]


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
    return awq_group_scale([(weight, granularity, group_size)], hessian, bits=bits, symmetric=symmetric,
                           method=method, grid=grid)


def awq_group_scale(layers: list[tuple[torch.Tensor, Granularity, int | None]], hessian: torch.Tensor, *,
                    bits: int, symmetric: bool, method: WeightMethod = "minmax", grid: int = 20) -> torch.Tensor:
    """One input column scale for layers reading the same input (each given as (weight,
    granularity, group_size)): the alpha minimizing the sum of their output errors."""
    ws = [(w.detach().float().reshape(w.shape[0], -1), g, gs) for w, g, gs in layers]
    h = hessian.detach().float()
    # RMS up to a constant factor, which the normalization below removes
    act = h.diagonal().clamp_min(0).sqrt().clamp_min(1e-8)
    best_err, best_s = float("inf"), torch.ones_like(act)
    for i in range(grid + 1):
        alpha = i / grid
        s = act.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()  # centred in log scale, so neither end of the grid saturates
        hs = h / (s[:, None] * s[None, :])
        err = 0.0
        for w, g, gs in ws:
            d = w - _rtn(w * s, bits, symmetric, g, gs, method, hs) / s
            err += float(((d @ h) * d).sum())
        if err < best_err:
            best_err, best_s = err, s
    return best_s


def awq_input_scales(model: nn.Module, stats: dict[str, InputStats], layers: dict[str, nn.Module],
                     groups: dict[str, int | None], *, bits: int, symmetric: bool, method: WeightMethod,
                     keep: set[str]) -> dict[str, tuple[torch.Tensor, bool]]:
    """AWQ scales for the layers measured together: one per input (layers sharing a statistics
    object read the same tensor), searched on the sum of their errors and folded into the op
    that produced the input where that op can take it (`nn.scales.fold_output_scale`).
    {layer: (scale, folded)}; layers left out (not Linear) get their own scale in the layer.
    `keep`: layers whose input must not change (a tied weight's codes also serve an embedding)."""
    by_input: dict[int, list[str]] = {}
    for name, s in stats.items():
        by_input.setdefault(id(s), []).append(name)
    out: dict[str, tuple[torch.Tensor, bool]] = {}
    for names in by_input.values():
        s = stats[names[0]]
        if s.hessian is None or any(not isinstance(layers[n], nn.Linear) for n in names):
            continue
        scale = awq_group_scale([(weight_of(layers[n]), "group" if groups[n] else "channel", groups[n])
                                 for n in names], s.hessian, bits=bits, symmetric=symmetric, method=method)
        folded = False
        if s.producer is not None and s.producer not in layers and not keep.intersection(names):
            folded = fold_output_scale(get_module(model, s.producer), scale)
            if folded:
                coverage.note(model, s.producer, f"AWQ input scale of {', '.join(names)} folded into it")
        out.update({n: (scale, folded) for n in names})
    return out

"""Folding a per-channel scale into the op that produces a tensor: `fold_output_scale(op, s)`
makes `op` return its old output divided by `s` along the last dimension, so a consumer that
multiplies its weight's input columns by `s` (AWQ, SmoothQuant) computes the same function with
nothing extra at run time.

Which op may take the scale is decided by the caller (the op whose output tensor *is* the
consumer's input, seen during calibration); whether it can is checked here, numerically: the
op is edited, run on a probe, and restored unless it now computes exactly old / s. That covers
LayerNorm, RMSNorm variants (whatever their formula: Gemma's 1 + weight fails the probe and is
left alone) and Linear, and refuses anything else rather than guessing.
"""

from __future__ import annotations

import torch
from torch import nn

from torchshrink.nn import params

__all__ = ["fold_output_scale"]


def _probe(op: nn.Module, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(3, width, generator=g) * 2 + 0.5).to(device=device, dtype=dtype)


def fold_output_scale(op: nn.Module, scale: torch.Tensor) -> bool:
    """Divide `op`'s output channels (last dim) by `scale` by editing its weight (and bias);
    True when done, False (op unchanged) when `op` is not an elementwise-affine norm or a plain
    Linear of that output width."""
    w = getattr(op, "weight", None)
    if not isinstance(w, nn.Parameter) or params.chain(op) or not w.is_floating_point():
        return False
    n = scale.numel()
    if isinstance(op, nn.Linear):
        if op.out_features != n:
            return False
        width = op.in_features
    elif w.dim() == 1 and w.numel() == n:  # a norm's per-channel gain
        width = n
    else:
        return False
    bias = getattr(op, "bias", None)
    bias = bias if isinstance(bias, nn.Parameter) else None
    x = _probe(op, width, w.dtype, w.device)
    s = scale.to(device=w.device, dtype=torch.float32)
    saved = (w.detach().clone(), None if bias is None else bias.detach().clone())
    with torch.no_grad():
        try:
            before = op(x).float()
        except Exception:  # an op that does not take (rows, width) inputs is none of ours
            return False
        rows = s.reshape(-1, 1) if w.dim() == 2 else s
        w.copy_((w.float() / rows).to(w.dtype))
        if bias is not None:
            bias.copy_((bias.float() / s).to(bias.dtype))
        after = op(x).float()
        ok = before.shape == after.shape and bool(torch.allclose(after * s, before, rtol=1e-4, atol=1e-5))
        if not ok:
            w.copy_(saved[0])
            if bias is not None and saved[1] is not None:
                bias.copy_(saved[1])
    return ok

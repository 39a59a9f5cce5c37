"""Fake quantization: integer grids, the straight-through estimator, and the weight
parametrization `FakeQuant` (symmetric or affine; per-tensor, per-channel or group-wise;
2..8 bits; optional learnable step size, LSQ).

Every grid here maps 0.0 to exactly 0.0: symmetric grids have no offset, and affine grids use
an integer zero point inside the code range (the observed range is widened to include 0), so
a pruned weight stays exactly zero after quantization.

Grouping convention: a weight of shape (out, ...) is viewed as rows of a 2-D matrix,
(1, N) per tensor, (out, in) per channel and (out * in / g, g) per group, where `in` is the
product of the non-output dimensions (a Conv2d kernel flattens to in = cin * kh * kw).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from torchshrink.codec.structure import register_parametrization
from torchshrink.config import check
from torchshrink.errors import ConfigError

__all__ = [
    "Granularity",
    "WeightMethod",
    "FakeQuant",
    "check_bits",
    "check_group",
    "qrange",
    "group_rows",
    "ungroup_rows",
    "grid_params",
    "quantize_codes",
    "dequantize_codes",
    "fake_quantize",
    "round_ste",
    "sqnr_db",
    "shares_values",
]

Granularity = Literal["tensor", "channel", "group"]
WeightMethod = Literal["minmax", "mse", "output"]


def check_bits(name: str, bits: int, low: int = 2, high: int = 16) -> None:
    """Bits outside the supported range are a ConfigError that names the range."""
    check(isinstance(bits, int) and not isinstance(bits, bool) and low <= bits <= high,
          f"{name} must be an integer in [{low}, {high}], got {bits!r}; use e.g. 8 for int8 or 4 for int4")


def check_group(layer: str, in_width: int, group_size: int | None) -> None:
    """A group size must divide the layer's input width (the flattened non-output dims)."""
    if group_size is None:
        return
    if in_width % group_size != 0:
        divisors = [d for d in (8, 16, 32, 64, 128, 256) if in_width % d == 0]
        hint = f"a group size that divides it ({', '.join(map(str, divisors))})" if divisors else \
            "group_size=None (per channel)"
        raise ConfigError(
            f"group_size={group_size} does not divide the input width {in_width} of layer {layer!r}; "
            f"use {hint}, or exclude the layer with ignore=[{layer!r}]"
        )


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer code range: signed two's complement for symmetric grids, unsigned for affine."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def group_rows(w: torch.Tensor, granularity: Granularity, group_size: int | None) -> torch.Tensor:
    """View `w` as (groups, values per group); see the module docstring."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    flat = w.reshape(w.shape[0], -1)
    if granularity == "channel" or group_size is None:
        return flat
    return flat.reshape(-1, group_size)


def ungroup_rows(rows: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    return rows.reshape(shape)


def num_groups(shape: tuple[int, ...], granularity: Granularity, group_size: int | None) -> int:
    if granularity == "tensor":
        return 1
    if granularity == "channel" or group_size is None:
        return shape[0]
    return math.prod(shape) // group_size


def _scale_zero(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        # Divide by qmax (not qmax + 0.5) so the positive extreme is representable; the extra
        # negative code is then spare, which costs little and keeps 0 on the grid.
        scale = (amax / qmax).clamp_min(torch.finfo(torch.float32).tiny)
        return scale, torch.zeros_like(scale)
    lo = lo.clamp(max=0.0)
    hi = hi.clamp(min=0.0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(torch.finfo(torch.float32).tiny)
    zero = (qmin - lo / scale).round().clamp(qmin, qmax)
    return scale, zero


def grid_params(rows: torch.Tensor, bits: int, symmetric: bool, method: WeightMethod = "minmax",
                steps: int = 40, h_blocks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero_point) of shape (groups, 1). `mse` searches a clipping ratio per
    row that minimises the squared quantization error (helps at 2..4 bits); `output` minimises
    the error of the layer's output instead, d H d^T with d the row's rounding error and H the
    second moment of the inputs its columns meet: `h_blocks` (nb, width, width), row r using
    block r % nb (groups of one output row run along the input width)."""
    if method == "output" and h_blocks is None:
        raise ValueError("clip 'output' needs the layer's input statistics (h_blocks)")
    rows = rows.detach().float()
    lo = rows.amin(1, keepdim=True)
    hi = rows.amax(1, keepdim=True)
    scale, zero = _scale_zero(lo, hi, bits, symmetric)
    if method == "minmax":
        return scale, zero
    ratios = 1.0 - 0.7 * torch.arange(steps, dtype=torch.float32, device=rows.device) / steps  # 100% .. 30%
    nb = 1 if h_blocks is None else h_blocks.shape[0]
    # All candidate ratios at once, over chunks of rows small enough to stay in cache: the
    # search is a few elementwise passes per candidate, so memory traffic is what it costs.
    chunk = max(nb, (_CHUNK_ELEMENTS // max(1, steps * rows.shape[1])) // nb * nb)
    best = torch.empty(rows.shape[0], dtype=torch.long, device=rows.device)
    for r0 in range(0, rows.shape[0], chunk):
        part = rows[r0:r0 + chunk]
        s, z = _scale_zero(lo[r0:r0 + chunk] * ratios[:, None, None], hi[r0:r0 + chunk] * ratios[:, None, None],
                           bits, symmetric)  # (steps, chunk rows, 1)
        d = _rounding_error(part, s, z, bits, symmetric)  # (steps, chunk rows, width)
        if h_blocks is None:
            err = torch.linalg.vector_norm(d, dim=-1)  # monotone in the squared error, and faster
        else:
            by_block = d.reshape(steps, -1, nb, d.shape[-1])  # row r meets block r % nb
            err = torch.einsum("sobk,bkl,sobl->sob", by_block, h_blocks, by_block).reshape(steps, -1)
        best[r0:r0 + chunk] = err.argmin(0)  # the first minimum: the widest range among equals
    ratio = ratios[best][:, None]
    return _scale_zero(lo * ratio, hi * ratio, bits, symmetric)


_CHUNK_ELEMENTS = 1 << 18  # candidate x row x column values per chunk of the clip search (1 MiB)


def _rounding_error(rows: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """fake_quantize(rows) - rows on every candidate grid (s, z: (candidates, rows, 1)), in place
    on one temporary, with the operations of `fake_quantize` (so the same values)."""
    qmin, qmax = qrange(bits, symmetric)
    q = rows / s
    q.round_()
    if not symmetric:
        q.add_(z)
    q.clamp_(qmin, qmax)
    if not symmetric:
        q.sub_(z)
    return q.mul_(s).sub_(rows)


def h_blocks_for(hessian: torch.Tensor, granularity: Granularity, group_size: int | None) -> torch.Tensor:
    """The diagonal blocks of an input second moment (width, width) matching a weight grid:
    (width // group, group, group) for groups of `group_size` input columns, or the whole
    matrix as one block for a per-channel grid."""
    group = group_size if granularity == "group" and group_size else hessian.shape[0]
    n = hessian.shape[0] // group
    idx = torch.arange(n)
    return hessian.reshape(n, group, n, group)[idx, :, idx, :]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward (the straight-through estimator)."""
    return x + (x.round() - x).detach()


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """LSQ's gradient scaling: the value of x bit for bit (so packed weights equal the trained
    fake-quant weights exactly), the gradient multiplied by `factor`."""
    out: torch.Tensor = _GradScale.apply(x, factor)
    return out


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                  symmetric: bool) -> torch.Tensor:
    """Quantize then dequantize with STE. With x == 0 the result is exactly 0."""
    qmin, qmax = qrange(bits, symmetric)
    q = torch.clamp(round_ste(x / scale) + zero, qmin, qmax)
    return (q - zero) * scale


def quantize_codes(rows: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   symmetric: bool) -> torch.Tensor:
    """Unsigned integer codes in [0, 2**bits) (int16 so every bit width fits).

    Computed over slices of rows, in place on one float temporary per slice: written as one
    expression, an LM head or embedding table would hold several float copies of itself at
    once (quantizing a 12-layer Llama with a 98 MB 32k x 768 embedding peaked about 50 MB higher)."""
    qmin, qmax = qrange(bits, symmetric)
    rows = rows.detach()
    out = torch.empty(rows.shape, dtype=torch.int16, device=rows.device)
    step = max(1, _CODES_SLICE_ELEMENTS // max(1, rows.shape[-1])) if rows.dim() > 1 else rows.shape[0] or 1
    def part(t: torch.Tensor, sl: slice) -> torch.Tensor:  # a per-row grid follows the slice
        per_row = isinstance(t, torch.Tensor) and t.dim() == rows.dim() and t.shape[0] == rows.shape[0] > 1
        return t[sl] if per_row else t

    for r0 in range(0, max(rows.shape[0], 1), step):
        sl = slice(r0, r0 + step)
        s, z = part(scale, sl), part(zero, sl)
        q = rows[sl].float() / s  # the same operations, in the same order, as before
        q.round_()
        q.add_(z)
        q.clamp_(qmin, qmax)
        q.sub_(qmin)
        out[sl] = q.to(torch.int16)
    return out


_CODES_SLICE_ELEMENTS = 1 << 22  # 16 MiB of float32 per slice


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                     symmetric: bool) -> torch.Tensor:
    """Exactly the value `fake_quantize` computes for the same grid (same float operations)."""
    qmin, _ = qrange(bits, symmetric)
    # In place on one fresh float tensor: the same operations in the same order as
    # `(codes + qmin - zero) * scale`, so the same bits, at a third of the memory traffic.
    q = codes.to(torch.float32, copy=True)
    q.add_(qmin)
    q.sub_(zero)
    q.mul_(scale)
    return q


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf for an exact copy)."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).sum()
    if float(noise) == 0.0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum() / noise))


def shares_values(chain: list[nn.Module]) -> bool:
    """Whether a parametrization earlier in the chain makes weights share values (a codebook).

    Per-channel or group-wise scales would map one shared value to different numbers in
    different rows, so quantizers fall back to one scale for such a tensor to keep at most K
    distinct values.
    """
    return any(hasattr(p, "codebook") for p in chain)


class FakeQuant(nn.Module):
    """Weight parametrization: `forward(w)` = w rounded to a `bits`-bit grid, with STE.

    Without LSQ the grid is recomputed from the incoming weight on every call (it follows the
    weight during QAT). With `lsq=True` the step size is an nn.Parameter initialised from the
    observed range and learned (Esser et al. 2020), with the zero point fixed.
    """

    execution = "fake-quant (simulated)"
    zero_point: torch.Tensor

    def __init__(self, shape: tuple[int, ...] | list[int], *, bits: int = 8, symmetric: bool = True,
                 granularity: Granularity = "channel", group_size: int | None = None,
                 method: WeightMethod = "minmax", lsq: bool = False,
                 init: torch.Tensor | None = None) -> None:
        super().__init__()
        check_bits("bits", bits, 2, 8)
        if granularity == "group":
            check(group_size is not None and group_size > 0, "granularity='group' needs a positive group_size")
            check_group("weight", math.prod(shape[1:]), group_size)
        self.shape = tuple(int(s) for s in shape)
        self.bits, self.symmetric, self.granularity = bits, symmetric, granularity
        self.group_size = group_size if granularity == "group" else None
        self.method, self.lsq = method, lsq
        n = num_groups(self.shape, granularity, self.group_size)
        self.scale: nn.Parameter | None = None
        if lsq:
            if init is not None:
                s, z = grid_params(group_rows(init, granularity, self.group_size), bits, symmetric, method)
            else:
                s, z = torch.ones(n, 1), torch.zeros(n, 1)
            self.scale = nn.Parameter(s)
            self.register_buffer("zero_point", z)

    def grid(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = group_rows(w, self.granularity, self.group_size)
        if self.scale is not None:
            return self.scale.abs().clamp_min(1e-12), self.zero_point
        return grid_params(rows, self.bits, self.symmetric, self.method)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        rows = group_rows(w, self.granularity, self.group_size)
        scale, zero = self.grid(w)
        if self.scale is not None:
            _, qmax = qrange(self.bits, self.symmetric)
            scale = grad_scale(scale, 1.0 / math.sqrt(rows.shape[1] * qmax))
        out = fake_quantize(rows, scale.to(w.dtype), zero.to(w.dtype), self.bits, self.symmetric)
        return ungroup_rows(out, w.shape)

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes in [0, 2**bits), scale, zero) for `w` on this grid, as stored by WeightOnly."""
        rows = group_rows(w.detach(), self.granularity, self.group_size)
        scale, zero = self.grid(w)
        scale, zero = scale.detach().float(), zero.detach().float()
        return quantize_codes(rows, scale, zero, self.bits, self.symmetric), scale, zero

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return (f"bits={self.bits}, symmetric={self.symmetric}, granularity={self.granularity}{g}, "
                f"method={self.method}, lsq={self.lsq}")


register_parametrization(
    FakeQuant,
    to_spec=lambda p: {"shape": list(p.shape), "bits": p.bits, "symmetric": p.symmetric,
                       "granularity": p.granularity, "group_size": p.group_size, "method": p.method,
                       "lsq": p.lsq},
    from_spec=lambda s: FakeQuant(tuple(s["shape"]), bits=s["bits"], symmetric=s["symmetric"],
                                  granularity=s["granularity"], group_size=s["group_size"],
                                  method=s["method"], lsq=s["lsq"]),
    name="FakeQuant",
)

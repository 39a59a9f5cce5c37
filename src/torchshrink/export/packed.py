"""Export forms of low-bit and shared weights that stay packed in the ONNX file.

- `PackedWeightLinear` / `PackedWeightConv`: b-bit codes kept as the packed uint8 stream and
  unpacked by BitShift/BitwiseAnd ops, then dequantized group-wise. ORT folds that subgraph to
  a float weight when it loads the session, so the file stays small.
- `CodebookLayer` / `CodebookWeight`: packed k-means indices into a small table, gathered at
  load.
"""

from __future__ import annotations

import math
import typing
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from torchshrink.export.qdq import const_node
from torchshrink.quant.layers import run_op

__all__ = ["PackedWeightLinear", "PackedWeightConv", "CodebookWeight", "CodebookLayer", "unpack_stream"]


# ---------------------------------------------------------------------------------------------
# Weight-only low-bit: the packed stream stays packed in the file.

def _stream_period(bits: int) -> tuple[int, int]:
    """(codes, bytes) of the smallest whole-byte period of a little-endian b-bit stream."""
    codes = 8 // math.gcd(bits, 8)
    return codes, codes * bits // 8


def unpack_stream(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first n codes of a little-endian b-bit stream (the layout of quant/packing.py),
    computed with the same per-period gathers and shifts the ONNX graph uses."""
    codes, nbytes = _stream_period(bits)
    lo, hi, shift = _period_tables(bits)
    data = packed.reshape(-1).to(torch.int32)
    pad = (-data.numel()) % nbytes
    data = torch.cat([data, data.new_zeros(pad)]).reshape(-1, nbytes)
    window = data[:, lo] | (data[:, hi] << 8)
    out = (window >> shift) & ((1 << bits) - 1)
    return out.reshape(-1)[:n]


def _period_tables(bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    codes, nbytes = _stream_period(bits)
    start = torch.arange(codes) * bits
    lo = start // 8
    hi = torch.clamp(lo + 1, max=nbytes - 1)
    return lo, hi, (start % 8).to(torch.int32)


def _unpack_symbolic(g: Any, packed: Any, bits: int, n: int) -> Any:
    """ONNX ops computing `unpack_stream(packed, bits, n)` as a 1-D int32 tensor."""
    _, nbytes = _stream_period(bits)
    lo, hi, shift = _period_tables(bits)
    total = int(packed.type().sizes()[0])
    pad = (-total) % nbytes
    # int32 arithmetic (x * 256, integer Div, Mod) instead of BitShift, which needs unsigned
    # types the TorchScript exporter cannot declare; ORT folds it all away at load time.
    data = g.op("Cast", packed, to_i=6)
    if pad:
        data = g.op("Pad", data, const_node(g, torch.tensor([0, pad], dtype=torch.int64)))
    data = g.op("Reshape", data, const_node(g, torch.tensor([-1, nbytes], dtype=torch.int64)))
    low = g.op("Gather", data, const_node(g, lo.to(torch.int64)), axis_i=1)
    high = g.op("Gather", data, const_node(g, hi.to(torch.int64)), axis_i=1)
    window = g.op("Add", low, g.op("Mul", high, const_node(g, torch.tensor(256, dtype=torch.int32))))
    window = g.op("Div", window, const_node(g, (1 << shift).to(torch.int32)))
    codes = g.op("Mod", window, const_node(g, torch.tensor(1 << bits, dtype=torch.int32)))
    codes = g.op("Reshape", codes, const_node(g, torch.tensor([-1], dtype=torch.int64)))
    return g.op("Slice", codes, const_node(g, torch.tensor([0], dtype=torch.int64)),
                const_node(g, torch.tensor([n], dtype=torch.int64)))


class _PackedDequantFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                shape: tuple[int, ...], group: int) -> torch.Tensor:
        n = math.prod(shape)
        codes = unpack_stream(packed, bits, n).to(torch.float32).reshape(-1, group)
        return ((codes - zero.reshape(-1, 1)) * scale.reshape(-1, 1)).reshape(shape)

    @staticmethod
    def symbolic(g: Any, packed: Any, scale: Any, zero: Any, bits: int, shape: tuple[int, ...],
                 group: int) -> Any:
        codes = _unpack_symbolic(g, packed, bits, math.prod(shape))
        codes = g.op("Cast", codes, to_i=1)
        codes = g.op("Reshape", codes, const_node(g, torch.tensor([-1, group], dtype=torch.int64)))
        w = g.op("Mul", g.op("Sub", codes, zero), scale)
        return g.op("Reshape", w, const_node(g, torch.tensor(list(shape), dtype=torch.int64)))


class _PackedWeight(nn.Module):
    """Shared storage of packed weights: stream (uint8), per-group scale and zero (float,
    shape (groups, 1)), where groups run over the weight viewed as (out * in / group, group)."""

    # The exporter must not constant-fold the unpacking subgraph, or the file would hold the
    # unpacked codes (see onnx.write_onnx).
    keeps_packed = True

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *, bits: int,
                 shape: tuple[int, ...], group: int, col_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.bits, self.shape, self.group = bits, tuple(int(s) for s in shape), int(group)
        self.register_buffer("packed", packed.reshape(-1).to(torch.uint8))
        self.register_buffer("scale", scale.reshape(-1, 1).float())
        self.register_buffer("zero", zero.reshape(-1, 1).float())
        # AWQ's per-input-column scale, divided out of the dequantized weight (one Div node)
        self.register_buffer("col_scale", None if col_scale is None else
                             col_scale.detach().float().reshape(1, *self.shape[1:]))

    def weight(self) -> torch.Tensor:
        w = _PackedDequantFn.apply(self.packed, self.scale, self.zero, self.bits, self.shape, self.group)
        cs = typing.cast("torch.Tensor | None", self.col_scale)
        return w if cs is None else w / cs


class PackedWeightLinear(_PackedWeight):
    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None,
                 *, bits: int, shape: tuple[int, ...], group: int, col_scale: torch.Tensor | None = None) -> None:
        super().__init__(packed, scale, zero, bits=bits, shape=shape, group=group, col_scale=col_scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), typing.cast("torch.Tensor | None", self.bias))


class PackedWeightConv(_PackedWeight):
    """Conv1d/Conv2d or Embedding over packed weights; `op` is the layer's computation
    (quant.layers.LayerOp: kind, and for convolutions stride, padding, dilation, groups)."""

    def __init__(self, op: dict[str, Any], packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                 bias: torch.Tensor | None, *, bits: int, shape: tuple[int, ...], group: int,
                 col_scale: torch.Tensor | None = None) -> None:
        super().__init__(packed, scale, zero, bits=bits, shape=shape, group=group, col_scale=col_scale)
        self.op = dict(op)
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_op(self.op, x, self.weight(), typing.cast("torch.Tensor | None", self.bias))


# ---------------------------------------------------------------------------------------------
# Shared weights (k-means codebooks): packed indices into a small table, gathered at load.

class _PackedGatherFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, packed: torch.Tensor, table: torch.Tensor, bits: int,
                shape: tuple[int, ...]) -> torch.Tensor:
        idx = unpack_stream(packed, bits, math.prod(shape)).long()
        return table[idx].reshape(shape)

    @staticmethod
    def symbolic(g: Any, packed: Any, table: Any, bits: int, shape: tuple[int, ...]) -> Any:
        idx = _unpack_symbolic(g, packed, bits, math.prod(shape))
        w = g.op("Gather", table, idx, axis_i=0)
        return g.op("Reshape", w, const_node(g, torch.tensor(list(shape), dtype=torch.int64)))


class CodebookWeight(nn.Module):
    """A weight stored as b-bit indices (packed) into `table`; `forward(_)` returns the weight."""

    keeps_packed = True

    def __init__(self, indices: torch.Tensor, table: torch.Tensor) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in indices.shape)
        self.bits = max(1, math.ceil(math.log2(max(int(table.numel()), 2))))
        from torchshrink.quant.packing import pack

        self.register_buffer("packed", pack(indices.to(torch.int32), self.bits))
        self.register_buffer("table", table.detach().float().clone())

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return _PackedGatherFn.apply(self.packed, self.table, self.bits, self.shape)


class CodebookLayer(nn.Module):
    """Linear / Conv1d / Conv2d computing with a CodebookWeight (same call as the original)."""

    keeps_packed = True

    def __init__(self, layer: nn.Module | None, weight: nn.Module, *, bias: torch.Tensor | None = None) -> None:
        """layer: the Linear/Conv1d/Conv2d whose call (and bias) this computes; None for a
        Linear given only its `bias` (a layer that no longer exists as an nn.Linear, such as
        an inference form's compact CSR)."""
        super().__init__()
        self.w = weight
        if layer is not None:
            bias = getattr(layer, "bias", None)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.kind = "linear" if layer is None or isinstance(layer, nn.Linear) else (
            "conv1d" if isinstance(layer, nn.Conv1d) else "conv2d")
        if self.kind != "linear":
            assert isinstance(layer, (nn.Conv1d, nn.Conv2d))
            self.stride, self.padding = layer.stride, layer.padding
            self.dilation, self.groups = layer.dilation, layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w(x)
        bias = typing.cast("torch.Tensor | None", self.bias)
        if self.kind == "linear":
            return F.linear(x, w, bias)
        conv = F.conv1d if self.kind == "conv1d" else F.conv2d
        return conv(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

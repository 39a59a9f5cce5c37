"""Export rules for the library's own non-standard modules: module type -> export form.

This is the one place that knows how each family's custom modules look in ONNX. A rule reads
only the module's buffers and attributes, so the families need to know nothing about export.
Rules are registered on the first export (importing torchshrink stays cheap), and a family
that is absent simply contributes no rules.

| module                     | ONNX form                                                        |
|----------------------------|------------------------------------------------------------------|
| quant.StaticInt8Layer      | QDQ: uint8 activations, int8 per-channel weights, int32 bias     |
|                            | (ORT fuses to QLinearConv / QGemm); our calibrated scales         |
| quant.DynamicInt8Linear    | DynamicQuantizeLinear -> MatMulInteger (DynamicQuantizeMatMul)    |
| quant.WeightOnlyLayer      | the packed uint8 stream + unpack/dequantize ops, float compute   |
| quant.ActQuantized (QAT)   | QuantizeLinear/DequantizeLinear on the input, then the layer      |
| quant.CastLayer            | float16 initializers (see onnx.store_half), float32 compute       |
| prune.SparseLinear         | a dense Linear (ONNX Runtime has no CSR matmul on CPU)           |
| infer.CompactSparseLinear  | with a codebook: packed indices + table (Gather), as k-means     |
|                            | layers export; with fp32 values: a dense Linear                  |
| infer.Int4Linear           | the packed 4-bit stream + dequantize ops, as WeightOnly exports  |

Masks, codebooks and fake-quant parametrizations need no rule: they are baked into plain
weights before export (prepare.py). Physically smaller layers (ChannelPruning) and factor pairs
(SvdFactorization) are standard modules.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from torchshrink.export.packed import (
    CodebookLayer,
    CodebookWeight,
    PackedWeightConv,
    PackedWeightLinear,
)
from torchshrink.export.qdq import (
    DynamicInt8Linear,
    QDQConv2d,
    QDQLinear,
    QuantDequant,
    export_rule,
)

__all__ = ["load"]

_LOADED = False


def load() -> None:
    """Register the rules of every family that is installed (idempotent)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    _quant_rules()
    _prune_rules()
    _inference_form_rules()


def _conv_like(op: dict[str, Any], weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A standard float layer computing `op` (a quant.layers.LayerOp) with the given tensors."""
    m: nn.Linear | nn.Conv1d | nn.Conv2d
    if op["kind"] == "linear":
        m = nn.Linear(op["in"], op["out"], bias=bias is not None)
    else:
        cls = nn.Conv1d if op["kind"] == "conv1d" else nn.Conv2d
        m = cls(op["in"], op["out"], tuple(op["kernel"]), tuple(op["stride"]), tuple(op["padding"]),
                tuple(op["dilation"]), op["groups"], bias=bias is not None)
    with torch.no_grad():
        m.weight.copy_(weight)
        if bias is not None and m.bias is not None:
            m.bias.copy_(bias)
    return m


class _Sandwich(nn.Module):
    """input QDQ -> layer -> output QDQ, for layers without a dedicated QDQ form."""

    def __init__(self, layer: nn.Module, inp: QuantDequant | None, out: QuantDequant | None) -> None:
        super().__init__()
        self.inp, self.layer, self.out = inp, layer, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(self.inp(x) if self.inp is not None else x)
        return self.out(y) if self.out is not None else y


class _ClippedQDQ(nn.Module):
    """Fake quantization to fewer than 8 bits as Clip then 8-bit QDQ: exact for b <= 8."""

    def __init__(self, scale: float, zero: int, bits: int) -> None:
        super().__init__()
        self.lo, self.hi = (0 - zero) * scale, (2**bits - 1 - zero) * scale
        self.qdq = QuantDequant(scale, zero, signed=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qdq(torch.clamp(x, self.lo, self.hi))


def _quant_rules() -> None:
    try:
        from torchshrink.quant.dynamic import DynamicInt8Linear as OurDynamic
        from torchshrink.quant.qat import ActQuantized
        from torchshrink.quant.static import StaticInt8Layer
        from torchshrink.quant.weight_only import WeightOnlyLayer
    except ImportError:  # the quantization family is not installed
        return

    @export_rule(StaticInt8Layer, quantized=True)
    def _static(m: Any) -> nn.Module:
        op, w_q, bias = m.op, m.weight_int8, m.bias
        w_scale = m.weight_scale.float().expand(w_q.shape[0]).clone()
        if m.act_bits != 8:
            # 16-bit activations have no ONNX-Runtime integer kernel: export the float layer
            # with the int8 weight grid (the activation rounding at 16 bits is negligible).
            return _conv_like(op, m.weight, bias)
        inp = QuantDequant(float(m.in_scale), int(m.in_zero_point), signed=False)
        out = None if getattr(m, "float_output", False) else \
            QuantDequant(float(m.out_scale), int(m.out_zero_point), signed=False)
        if op["kind"] == "linear":
            return QDQLinear(w_q, w_scale, bias, input_qdq=inp, output_qdq=out)
        if op["kind"] == "conv2d":
            conv = _conv_like(op, m.weight, None)
            assert isinstance(conv, nn.Conv2d)
            return QDQConv2d(conv, w_q, w_scale, bias, input_qdq=inp, output_qdq=out)
        return _Sandwich(_conv_like(op, m.weight, bias), inp, out)  # conv1d: simulated in PyTorch too

    @export_rule(OurDynamic, quantized=True)
    def _dynamic(m: Any) -> nn.Module:
        w_scale = m.weight_scale.float().expand(m.weight_int8.shape[0]).clone()
        return DynamicInt8Linear(m.weight_int8, w_scale, m.bias, reduce_range=bool(m.reduce_range),
                                 per_token=bool(getattr(m, "per_token", False)))

    @export_rule(WeightOnlyLayer, quantized=False)
    def _weight_only(m: Any) -> nn.Module:
        n = math.prod(m.shape)
        group = {"tensor": n, "channel": n // m.shape[0]}.get(m.granularity, m.group_size or n // m.shape[0])
        qmin = -(2 ** (m.bits - 1)) if m.symmetric else 0
        zero = torch.zeros_like(m.scale) if m.zero_point is None else m.zero_point.float()
        # WeightOnlyLayer computes ((codes + qmin) - zero) * scale; fold qmin into the zero.
        zero = zero - qmin
        if m.op["kind"] == "linear":
            return PackedWeightLinear(m.packed, m.scale, zero, m.bias, bits=m.bits, shape=tuple(m.shape),
                                      group=group, col_scale=m.col_scale)
        return PackedWeightConv(m.op, m.packed, m.scale, zero, m.bias, bits=m.bits, shape=tuple(m.shape),
                                group=group, col_scale=m.col_scale)

    @export_rule(ActQuantized, quantized=True)
    def _act(m: Any) -> nn.Module:
        scale = float(m.scale.detach().abs().clamp_min(1e-12))
        zero = int(m.zero_point)
        inp: nn.Module = QuantDequant(scale, zero, signed=False) if m.bits == 8 else _ClippedQDQ(scale, zero, m.bits)
        inner = m.layer
        from torchshrink.export.qdq import rule_for

        rule = rule_for(inner)
        if rule is not None:
            inner = rule.convert(inner)
        return nn.Sequential(inp, inner)


def _prune_rules() -> None:
    try:
        from torchshrink.prune.sparse import SparseLinear
    except ImportError:
        return

    @export_rule(SparseLinear, quantized=False)
    def _sparse(m: Any) -> nn.Module:
        bias = None if m.bias is None else m.bias.detach()
        return _conv_like({"kind": "linear", "in": m.in_features, "out": m.out_features},
                          m.ts_effective_weights()["weight"], bias)


def _inference_form_rules() -> None:
    """`ts.for_inference` forms export as compactly as the training forms they came from: the
    kernels they run exist only in this process, but their codes are the same codes."""
    from torchshrink.infer.forms import CompactSparseLinear, Int4Linear
    from torchshrink.quant.packing import pack

    @export_rule(CompactSparseLinear, quantized=False)
    def _compact(m: Any) -> nn.Module:
        if m.codes is None:  # fp32 values: ONNX Runtime has no CSR matmul on CPU
            return _conv_like({"kind": "linear", "in": m.in_features, "out": m.out_features}, m.dense_weight(), m.bias)
        k = int(m.table.numel())
        indices = torch.full((m.out_features, m.in_features), k, dtype=torch.int32)  # k: the zero slot
        indices[m._rows(), m.cols.to(torch.int32).long()] = m.codes.to(torch.int32)
        table = torch.cat([m.table.float(), m.table.new_zeros(1)])
        return CodebookLayer(None, CodebookWeight(indices, table), bias=m.bias)

    @export_rule(Int4Linear, quantized=False)
    def _int4(m: Any) -> nn.Module:
        codes, scale, zero = m.grid()  # weight = (codes - 8) * scale + zero per group
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        # PackedWeightLinear computes (code - z) * scale: z = 8 - zero / scale
        return PackedWeightLinear(pack(codes.reshape(-1), 4), scale.reshape(-1), (8 - zero / safe).reshape(-1),
                                  m.bias, bits=4, shape=(m.out_features, m.in_features), group=m.group_size,
                                  col_scale=m.col_scale)

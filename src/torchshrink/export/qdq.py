"""Export-time forms of quantized layers: QDQ graphs, integer matmuls and packed weights.

PyTorch modules that store weights as integers or simulate quantization cannot be handed to
the ONNX exporter as they are: their forward is PyTorch arithmetic, which would export as
float math on dequantized tensors and lose both the integer storage and the integer kernels.
Before export each such module is swapped for one of the modules here, whose forward computes
the same function in PyTorch (so tracing and the parity check see the right numbers) and whose
ONNX symbolic emits the standard pattern ONNX Runtime recognizes:

- `QDQLinear` / `QDQConv2d`: int8 weight initializers behind DequantizeLinear, an int32 bias,
  and QuantizeLinear/DequantizeLinear pairs on activations. ORT's QDQ transformer fuses
  DQ -> Conv -> Q into QLinearConv and DQ -> Gemm into QGemm (integer kernels).
- `DynamicInt8Linear`: DynamicQuantizeLinear -> MatMulInteger -> rescale, which ORT fuses into
  DynamicQuantizeMatMul.
- packed low-bit and codebook weights: see `packed.py`.

The one table that maps a module type to its export form is `EXPORT_RULES` (see `export_rule`);
rules for the quantization family's modules are added in `rules.py`, which only reads their
buffers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ExportRule",
    "EXPORT_RULES",
    "export_rule",
    "rule_for",
    "QuantDequant",
    "QDQLinear",
    "QDQConv2d",
    "DynamicInt8Linear",
]


@dataclasses.dataclass(frozen=True)
class ExportRule:
    """How to export modules of one type: `convert(module) -> export-time module`.

    `quantized` says whether the exported graph computes with integer activations, which
    selects the quantized parity criteria (top-1 agreement) over the float ones.
    """

    convert: Callable[[nn.Module], nn.Module]
    quantized: bool


EXPORT_RULES: dict[type[nn.Module], ExportRule] = {}


def export_rule(cls: type[nn.Module], *, quantized: bool) -> Callable[[Callable[[Any], nn.Module]],
                                                                      Callable[[Any], nn.Module]]:
    """Decorator registering `fn` as the export-time conversion of modules of exactly `cls`."""

    def deco(fn: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        EXPORT_RULES[cls] = ExportRule(fn, quantized)
        return fn

    return deco


def rule_for(module: nn.Module) -> ExportRule | None:
    return EXPORT_RULES.get(type(module))


# ---------------------------------------------------------------------------------------------
# ONNX building blocks. Each autograd Function computes in PyTorch exactly what its symbolic
# emits, so the traced model and the exported graph agree.

def const_node(g: Any, t: torch.Tensor) -> Any:
    return g.op("Constant", value_t=t)


def _dq(g: Any, q: Any, scale: Any, zero: Any, axis: int | None) -> Any:
    if axis is None:
        return g.op("DequantizeLinear", q, scale, zero)
    return g.op("DequantizeLinear", q, scale, zero, axis_i=axis)


class _QuantDequantFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                qmin: int, qmax: int) -> torch.Tensor:
        # torch.round is round-half-to-even, the rounding QuantizeLinear specifies.
        q = torch.clamp(torch.round(x / scale) + zero.to(x.dtype), qmin, qmax)
        return (q - zero.to(x.dtype)) * scale

    @staticmethod
    def symbolic(g: Any, x: Any, scale: Any, zero: Any, qmin: int, qmax: int) -> Any:
        q = g.op("QuantizeLinear", x, scale, zero)
        return g.op("DequantizeLinear", q, scale, zero)


class QuantDequant(nn.Module):
    """Per-tensor activation quantization (QuantizeLinear then DequantizeLinear). uint8 for
    zero points in [0, 255], else int8."""

    def __init__(self, scale: float, zero_point: int, *, signed: bool | None = None) -> None:
        super().__init__()
        signed = zero_point < 0 if signed is None else signed
        self.qmin, self.qmax = (-128, 127) if signed else (0, 255)
        dtype = torch.int8 if signed else torch.uint8
        self.scale_value = float(scale)
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(int(zero_point), dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuantDequantFn.apply(x, self.scale, self.zero_point, self.qmin, self.qmax)


def _dequant_weight(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (q.dim() - 1)
    return (q.to(torch.float32) - zero.to(torch.float32).reshape(shape)) * scale.reshape(shape)


def _bias_int32(bias: torch.Tensor | None, in_scale: float, w_scale: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Bias on the accumulator grid (scale in_scale * w_scale, zero 0), as QLinearConv wants."""
    if bias is None:
        return None
    s = (in_scale * w_scale).to(torch.float32)
    q = torch.round(bias.detach().float() / s).clamp(-(2**31), 2**31 - 1).to(torch.int32)
    return q, s


class _QDQWeights(nn.Module):
    """The int8 weight buffers, activation QDQs and bias shared by QDQLinear and QDQConv2d."""

    input_qdq: QuantDequant | None
    output_qdq: QuantDequant | None
    bias_float: nn.Parameter | None

    def _init_qdq_weights(self, weight_q: torch.Tensor, weight_scale: torch.Tensor,
                          weight_zero: torch.Tensor | None, bias: torch.Tensor | None,
                          input_qdq: QuantDequant | None, output_qdq: QuantDequant | None, *,
                          bias_shape: tuple[int, ...]) -> None:
        """The bias goes on the int32 accumulator grid when the input is quantized; otherwise it
        stays a float parameter of `bias_shape` (broadcast against the output) added after the op."""
        self.register_buffer("weight_q", weight_q.to(torch.int8))
        self.register_buffer("weight_scale", weight_scale.reshape(-1).float())
        zero = weight_zero if weight_zero is not None else torch.zeros(weight_q.shape[0])
        self.register_buffer("weight_zero", zero.reshape(-1).to(torch.int8))
        self.input_qdq = input_qdq
        self.output_qdq = output_qdq
        in_scale = input_qdq.scale_value if input_qdq is not None else None
        bias_q = _bias_int32(bias, in_scale, weight_scale.reshape(-1).float()) if bias is not None and in_scale \
            else None
        self.bias_float = None if bias is None or bias_q is not None else nn.Parameter(
            bias.detach().float().reshape(bias_shape), requires_grad=False)
        self.register_buffer("bias_q", bias_q[0] if bias_q else None)
        self.register_buffer("bias_scale", bias_q[1] if bias_q else None)


class _QDQLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, wz: torch.Tensor,
                bq: torch.Tensor | None, bs: torch.Tensor | None) -> torch.Tensor:
        w = _dequant_weight(wq, ws, wz)
        b = None if bq is None or bs is None else bq.to(torch.float32) * bs
        return F.linear(x, w, b)

    @staticmethod
    def symbolic(g: Any, x: Any, wq: Any, ws: Any, wz: Any, bq: Any, bs: Any) -> Any:
        w = _dq(g, wq, ws, wz, 0)
        rank = x.type().dim() if hasattr(x.type(), "dim") else None
        b = None
        if not _is_none(bq):
            b = _dq(g, bq, bs, const_node(g, torch.zeros(_len(bs), dtype=torch.int32)), 0)
        if rank == 2:
            return g.op("Gemm", x, w, b, transB_i=1) if b is not None else g.op("Gemm", x, w, transB_i=1)
        y = g.op("MatMul", x, g.op("Transpose", w, perm_i=[1, 0]))
        return g.op("Add", y, b) if b is not None else y


def _is_none(v: Any) -> bool:
    return v is None or (hasattr(v, "node") and v.node().mustBeNone())


def _len(v: Any) -> int:
    sizes = v.type().sizes()
    return int(sizes[0]) if sizes else 1


class QDQLinear(_QDQWeights):
    """A Linear with int8 weights (per output channel), an int32 bias and optional quantized
    input and output activations."""

    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 *, input_qdq: QuantDequant | None = None, output_qdq: QuantDequant | None = None,
                 weight_zero: torch.Tensor | None = None) -> None:
        super().__init__()
        self._init_qdq_weights(weight_q, weight_scale, weight_zero, bias, input_qdq, output_qdq,
                               bias_shape=(-1,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_qdq is not None:
            x = self.input_qdq(x)
        y = _QDQLinearFn.apply(x, self.weight_q, self.weight_scale, self.weight_zero, self.bias_q,
                               self.bias_scale)
        if self.bias_float is not None:
            y = y + self.bias_float
        return self.output_qdq(y) if self.output_qdq is not None else y


class _QDQConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, wz: torch.Tensor,
                bq: torch.Tensor | None, bs: torch.Tensor | None, stride: tuple[int, ...],
                padding: tuple[int, ...], dilation: tuple[int, ...], groups: int) -> torch.Tensor:
        w = _dequant_weight(wq, ws, wz)
        b = None if bq is None or bs is None else bq.to(torch.float32) * bs
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def symbolic(g: Any, x: Any, wq: Any, ws: Any, wz: Any, bq: Any, bs: Any, stride: tuple[int, ...],
                 padding: tuple[int, ...], dilation: tuple[int, ...], groups: int) -> Any:
        w = _dq(g, wq, ws, wz, 0)
        kshape = [int(s) for s in wq.type().sizes()[2:]]
        attrs = {"strides_i": list(stride), "pads_i": list(padding) * 2, "dilations_i": list(dilation),
                 "group_i": groups, "kernel_shape_i": kshape}
        if _is_none(bq):
            return g.op("Conv", x, w, **attrs)
        b = _dq(g, bq, bs, const_node(g, torch.zeros(_len(bs), dtype=torch.int32)), 0)
        return g.op("Conv", x, w, b, **attrs)


class QDQConv2d(_QDQWeights):
    """A Conv2d with int8 weights (per output channel), an int32 bias and optional quantized
    input and output activations. Padding must be numeric and zero-filled."""

    def __init__(self, conv: nn.Conv2d, weight_q: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None, *, input_qdq: QuantDequant | None = None,
                 output_qdq: QuantDequant | None = None, weight_zero: torch.Tensor | None = None) -> None:
        super().__init__()
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError("QDQConv2d needs numeric zero padding")
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        self.dilation = tuple(conv.dilation)
        self.groups = conv.groups
        self._init_qdq_weights(weight_q, weight_scale, weight_zero, bias, input_qdq, output_qdq,
                               bias_shape=(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_qdq is not None:
            x = self.input_qdq(x)
        y = _QDQConvFn.apply(x, self.weight_q, self.weight_scale, self.weight_zero, self.bias_q,
                             self.bias_scale, self.stride, self.padding, self.dilation, self.groups)
        if self.bias_float is not None:
            y = y + self.bias_float
        return self.output_qdq(y) if self.output_qdq is not None else y


# ---------------------------------------------------------------------------------------------
# Dynamic int8: activations quantized per batch at run time (uint8, asymmetric), as ONNX's
# DynamicQuantizeLinear defines it.

def dynamic_quantize_uint8(x: torch.Tensor, levels: int = 255
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch twin of ONNX DynamicQuantizeLinear (levels=255): range widened to include 0,
    scale = range / levels, zero point rounded half to even and saturated. levels=127 is
    PyTorch's reduce_range (7-bit activations)."""
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / levels
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.clamp(torch.round(-lo / scale), 0, levels)
    q = torch.clamp(torch.round(x / scale) + zero, 0, levels)
    return q, scale, zero


class _DynamicLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, wq_t: torch.Tensor, ws: torch.Tensor,
                bias: torch.Tensor | None, levels: int) -> torch.Tensor:
        q, s, z = dynamic_quantize_uint8(x, levels)
        # Integer accumulation is exact in float64 at these sizes.
        acc = torch.matmul((q - z).double(), wq_t.double())
        y = (acc * (s.double() * ws.double())).to(torch.float32)
        return y + bias if bias is not None else y

    @staticmethod
    def symbolic(g: Any, x: Any, wq_t: Any, ws: Any, bias: Any, levels: int) -> Any:
        if levels == 255:
            q, s, z = g.op("DynamicQuantizeLinear", x, outputs=3)
        else:  # reduce_range: the same recipe on a 7-bit grid, spelled out
            zero_f = const_node(g, torch.tensor(0.0))
            lo = g.op("Min", g.op("ReduceMin", x, keepdims_i=0), zero_f)
            hi = g.op("Max", g.op("ReduceMax", x, keepdims_i=0), zero_f)
            s = g.op("Div", g.op("Sub", hi, lo), const_node(g, torch.tensor(float(levels))))
            s = g.op("Where", g.op("Equal", s, zero_f), const_node(g, torch.tensor(1.0)), s)
            zf = g.op("Clip", g.op("Round", g.op("Div", g.op("Neg", lo), s)), zero_f,
                      const_node(g, torch.tensor(float(levels))))
            z = g.op("Cast", zf, to_i=2)  # uint8
            q = g.op("QuantizeLinear", x, s, z)
        acc = g.op("MatMulInteger", q, wq_t, z)
        y = g.op("Mul", g.op("Cast", acc, to_i=1), g.op("Mul", s, ws))
        return y if _is_none(bias) else g.op("Add", y, bias)


class _TokenLinearFn(torch.autograd.Function):
    """Per-row symmetric int8 activations (DynamicInt8(activations="token")): scale = max|x| / 127
    per row, int8 x int8 MatMulInteger, rescaled by row scale x channel scale."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, wq_t: torch.Tensor, ws: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        from torchshrink.quant.dynamic import per_token_scale  # the layer this twin exports

        s = per_token_scale(x)
        q = torch.clamp(torch.round(x / s), -127, 127)
        y = (torch.matmul(q.double(), wq_t.double()) * (s.double() * ws.double())).to(torch.float32)
        return y + bias if bias is not None else y

    @staticmethod
    def symbolic(g: Any, x: Any, wq_t: Any, ws: Any, bias: Any) -> Any:
        ax = g.op("Abs", x)
        if g.opset >= 18:
            amax = g.op("ReduceMax", ax, const_node(g, torch.tensor([-1])), keepdims_i=1)
        else:
            amax = g.op("ReduceMax", ax, axes_i=[-1], keepdims_i=1)
        zero_f = const_node(g, torch.tensor(0.0))
        s = g.op("Div", amax, const_node(g, torch.tensor(127.0)))
        s = g.op("Where", g.op("Equal", s, zero_f), const_node(g, torch.tensor(1.0)), s)
        q = g.op("Clip", g.op("Round", g.op("Div", x, s)), const_node(g, torch.tensor(-127.0)),
                 const_node(g, torch.tensor(127.0)))
        acc = g.op("MatMulInteger", g.op("Cast", q, to_i=3), wq_t)  # int8 x int8
        # Channel scale first, row scale second: ONNX Runtime 1.32's MatMulIntegerToFloat fusion
        # of Cast -> Mul(row x channel scale) -> Add(bias) drops the bias (measured); this
        # order does not match that fusion and computes the same values.
        y = g.op("Mul", g.op("Mul", g.op("Cast", acc, to_i=1), ws), s)
        return y if _is_none(bias) else g.op("Add", y, bias)


class DynamicInt8Linear(nn.Module):
    """int8 symmetric per-output-channel weights; activations quantized per call to uint8
    (or, with `per_token`, to int8 with one symmetric scale per row).

    Exported as DynamicQuantizeLinear -> MatMulInteger -> Mul (-> Add), the pattern ONNX
    Runtime fuses into DynamicQuantizeMatMul; with `reduce_range` (PyTorch's 7-bit activations,
    kept so the file computes what the PyTorch model does) the quantization step is spelled out
    and MatMulInteger runs unfused. The weight is stored transposed, (in, out), the layout
    MatMulInteger reads.
    """

    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 *, reduce_range: bool = False, per_token: bool = False) -> None:
        super().__init__()
        self.levels = 127 if reduce_range else 255
        self.per_token = per_token
        self.register_buffer("weight_q_t", weight_q.to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", weight_scale.reshape(-1).float())
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_token:
            return _TokenLinearFn.apply(x, self.weight_q_t, self.weight_scale, self.bias)
        return _DynamicLinearFn.apply(x, self.weight_q_t, self.weight_scale, self.bias, self.levels)

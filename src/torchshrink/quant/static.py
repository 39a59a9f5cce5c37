"""`StaticInt8(observer=...)`: int8 weights and activations with ranges calibrated ahead of
time, then executed through PyTorch's int8 CPU kernels (`quantized::linear`,
`quantized::conv2d` on prepacked weights) where they exist, and simulated (the same grids in
float) otherwise. Each replaced layer's `execution` label says which.

Each quantized layer takes float input, quantizes it with its calibrated input grid (uint8,
affine), runs the int8 kernel whose output lands on the calibrated output grid, and
dequantizes, so the model is still called with float tensors. BatchNorm is folded into the
preceding convolution first.

A layer whose output is the model's output (a classifier's logits) keeps that output in float:
its int8 input and weights are multiplied exactly and the result is not rounded to an output
grid. Rounding logits to 255 (or, without VNNI, 127) levels creates exact ties between the top
classes, which then break differently in every runtime; a float output costs one rounding step
less accuracy and nothing measurable in time for a classifier head.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Literal

import torch
from torch import nn

from torchshrink.codec.structure import register_module
from torchshrink.config import Config, check
from torchshrink.errors import ConfigError
from torchshrink.nn import params, select_layers, set_module
from torchshrink.nn.calib import track_output_layers
from torchshrink.quant.cpu import has_vnni
from torchshrink.quant.dynamic import PackedCache, qweight
from torchshrink.quant.fake import fake_quantize, shares_values
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.layers import LayerOp, layer_op, load_int8_weights, run_op, weight_shape
from torchshrink.quant.observers import ObserverName, calibrate, expected_input_shape, make_observer
from torchshrink.registry import Context, register

__all__ = ["StaticInt8", "StaticInt8Layer", "has_vnni"]

_REAL_KINDS = ("linear", "conv2d")




class StaticInt8Layer(PackedCache):
    """Linear/Conv with int8 weights (per output channel) and calibrated uint8 activations."""

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None
    in_scale: torch.Tensor
    in_zero_point: torch.Tensor
    out_scale: torch.Tensor
    out_zero_point: torch.Tensor

    def __init__(self, op: LayerOp, *, bias: bool, act_bits: int = 8, per_channel: bool = True,
                 float_output: bool = False) -> None:
        super().__init__()
        self.op, self.act_bits, self.per_channel = dict(op), act_bits, per_channel
        self.float_output = float_output
        shape = weight_shape(op)
        self.register_buffer("weight_int8", torch.zeros(shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(shape[0] if per_channel else 1))
        self.register_buffer("bias", torch.zeros(op["out"]) if bias else None)
        for t in ("in", "out"):
            self.register_buffer(f"{t}_scale", torch.ones(()))
            self.register_buffer(f"{t}_zero_point", torch.zeros((), dtype=torch.int32))

    @property
    def real(self) -> bool:
        return self.op["kind"] in _REAL_KINDS and self.act_bits == 8 and not self.float_output

    @property
    def execution(self) -> str:
        if self.float_output:
            return f"int8 grids, float output (exact product of int{self.act_bits} input and int8 weights)"
        if self.real:
            return f"int8 kernel (quantized::{self.op['kind']}, {torch.backends.quantized.engine})"
        return f"fake-quant (simulated int8 weights, int{self.act_bits} activations)"

    @property
    def weight(self) -> torch.Tensor:
        """The int8 grid as float: what the layer computes with (and what code that reads a
        layer's `.weight`, e.g. for its dtype as Hugging Face's ViT does, finds)."""
        scale = self.weight_scale.reshape(-1, *([1] * (self.weight_int8.dim() - 1)))
        return self.weight_int8.float() * scale

    def packed(self) -> tuple[Any, float, int, float, int]:
        if self._pack is None:
            qw = qweight(self.weight_int8, self.weight_scale)
            if self.op["kind"] == "linear":
                pk = torch.ops.quantized.linear_prepack(qw, self.bias)
            else:
                pk = torch.ops.quantized.conv2d_prepack(qw, self.bias, self.op["stride"], self.op["padding"],
                                                        self.op["dilation"], self.op["groups"])
            self._pack = (pk, float(self.in_scale), int(self.in_zero_point), float(self.out_scale),
                          int(self.out_zero_point))
        return self._pack

    def _fq(self, x: torch.Tensor, which: str) -> torch.Tensor:
        s = getattr(self, f"{which}_scale").to(x.dtype)
        z = getattr(self, f"{which}_zero_point").to(x.dtype)
        return fake_quantize(x, s, z, self.act_bits, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.real:
            pk, s_in, z_in, s_out, z_out = self.packed()
            with warnings.catch_warnings():  # the deprecation note on quantized tensors, once per call
                warnings.simplefilter("ignore", UserWarning)
                qx = torch.quantize_per_tensor(x.float().contiguous(), s_in, z_in, torch.quint8)
            if self.op["kind"] == "linear":
                qy = torch.ops.quantized.linear(qx, pk, s_out, z_out)
            else:
                qy = torch.ops.quantized.conv2d(qx, pk, s_out, z_out)
            y = qy.dequantize()
            return y if dtype == torch.float32 else y.to(dtype)
        x = self._fq(x.float(), "in")
        y = run_op(self.op, x, self.weight, self.bias)
        return (y if self.float_output else self._fq(y, "out")).to(dtype)

    def ts_effective_weights(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def extra_repr(self) -> str:
        return f"{self.op['kind']}, shape={tuple(self.weight_int8.shape)}, act_bits={self.act_bits}, " \
               f"float_output={self.float_output}, execution={self.execution!r}"


register_module(
    StaticInt8Layer,
    to_spec=lambda m: {"op": m.op, "bias": m.bias is not None, "act_bits": m.act_bits,
                       "per_channel": m.per_channel, "float_output": m.float_output},
    from_spec=lambda s: StaticInt8Layer(s["op"], bias=s["bias"], act_bits=s["act_bits"],
                                        per_channel=s["per_channel"], float_output=s.get("float_output", False)),
    name="StaticInt8Layer",
)


def apply_static_int8(model: nn.Module, config: StaticInt8, ctx: Context) -> nn.Module:
    if ctx.calibration is None:
        raise ConfigError(
            "StaticInt8 needs calibration data to fix activation ranges: "
            "ts.quantize(model, ts.StaticInt8(), calibration=loader) (a few hundred samples suffice); "
            "use ts.DynamicInt8() to quantize without data"
        )
    if config.fold_bn:
        fold_batchnorm(model)
    layers = select_layers(model, targets=config.targets, ignore=config.ignore)
    ops = {name: layer_op(name, m) for name, m in layers}
    reduce_range = (not has_vnni()) if config.reduce_range is None else config.reduce_range
    eff_bits = config.activation_bits - (1 if reduce_range and config.activation_bits == 8 else 0)
    observers = {name: (make_observer(config.observer), make_observer(config.observer)) for name, _ in layers}
    handles = []
    for name, m in layers:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor, name: str = name) -> None:
            observers[name][0].observe(args[0])
            observers[name][1].observe(out)
        handles.append(m.register_forward_hook(hook))
    try:
        with track_output_layers(model, layers) as output_layers:
            calibrate(model, ctx.calibration, expected=expected_input_shape(model, ctx.example),
                      limit=config.calibration_batches, progress=ctx.progress, desc="calibrate StaticInt8")
    finally:
        for h in handles:
            h.remove()
    for name, m in layers:
        per_channel = not shares_values(params.chain(m))
        q = StaticInt8Layer(ops[name], bias=m.bias is not None, act_bits=config.activation_bits,
                            per_channel=per_channel, float_output=name in output_layers)
        load_int8_weights(q, m, per_channel)
        for which, obs in zip(("in", "out"), observers[name]):
            s, z = obs.qparams(eff_bits, symmetric=False)
            getattr(q, f"{which}_scale").fill_(s)
            getattr(q, f"{which}_zero_point").fill_(z)
        set_module(model, name, q)
    return model


@register(family="quant", handler=apply_static_int8)
@dataclasses.dataclass(frozen=True, kw_only=True)
class StaticInt8(Config):
    """Post-training static int8: weights per output channel (symmetric), activations per
    tensor (affine uint8) with ranges from `observer` over the calibration data.

    observer: minmax | moving_average | percentile | mse | entropy (see quant/observers.py).
    activation_bits: 8 runs on int8 kernels; 16 is simulated.
    reduce_range: 7-bit activations for CPUs without VNNI; None detects the CPU.
    """

    observer: ObserverName = "minmax"
    activation_bits: Literal[8, 16] = 8
    calibration_batches: int | None = 32
    fold_bn: bool = True
    reduce_range: bool | None = None
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        from torchshrink.quant.observers import OBSERVERS

        check(self.observer in OBSERVERS, f"observer must be one of {list(OBSERVERS)}, got {self.observer!r}")
        check(self.activation_bits in (8, 16),
              f"activation_bits must be 8 or 16 (bits outside 2..16 are not supported), got {self.activation_bits!r}")
        check(self.calibration_batches is None or self.calibration_batches > 0,
              f"calibration_batches must be positive or None (all), got {self.calibration_batches}")

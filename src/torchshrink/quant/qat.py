"""`QAT(...)`: quantization-aware training. BatchNorm is folded first, a `FakeQuant`
parametrization goes on every selected weight (after any pruning mask or codebook already in
the chain), optionally inputs get an activation fake quantizer, and the model fine-tunes with
`torchshrink.train.fit` through the straight-through estimator. With `lsq=True` the step sizes
are learned as well (LSQ). `convert=True` then packs the weights (exactly the trained grid)
into `WeightOnlyLayer`s.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Literal

import torch
from torch import nn

from torchshrink.codec.structure import module_codec, module_codec_by_name, register_module
from torchshrink.config import Config, check
from torchshrink.errors import ConfigError
from torchshrink.nn import params, select_layers, set_module
from torchshrink.quant.fake import (
    FakeQuant,
    Granularity,
    check_bits,
    check_group,
    fake_quantize,
    grad_scale,
    shares_values,
)
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.layers import in_width, layer_op, weight_tensor
from torchshrink.quant.observers import calibrate, expected_input_shape, make_observer
from torchshrink.quant.weight_only import quantize_layer_weight_only
from torchshrink.registry import Context, register

__all__ = ["QAT", "ActQuantized", "attach_fake_quant"]


class ActQuantized(nn.Module):
    """Wraps a layer so its input is fake-quantized (affine, per tensor) with STE."""

    execution = "fake-quant (simulated)"
    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, layer: nn.Module, *, bits: int = 8, lsq: bool = False) -> None:
        super().__init__()
        self.layer, self.bits, self.lsq = layer, bits, lsq
        scale = torch.ones(())
        if lsq:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros(()))

    def set_range(self, scale: float, zero: int) -> None:
        with torch.no_grad():
            self.scale.fill_(scale)
            self.zero_point.fill_(float(zero))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale.abs().clamp_min(1e-12)
        if self.lsq:
            factor = 1.0 / math.sqrt(max(1, x[0].numel()) * (2**self.bits - 1))
            s = grad_scale(s, factor)
        return self.layer(fake_quantize(x, s.to(x.dtype), self.zero_point.to(x.dtype), self.bits, False))


def _act_spec(m: ActQuantized) -> dict[str, Any]:
    inner = m.layer
    if params.is_parametrized(inner):
        # parametrize swaps the class for a generated subclass; describe the plain layer (the
        # artifact re-attaches the chain itself).
        inner = copy.deepcopy(inner)
        params.materialize(inner)
    codec = module_codec(inner)
    if codec is None:
        raise ConfigError(f"cannot describe {type(m.layer).__name__} inside ActQuantized for the artifact")
    return {"bits": m.bits, "lsq": m.lsq, "inner_type": codec.name, "inner": codec.to_spec(inner)}


register_module(
    ActQuantized,
    to_spec=_act_spec,
    from_spec=lambda s: ActQuantized(module_codec_by_name(s["inner_type"]).from_spec(s["inner"]),
                                     bits=s["bits"], lsq=s["lsq"]),
    name="ActQuantized",
)


def attach_fake_quant(model: nn.Module, layers: list[tuple[str, nn.Module]], *, bits: int, symmetric: bool,
                      granularity: Granularity, group_size: int | None, method: Literal["minmax", "mse"],
                      lsq: bool) -> None:
    """Append a FakeQuant to each layer's weight chain (after mask and codebook)."""
    for name, m in layers:
        g: Granularity = granularity
        gs = group_size if granularity == "group" else None
        if shares_values(params.chain(m)):
            g, gs = "tensor", None
        if g == "group":
            check_group(name, in_width(layer_op(name, m)), gs)
    for _, m in layers:
        g, gs = granularity, (group_size if granularity == "group" else None)
        if shares_values(params.chain(m)):
            g, gs = "tensor", None
        w = weight_tensor(m).detach()
        params.add(m, FakeQuant(tuple(w.shape), bits=bits, symmetric=symmetric, granularity=g,
                                group_size=gs, method=method, lsq=lsq, init=w))


def apply_qat(model: nn.Module, config: QAT, ctx: Context) -> nn.Module:
    if ctx.train is None:
        raise ConfigError("QAT fine-tunes the model and needs training data: "
                          "ts.quantize(model, ts.QAT(bits=4), train=train_loader, val=val_loader)")
    from torchshrink.train import fit

    if config.fold_bn:
        fold_batchnorm(model)
    layers = select_layers(model, targets=config.targets, ignore=config.ignore)
    attach_fake_quant(model, layers, bits=config.bits, symmetric=config.symmetric,
                      granularity=config.granularity, group_size=config.group_size, method=config.clip,
                      lsq=config.lsq)
    if config.activation_bits is not None:
        wrapped = {name: ActQuantized(m, bits=config.activation_bits, lsq=config.lsq) for name, m in layers}
        observers = {name: make_observer("moving_average") for name in wrapped}
        handles = [m.register_forward_pre_hook(
            lambda mod, args, name=name: observers[name].observe(args[0])) for name, m in layers]
        try:
            calibrate(model, ctx.calibration if ctx.calibration is not None else ctx.train,
                      expected=expected_input_shape(model, ctx.example), limit=8, progress=ctx.progress,
                      desc="calibrate QAT")
        finally:
            for h in handles:
                h.remove()
        for name, w in wrapped.items():
            w.set_range(*observers[name].qparams(config.activation_bits, symmetric=False))
            set_module(model, name, w)
    fit(model, ctx.train, val=ctx.val, epochs=config.epochs, lr=config.lr, progress=ctx.progress,
        desc="QAT", **ctx.extras.get("fit_kwargs", {}))
    if config.convert:
        for name, m in select_layers(model, types=(nn.Linear, nn.Conv1d, nn.Conv2d), targets=config.targets,
                                     ignore=config.ignore):
            if params.has(m, FakeQuant):
                set_module(model, name, quantize_layer_weight_only(name, m, bits=config.bits))
    return model


@register(family="quant", handler=apply_qat)
@dataclasses.dataclass(frozen=True, kw_only=True)
class QAT(Config):
    """Quantization-aware fine-tuning through fake quantization.

    bits: weight bits, 2..8. activation_bits: 8 or 16 to also fake-quantize layer inputs.
    granularity/group_size: per tensor, per output channel, or groups of `group_size` inputs.
    clip: initial grid range, `mse` (clipping search) or `minmax`.
    lsq: learn the step sizes (Esser et al., "Learned Step Size Quantization", 2020).
    convert: after training, pack the weights into real low-bit storage (WeightOnlyLayer).
    Pass `train=` (and `val=`) to ts.quantize.
    """

    bits: int = 4
    activation_bits: Literal[8, 16] | None = None
    symmetric: bool = True
    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int | None = None
    clip: Literal["minmax", "mse"] = "mse"
    lsq: bool = True
    epochs: int = 3
    lr: float = 1e-4
    fold_bn: bool = True
    convert: bool = False
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits("bits", self.bits, 2, 8)
        check(self.granularity != "group" or (self.group_size is not None and self.group_size > 0),
              f"granularity='group' needs a positive group_size, got {self.group_size}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        if self.convert:
            check(self.activation_bits is None, "convert=True packs weights only; set activation_bits=None")

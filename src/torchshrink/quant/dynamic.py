"""`DynamicInt8`: int8 weights, activations quantized per batch at run time, executed by
PyTorch's own int8 CPU kernel (`quantized::linear_dynamic`, fbgemm/x86/onednn), or with one
scale per token (row of the input) on PyTorch's int8 matmul (`torch._int_mm`).

The int8 weights and scales are plain buffers (they travel in the state_dict and the
artifact); the kernel's prepacked weight is an opaque object rebuilt from them on first use
and after every `load_state_dict`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
from torch import nn

from torchshrink.codec.structure import register_module
from torchshrink.config import Config, check_choice
from torchshrink.nn import params, select_layers, set_module
from torchshrink.quant.cpu import has_vnni
from torchshrink.quant.fake import shares_values
from torchshrink.quant.layers import load_int8_weights, quantize_int8_weight
from torchshrink.registry import Context, register

__all__ = ["DynamicInt8", "DynamicInt8Linear", "quantize_int8_weight"]


def qweight(weight_int8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A torch quantized (qint8) tensor over the stored codes, for the prepack ops."""
    w = weight_int8.contiguous()
    with warnings.catch_warnings():  # torch flags quantized tensors as deprecated; the kernels need them
        warnings.simplefilter("ignore", UserWarning)
        if scale.numel() == 1:
            return torch._make_per_tensor_quantized_tensor(w, float(scale), 0)
        zeros = torch.zeros(scale.numel(), dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(w, scale.double(), zeros, 0)


class PackedCache(nn.Module):
    """Base for modules whose kernel wants an opaque prepacked weight built from buffers."""

    def __init__(self) -> None:
        super().__init__()
        self._pack: Any = None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._pack = None  # new codes: repack on next call
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        self._pack = None
        return super()._apply(fn, recurse)


class DynamicInt8Linear(PackedCache):
    """Linear with int8 weights run by `quantized::linear_dynamic` (float in, float out)."""

    execution = "int8 kernel (quantized::linear_dynamic)"
    weight_int8: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, per_channel: bool = True,
                 reduce_range: bool = True, per_token: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.per_channel, self.reduce_range, self.per_token = per_channel, reduce_range, per_token
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features if per_channel else 1))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, m: nn.Linear, *, per_channel: bool = True, reduce_range: bool = True,
                   per_token: bool = False) -> DynamicInt8Linear:
        q = cls(m.in_features, m.out_features, m.bias is not None, per_channel=per_channel,
                reduce_range=reduce_range, per_token=per_token)
        load_int8_weights(q, m, per_channel)
        return q

    def packed(self) -> Any:
        if self._pack is None:
            if self.per_token:  # torch._int_mm reads the weight as (in, out)
                self._pack = self.weight_int8.t().contiguous()
            else:
                self._pack = torch.ops.quantized.linear_prepack(qweight(self.weight_int8, self.weight_scale),
                                                                self.bias)
        return self._pack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.per_token:
            y = self._per_token(x.float())
        else:
            y = torch.ops.quantized.linear_dynamic(x.float(), self.packed(), self.reduce_range)
        return y if dtype == torch.float32 else y.to(dtype)

    def _per_token(self, x: torch.Tensor) -> torch.Tensor:
        # One symmetric int8 scale per row: an outlier token no longer coarsens every other
        # token's grid, and a row's output does not depend on what else is in the batch.
        x2 = x.reshape(-1, self.in_features)
        s = per_token_scale(x2)
        q = torch.round(x2 / s).clamp_(-127, 127).to(torch.int8)
        y = torch._int_mm(q, self.packed()).float() * (s * self.weight_scale.reshape(1, -1))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def ts_effective_weights(self) -> dict[str, torch.Tensor]:
        scale = self.weight_scale.reshape(-1, 1) if self.per_channel else self.weight_scale
        out = {"weight": self.weight_int8.float() * scale}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def extra_repr(self) -> str:
        tok = ", per_token=True" if self.per_token else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"per_channel={self.per_channel}{tok}, bias={self.bias is not None}")


def per_token_scale(x2: torch.Tensor) -> torch.Tensor:
    """(rows, 1) symmetric int8 scales of a 2-D activation: max |x| / 127 per row; an all-zero
    row gets scale 1 (its codes are 0 either way)."""
    amax = x2.abs().amax(-1, keepdim=True)
    return torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))


register_module(
    DynamicInt8Linear,
    to_spec=lambda m: {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None,
                       "per_channel": m.per_channel, "reduce_range": m.reduce_range,
                       **({"per_token": True} if m.per_token else {})},
    from_spec=lambda s: DynamicInt8Linear(s["in"], s["out"], s["bias"], per_channel=s["per_channel"],
                                          reduce_range=s["reduce_range"], per_token=s.get("per_token", False)),
    name="DynamicInt8Linear",
)


def apply_dynamic_int8(model: nn.Module, config: DynamicInt8, ctx: Context) -> nn.Module:
    reduce_range = (not has_vnni()) if config.reduce_range is None else config.reduce_range
    for name, m in select_layers(model, types=(nn.Linear,), targets=config.targets, ignore=config.ignore):
        assert isinstance(m, nn.Linear)
        # A codebook earlier in the chain: one scale per tensor keeps the shared values shared.
        per_channel = config.per_channel and not shares_values(params.chain(m))
        set_module(model, name, DynamicInt8Linear.from_float(m, per_channel=per_channel, reduce_range=reduce_range,
                                                             per_token=config.activations == "token"))
    return model


@register(family="quant", handler=apply_dynamic_int8)
@dataclasses.dataclass(frozen=True, kw_only=True)
class DynamicInt8(Config):
    """Int8 weights (symmetric, per output channel by default) and per-batch int8 activations,
    on PyTorch's int8 CPU kernel. Applies to Linear layers; no calibration data needed.

    reduce_range: quantize activations to 7 bits so fbgemm's 16-bit accumulation cannot
        saturate; None (the default) does so only on CPUs without VNNI, where it is needed
        (8-bit activations are markedly more accurate on transformers).
    activations: "tensor" (default): one asymmetric uint8 scale per call, fbgemm's fastest
        kernel; "token": one symmetric int8 scale per row (per token in a transformer), as
        LLM int8 schemes do: closer to the float model on transformers, and each row's output is
        independent of the rest of the batch, at some speed on small layers (`torch._int_mm`).
    """

    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    per_channel: bool = True
    reduce_range: bool | None = None
    activations: str = "tensor"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("DynamicInt8.activations", self.activations, ("tensor", "token"))

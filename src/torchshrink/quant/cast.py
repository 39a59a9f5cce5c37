"""`Cast(dtype="float16"|"bfloat16")`: half-precision weights and compute for the selected
layers; the model still takes and returns float32 (each layer casts its input down and its
output back)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from torchshrink.codec.structure import register_module
from torchshrink.config import Config
from torchshrink.nn import select_layers, set_module
from torchshrink.quant.layers import LayerOp, bias_of, layer_op, run_op, weight_of, weight_shape
from torchshrink.registry import Context, register

__all__ = ["Cast", "CastLayer"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class CastLayer(nn.Module):
    """Linear/Conv with weights stored and computed in float16 or bfloat16."""

    def __init__(self, op: LayerOp, *, dtype: str, bias: bool) -> None:
        super().__init__()
        self.op, self.dtype_name = dict(op), dtype
        dt = _DTYPES[dtype]
        self.weight = nn.Parameter(torch.zeros(weight_shape(op), dtype=dt))
        self.bias = nn.Parameter(torch.zeros(op["out"], dtype=dt)) if bias else None

    @property
    def execution(self) -> str:
        return f"{self.dtype_name} compute"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = run_op(self.op, x.to(self.weight.dtype), self.weight, self.bias)
        return y.to(x.dtype)

    def ts_effective_weights(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight.detach().float()}
        if self.bias is not None:
            out["bias"] = self.bias.detach().float()
        return out


register_module(
    CastLayer,
    to_spec=lambda m: {"op": m.op, "dtype": m.dtype_name, "bias": m.bias is not None},
    from_spec=lambda s: CastLayer(s["op"], dtype=s["dtype"], bias=s["bias"]),
    name="CastLayer",
)


def apply_cast(model: nn.Module, config: Cast, ctx: Context) -> nn.Module:
    dt = _DTYPES[config.dtype]
    for name, m in select_layers(model, targets=config.targets, ignore=config.ignore):
        q = CastLayer(layer_op(name, m), dtype=config.dtype, bias=m.bias is not None)
        with torch.no_grad():
            q.weight.copy_(weight_of(m).to(dt))
            b = bias_of(m)
            if b is not None and q.bias is not None:
                q.bias.copy_(b.to(dt))
        set_module(model, name, q)
    return model


@register(family="quant", handler=apply_cast)
@dataclasses.dataclass(frozen=True, kw_only=True)
class Cast(Config):
    """Store and run Linear/Conv layers in float16 or bfloat16 (2 bytes per weight)."""

    dtype: Literal["float16", "bfloat16"] = "bfloat16"
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()

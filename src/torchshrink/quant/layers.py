"""What quantized replacement modules share: how the original layer computed (linear or a
convolution with its stride/padding/...), as JSON data, so one replacement class serves
Linear, Conv1d and Conv2d and rebuilds from an artifact spec."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from torchshrink.errors import UnsupportedModelError
from torchshrink.quant.fake import grid_params, group_rows, quantize_codes

__all__ = ["LayerOp", "layer_op", "run_op", "weight_of", "weight_tensor", "bias_of", "in_width",
           "quantize_int8_weight", "load_int8_weights", "compute_dtype", "DecodedOp"]

LayerOp = dict[str, Any]


def layer_op(name: str, m: nn.Module) -> LayerOp:
    """The computation of a Linear/Conv1d/Conv2d, minus its tensors."""
    if isinstance(m, nn.Linear):
        return {"kind": "linear", "in": m.in_features, "out": m.out_features}
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.padding_mode != "zeros":
            raise UnsupportedModelError(
                f"layer {name!r} uses padding_mode={m.padding_mode!r}; quantized replacements support "
                "only zero padding; exclude it with ignore=[...]"
            )
        if isinstance(m.padding, str):
            raise UnsupportedModelError(f"layer {name!r} uses padding={m.padding!r}; use numeric padding "
                                        "or exclude it with ignore=[...]")
        return {"kind": "conv1d" if isinstance(m, nn.Conv1d) else "conv2d", "in": m.in_channels,
                "out": m.out_channels, "kernel": list(m.kernel_size), "stride": list(m.stride),
                "padding": list(m.padding), "dilation": list(m.dilation), "groups": m.groups}
    if isinstance(m, nn.Embedding):
        if m.max_norm is not None:
            raise UnsupportedModelError(f"layer {name!r} is an Embedding with max_norm (it renormalizes its weight "
                                        "in place); exclude it with ignore=[...]")
        return {"kind": "embedding", "in": m.embedding_dim, "out": m.num_embeddings, "padding_idx": m.padding_idx}
    raise UnsupportedModelError(f"layer {name!r} is a {type(m).__name__}; only Linear, Conv1d, Conv2d and Embedding "
                                "can be quantized here; exclude it with ignore=[...]")


def weight_shape(op: LayerOp) -> tuple[int, ...]:
    if op["kind"] in ("linear", "embedding"):
        return (op["out"], op["in"])
    return (op["out"], op["in"] // op["groups"], *op["kernel"])


def in_width(op: LayerOp) -> int:
    """Input width of the weight matrix view (out, in): what a quantization group spans."""
    shape = weight_shape(op)
    n = 1
    for s in shape[1:]:
        n *= s
    return n


def run_op(op: LayerOp, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if op["kind"] == "linear":
        return F.linear(x, w, b)
    if op["kind"] == "embedding":
        return F.embedding(x, w, op.get("padding_idx"))
    fn = F.conv1d if op["kind"] == "conv1d" else F.conv2d
    return fn(x, w, b, tuple(op["stride"]), tuple(op["padding"]), tuple(op["dilation"]), op["groups"])


class DecodedOp(nn.Module):
    """A quantized layer's computation with its weight decoded once to a plain float tensor:
    as fast as the float layer, at the float layer's memory. It computes in its input's dtype."""

    execution = "dense (decoded once)"
    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, op: LayerOp, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.op = dict(op)
        self.register_buffer("weight", weight.detach().float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = compute_dtype(x, self.weight)
        return run_op(self.op, x, self.weight.to(dt), None if self.bias is None else self.bias.to(dt))

    def ts_effective_weights(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight}
        if self.bias is not None:
            out["bias"] = self.bias
        return out


def compute_dtype(x: torch.Tensor, fallback: torch.Tensor) -> torch.dtype:
    """The dtype a replacement computes in: its input's, or (for an embedding's integer indices)
    that of its own float tensors."""
    return x.dtype if x.is_floating_point() else fallback.dtype


def weight_tensor(m: nn.Module) -> torch.Tensor:
    """`m.weight` as a Tensor (through any parametrization chain, with autograd)."""
    w = m.weight
    if not isinstance(w, torch.Tensor):
        raise UnsupportedModelError(f"{type(m).__name__} has no weight tensor to quantize")
    return w


def weight_of(m: nn.Module) -> torch.Tensor:
    """The effective weight (through any mask/codebook parametrization chain), detached."""
    return weight_tensor(m).detach().float()


def bias_of(m: nn.Module) -> torch.Tensor | None:
    b = getattr(m, "bias", None)
    return None if b is None else b.detach().float()


def quantize_int8_weight(w: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes (int8 tensor of w's shape) and scales (out,) or (1,)."""
    rows = group_rows(w, "channel" if per_channel else "tensor", None)
    scale, zero = grid_params(rows, 8, True)
    codes = quantize_codes(rows, scale, zero, 8, True).to(torch.int32) - 128
    return codes.to(torch.int8).reshape(w.shape), scale.reshape(-1)


def load_int8_weights(q: nn.Module, m: nn.Module, per_channel: bool) -> None:
    """Fill an int8 replacement's `weight_int8`/`weight_scale`/`bias` buffers from the float
    layer `m` it replaces (its effective weight, through any parametrization chain)."""
    codes, scale = quantize_int8_weight(weight_of(m), per_channel)
    q.get_buffer("weight_int8").copy_(codes)
    q.get_buffer("weight_scale").copy_(scale)
    b = bias_of(m)
    q_bias = getattr(q, "bias", None)
    if b is not None and q_bias is not None:
        q_bias.copy_(b)

"""Truncated-SVD factorization of Linear and Conv2d layers into two thinner layers.

A weight matrix W (m x n) with singular values s_1 >= s_2 >= ... is replaced by the factor pair
A (m x r) and B (r x n) of its truncated SVD, split as A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T so
both factors have the same scale (fine-tuning with one learning rate then treats them alike).
By Eckart-Young this is the best rank-r approximation: ||W - AB||_F^2 = sum_{i>r} s_i^2.

Convolutions are matricized two ways:
- "channel": W (cout, cin*kh*kw) -> a kh x kw conv to r channels, then a 1x1 conv to cout
  (Zhang et al. 2016's channel decomposition).
- "spatial": W as (cin*kh, cout*kw) -> a kh x 1 conv to r channels, then a 1 x kw conv to cout
  (Jaderberg et al. 2014 scheme 2 / Tai et al. 2016). Exact at full rank for any stride,
  padding and dilation, because the height and width parts of a conv apply separately.

The factors are ordinary nn.Linear / nn.Conv2d children, so later pruning or quantization
finds and constrains them like any other layer; the artifact stores the pair, not the product.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from torchshrink.codec.structure import register_module
from torchshrink.errors import UnsupportedModelError

__all__ = [
    "ConvMode",
    "FactorizedLinear",
    "FactorizedConv2d",
    "LayerSpectrum",
    "spectrum",
    "truncated_factors",
    "factorize_layer",
    "dense_params",
    "factor_params_per_rank",
    "max_saving_rank",
    "supports",
]

ConvMode = Literal["channel", "spatial"]
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
Layer = nn.Linear | nn.Conv2d


class FactorizedLinear(nn.Module):
    """y = second(first(x)): Linear(in, rank, bias=False) then Linear(rank, out, bias)."""

    execution = "physically smaller (two thin Linear layers)"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def product(self) -> torch.Tensor:
        """The dense (out, in) weight this pair computes with."""
        return self.second.weight @ self.first.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class FactorizedConv2d(nn.Module):
    """A Conv2d replaced by two convs whose composition is the rank-r approximation.

    mode "channel": first = kh x kw conv (cin -> rank) with the original stride, padding and
    dilation; second = 1x1 conv (rank -> cout) with the bias.
    mode "spatial": first = kh x 1 conv (cin -> rank) carrying the height stride/padding/dilation;
    second = 1 x kw conv (rank -> cout) carrying the width ones and the bias.
    """

    execution = "physically smaller (two thin Conv2d layers)"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], rank: int, *,
                 mode: ConvMode = "channel", stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                 dilation: tuple[int, int] = (1, 1), bias: bool = True,
                 padding_mode: PaddingMode = "zeros") -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.rank, self.mode = in_channels, out_channels, rank, mode
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation, self.padding_mode = tuple(padding), tuple(dilation), padding_mode
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        if mode == "channel":
            self.first = nn.Conv2d(in_channels, rank, (kh, kw), (sh, sw), (ph, pw), (dh, dw), bias=False,
                                   padding_mode=padding_mode)
            self.second = nn.Conv2d(rank, out_channels, 1, bias=bias)
        else:
            self.first = nn.Conv2d(in_channels, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False,
                                   padding_mode=padding_mode)
            self.second = nn.Conv2d(rank, out_channels, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias,
                                    padding_mode=padding_mode)

    @property
    def weight(self) -> torch.Tensor:
        """The dense kernel the pair computes (out, in, kh, kw), for code that reads a conv's
        `.weight` (Hugging Face's ViT reads its dtype); the pair itself stores only factors."""
        a, b = self.first.weight, self.second.weight
        if self.mode == "channel":  # kxk to rank, then 1x1
            return torch.einsum("or,rihw->oihw", b[:, :, 0, 0], a)
        return torch.einsum("orw,rih->oihw", b[:, :, 0, :], a[:, :, :, 0])  # (kh x 1) then (1 x kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def product(self) -> torch.Tensor:
        """The dense (cout, cin, kh, kw) kernel this pair computes with."""
        a, b = self.first.weight, self.second.weight
        if self.mode == "channel":
            return torch.einsum("or,rcij->ocij", b[:, :, 0, 0], a)
        return torch.einsum("rci,orj->ocij", a[:, :, :, 0], b[:, :, 0, :])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
                f"mode={self.mode!r}, stride={self.stride}, padding={self.padding}")


def _flin_spec(m: FactorizedLinear) -> dict[str, Any]:
    return {"in": m.in_features, "out": m.out_features, "rank": m.rank, "bias": m.second.bias is not None}


def _fconv_spec(m: FactorizedConv2d) -> dict[str, Any]:
    return {"in": m.in_channels, "out": m.out_channels, "k": list(m.kernel_size), "rank": m.rank, "mode": m.mode,
            "s": list(m.stride), "p": list(m.padding), "d": list(m.dilation),
            "bias": m.second.bias is not None, "pm": m.padding_mode}


register_module(FactorizedLinear, to_spec=_flin_spec,
                from_spec=lambda s: FactorizedLinear(s["in"], s["out"], s["rank"], s["bias"]))
register_module(FactorizedConv2d, to_spec=_fconv_spec,
                from_spec=lambda s: FactorizedConv2d(s["in"], s["out"], tuple(s["k"]), s["rank"], mode=s["mode"],
                                                     stride=tuple(s["s"]), padding=tuple(s["p"]),
                                                     dilation=tuple(s["d"]), bias=s["bias"], padding_mode=s["pm"]))


def supports(module: nn.Module) -> str | None:
    """None when `module` can be factorized, else the reason it cannot."""
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"grouped/depthwise conv (groups={module.groups}) has no cross-channel matrix to factor"
        if isinstance(module.padding, str) and module.padding != "valid":
            return f"padding={module.padding!r}; give explicit integer padding"
        return None
    return f"{type(module).__name__} is not a Linear or Conv2d"


def _conv_padding(m: nn.Conv2d) -> tuple[int, int]:
    if isinstance(m.padding, str):  # only "valid" reaches here (see supports)
        return (0, 0)
    return (int(m.padding[0]), int(m.padding[1]))


def _matrix(module: Layer, mode: ConvMode) -> torch.Tensor:
    """The matrix whose truncated SVD gives the factor pair. Reads `module.weight`, the effective
    value, so a pruning mask or a fake-quant grid on the layer is what gets factorized."""
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        return w
    cout, cin, kh, kw = w.shape
    if mode == "channel":
        return w.reshape(cout, cin * kh * kw)
    # rows (cin, kh), cols (cout, kw): W[o, c, i, j] = M[(c, i), (o, j)]
    return w.permute(1, 2, 0, 3).reshape(cin * kh, cout * kw)


@dataclasses.dataclass
class LayerSpectrum:
    """One layer's SVD, kept so that rank selection and surgery factor each layer only once."""

    name: str
    module: Layer
    u: torch.Tensor  # float64 (rows, k)
    s: torch.Tensor  # float64 (k,), descending
    vh: torch.Tensor  # float64 (k, cols)
    mode: ConvMode

    @property
    def max_rank(self) -> int:
        return int(self.s.numel())

    def discarded_energy(self, rank: int) -> float:
        """sum_{i > rank} s_i^2 = ||W - W_rank||_F^2 (Eckart-Young)."""
        return float((self.s[rank:] ** 2).sum())


def spectrum(name: str, module: nn.Module, mode: ConvMode = "channel") -> LayerSpectrum:
    why = supports(module)
    if why is not None:
        raise UnsupportedModelError(f"cannot factorize layer {name!r}: {why}")
    assert isinstance(module, (nn.Linear, nn.Conv2d))
    m = _matrix(module, mode).to(torch.float64)
    # float64 so the factors are the true truncated SVD to float32 precision after the cast.
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return LayerSpectrum(name, module, u, s, vh, mode)


def truncated_factors(sp: LayerSpectrum, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A @ B the best rank-`rank` approximation; the scale is split evenly."""
    root = sp.s[:rank].sqrt()
    return sp.u[:, :rank] * root, root[:, None] * sp.vh[:rank]


def dense_params(module: Layer) -> int:
    """Weight elements of the layer as it stands (bias excluded: factorization keeps it)."""
    return int(module.weight.numel())


def factor_params_per_rank(module: Layer, mode: ConvMode = "channel") -> int:
    """Weight elements the factor pair needs per unit of rank."""
    if isinstance(module, nn.Linear):
        return module.in_features + module.out_features
    cout, cin, kh, kw = module.weight.shape
    return cin * kh * kw + cout if mode == "channel" else cin * kh + cout * kw


def max_saving_rank(module: Layer, mode: ConvMode = "channel") -> int:
    """The largest rank whose factor pair is strictly smaller than the dense weight (0: none)."""
    per = factor_params_per_rank(module, mode)
    return (dense_params(module) - 1) // per


def factorize_layer(sp: LayerSpectrum, rank: int) -> nn.Module:
    """A new module computing the rank-`rank` truncated SVD of `sp.module` (bias copied)."""
    module = sp.module
    a, b = truncated_factors(sp, rank)
    bias = module.bias.detach() if module.bias is not None else None
    dtype, device = module.weight.dtype, module.weight.device
    new: FactorizedLinear | FactorizedConv2d
    if isinstance(module, nn.Linear):
        new = FactorizedLinear(module.in_features, module.out_features, rank, bias is not None)
        first_w, second_w = b, a
    else:
        cout, cin, kh, kw = module.weight.shape
        new = FactorizedConv2d(cin, cout, (kh, kw), rank, mode=sp.mode,
                               stride=(module.stride[0], module.stride[1]), padding=_conv_padding(module),
                               dilation=(module.dilation[0], module.dilation[1]), bias=bias is not None,
                               padding_mode=module.padding_mode)
        if sp.mode == "channel":
            first_w = b.reshape(rank, cin, kh, kw)
            second_w = a.reshape(cout, rank, 1, 1)
        else:
            first_w = a.reshape(cin, kh, rank).permute(2, 0, 1).unsqueeze(-1)  # (r, cin, kh, 1)
            second_w = b.reshape(rank, cout, kw).permute(1, 0, 2).unsqueeze(2)  # (cout, r, 1, kw)
    new.to(device=device, dtype=dtype)
    with torch.no_grad():
        new.first.weight.copy_(first_w)
        new.second.weight.copy_(second_w)
        if bias is not None:
            assert new.second.bias is not None
            new.second.bias.copy_(bias)
    new.train(module.training)
    return new

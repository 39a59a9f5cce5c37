"""Truncated-SVD factor pairs: Eckart-Young error, exactness at full rank, shapes, savings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.lowrank import (
    FactorizedConv2d,
    FactorizedLinear,
    chosen_ranks,
    count_params,
    factorize_layer,
    spectrum,
)
from torchshrink.nn import params, select_layers


@pytest.mark.parametrize("rank", [1, 3, 10, 24])
def test_linear_error_is_the_discarded_singular_values(rank: int) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(24, 40).double()
    sp = spectrum("l", layer)
    pair = factorize_layer(sp, rank)
    s = torch.linalg.svdvals(layer.weight.detach())
    err2 = float(((layer.weight - pair.product()) ** 2).sum().detach())
    discarded = float((s[rank:] ** 2).sum())
    assert err2 == pytest.approx(discarded, rel=1e-9, abs=1e-12)
    # and no rank-r matrix does better than the truncated SVD: a random one is far worse
    x = torch.randn(40, rank, dtype=torch.float64) @ torch.randn(rank, 24, dtype=torch.float64)
    assert float(((layer.weight.detach() - x) ** 2).sum()) > err2


@pytest.mark.parametrize("mode", ["channel", "spatial"])
@pytest.mark.parametrize("rank", [1, 4, 7])
def test_conv_error_is_the_discarded_singular_values(mode: str, rank: int) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 10, 3, padding=1).double()
    sp = spectrum("c", conv, mode)  # type: ignore[arg-type]
    pair = factorize_layer(sp, rank)
    assert isinstance(pair, FactorizedConv2d)
    w = conv.weight.detach()
    mat = w.reshape(10, -1) if mode == "channel" else w.permute(1, 2, 0, 3).reshape(6 * 3, 10 * 3)
    s = torch.linalg.svdvals(mat)
    err2 = float(((w - pair.product()) ** 2).sum().detach())
    assert err2 == pytest.approx(float((s[rank:] ** 2).sum()), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mode", ["channel", "spatial"])
@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_conv_pair_is_exact_at_full_rank_with_stride_padding_dilation(mode: str, pad_mode: str) -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(5, 7, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), padding_mode=pad_mode).double()
    sp = spectrum("c", conv, mode)  # type: ignore[arg-type]
    pair = factorize_layer(sp, sp.max_rank)
    x = torch.randn(2, 5, 17, 19, dtype=torch.float64)
    torch.testing.assert_close(pair(x), conv(x), rtol=1e-10, atol=1e-10)


def test_factor_pair_parameter_counts() -> None:
    lin = FactorizedLinear(784, 300, 20, bias=True)
    assert count_params(lin) == 20 * (784 + 300) + 300
    ch = FactorizedConv2d(32, 64, (3, 3), 8, mode="channel", bias=False)
    assert count_params(ch) == 8 * (32 * 9 + 64)
    sp = FactorizedConv2d(32, 64, (3, 3), 8, mode="spatial", bias=False)
    assert count_params(sp) == 8 * (32 * 3 + 64 * 3)
    assert sp.first.kernel_size == (3, 1) and sp.second.kernel_size == (1, 3)


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "resnet_small", "mobilenet_small", "gpt_tiny"])
@pytest.mark.parametrize("config", [ts.SvdFactorization(energy=0.8), ts.SvdFactorization(ratio=0.3, mode="spatial"),
                                    ts.SvdFactorization(budget_params=0.6)])
def test_output_shape_unchanged_for_every_reference_model(name: str, config: ts.SvdFactorization) -> None:
    torch.manual_seed(0)
    model = ts.models.create(name).eval()
    x = ts.models.example_input(model, 2)
    before = model(x)
    n_before = count_params(model)
    out = ts.factorize(model, config)
    ranks = chosen_ranks(out)
    assert ranks, "something was factorized"
    assert out(x).shape == before.shape
    assert count_params(out) < n_before


def test_layer_is_factorized_only_where_it_saves() -> None:
    model = ts.models.create("lenet300")  # fc3: 10 x 100 = 1000 weights; rank r costs 110 r
    ts.factorize(model, ts.SvdFactorization(per_layer={"fc3": 9}, targets=("fc3",)))
    assert chosen_ranks(model) == {"fc3": 9}
    model = ts.models.create("lenet300")
    ts.factorize(model, ts.SvdFactorization(rank=10, targets=("fc3",)))  # 1100 > 1000: stays dense
    assert chosen_ranks(model) == {} and isinstance(model.fc3, nn.Linear)
    # depthwise convs have nothing to factor and are left alone
    mb = ts.factorize(ts.models.create("mobilenet_small"), ts.SvdFactorization(ratio=0.5))
    assert all(isinstance(b.dw, nn.Conv2d) for b in mb.blocks)
    assert all(isinstance(b.pw, FactorizedConv2d) for b in mb.blocks)


def test_rank_rules_energy_ratio_and_per_layer() -> None:
    torch.manual_seed(0)
    model = ts.models.create("lenet300")
    s = torch.linalg.svdvals(model.fc1.weight.detach().double())
    cum = torch.cumsum(s**2, 0) / (s**2).sum()
    want = int((cum < 0.5).sum()) + 1  # smallest r holding half the energy
    ts.factorize(model, ts.SvdFactorization(energy=0.5, per_layer={"fc2": {"ratio": 0.25}, "fc3": 2}))
    ranks = chosen_ranks(model)
    assert ranks["fc1"] == want
    assert ranks["fc2"] == (300 * 100 // 4) // 400
    assert ranks["fc3"] == 2


def test_factorizes_the_effective_weight_of_a_pruned_or_fake_quantized_layer() -> None:
    class Mask(nn.Module):
        def __init__(self, mask: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w * self.mask

    class Round(nn.Module):  # a stand-in for a fake-quant grid
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return torch.round(w * 64) / 64

    torch.manual_seed(0)
    model = ts.models.create("lenet300")
    params.add(model.fc2, Mask((torch.rand(100, 300) > 0.7).float()))
    params.add(model.fc2, Round())
    effective = model.fc2.weight.detach().double()
    assert float((effective == 0).float().mean()) > 0.6
    ts.factorize(model, ts.SvdFactorization(rank=20, targets=("fc2",)))
    u, s, vh = torch.linalg.svd(effective, full_matrices=False)
    best = (u[:, :20] * s[:20]) @ vh[:20]
    assert isinstance(model.fc2, FactorizedLinear)
    torch.testing.assert_close(model.fc2.product().double(), best, rtol=0, atol=1e-5)


def test_factors_are_plain_layers_that_later_methods_find() -> None:
    model = ts.factorize(ts.models.create("lenet5"), ts.SvdFactorization(ratio=0.3))
    names = [n for n, _ in select_layers(model)]
    assert "fc1.first" in names and "fc1.second" in names and "conv2.first" in names
    # a second factorization leaves existing factor pairs alone (refactoring them cannot save)
    again = ts.factorize(model, ts.SvdFactorization(ratio=0.3))
    assert chosen_ranks(again) == chosen_ranks(model)


def test_prune_after_factorize_if_available() -> None:
    if not hasattr(ts, "MagnitudePruning"):
        pytest.skip("ts.MagnitudePruning not available in this checkout")
    model = ts.factorize(ts.models.create("lenet300"), ts.SvdFactorization(ratio=0.3))
    x = ts.models.example_input(model, 4)
    pruned = ts.prune(model, ts.MagnitudePruning(sparsity=0.5))
    assert pruned(x).shape == (4, 10)
    w = pruned.fc1.first.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("mode", ["channel", "spatial"])
def test_factor_pair_weight_is_the_kernel_it_computes(mode: str) -> None:
    from torch.nn import functional as F

    from torchshrink.lowrank.svd import FactorizedConv2d

    torch.manual_seed(0)
    pair = FactorizedConv2d(3, 8, (3, 3), 2, mode=mode)  # type: ignore[arg-type]
    x = torch.randn(2, 3, 9, 9)
    dense = F.conv2d(x, pair.weight, pair.second.bias)
    assert (pair(x) - dense).abs().max() < 1e-5

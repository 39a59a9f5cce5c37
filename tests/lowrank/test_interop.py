"""Factorization stacked with pruning and quantization, in either order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.lowrank import FactorizedLinear, chosen_ranks


def _need(*names: str) -> None:
    missing = [n for n in names if not hasattr(ts, n)]
    if missing:
        pytest.skip(f"{missing} not available in this checkout")


def test_prune_then_factorize_uses_the_masked_weight() -> None:
    _need("MagnitudePruning")
    torch.manual_seed(0)
    model = ts.prune(ts.models.create("lenet300"), ts.MagnitudePruning(sparsity=0.8))
    masked = model.fc1.weight.detach().double()
    assert float((masked == 0).double().mean()) == pytest.approx(0.8, abs=0.02)
    out = ts.factorize(model, ts.SvdFactorization(rank=40, targets=("fc1",)))
    u, s, vh = torch.linalg.svd(masked, full_matrices=False)
    torch.testing.assert_close(out.fc1.product().detach().double(), (u[:, :40] * s[:40]) @ vh[:40],
                               rtol=0, atol=1e-5)
    x = ts.models.example_input(out, 2)
    assert out(x).shape == (2, 10)


def test_factorize_then_weight_only_quantization() -> None:
    _need("WeightOnly")
    torch.manual_seed(0)
    model = ts.factorize(ts.models.create("lenet300"), ts.SvdFactorization(ratio=0.3)).eval()
    x = ts.models.example_input(model, 8)
    ref = model(x).detach()
    q = ts.quantize(model, ts.WeightOnly(bits=8, group_size=None)).eval()
    assert isinstance(q.fc1, FactorizedLinear) and not isinstance(q.fc1.first, nn.Linear)
    out = q(x).detach()
    sqnr = 10 * torch.log10((ref**2).sum() / ((ref - out) ** 2).sum())
    assert float(sqnr) > 30.0
    # and factorizing again leaves the packed factors alone instead of failing
    again = ts.factorize(q, ts.SvdFactorization(ratio=0.3))
    assert chosen_ranks(again) == chosen_ranks(model)

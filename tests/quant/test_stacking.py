"""Stacking: quantizing a pruned model keeps zeros exactly zero; quantizing a clustered model
keeps shared values shared (at most K distinct values per layer)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.nn import params
from torchshrink.quant import QAT, FakeQuant
from torchshrink.quant.qat import attach_fake_quant

try:
    from torchshrink.prune.mask import PruningMask, set_mask
except ImportError:  # pragma: no cover - the pruning package is built concurrently
    PruningMask = None  # type: ignore[assignment,misc]

K = 8


class StandInCodebook(nn.Module):
    """A minimal shared-value parametrization: every weight snaps to the nearest of K values."""

    def __init__(self, codebook: torch.Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook.clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        idx = (w.reshape(-1, 1) - self.codebook.reshape(1, -1)).abs().argmin(1)
        return self.codebook[idx].reshape(w.shape)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))


def _prune(model: nn.Module, frac: float = 0.6) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            keep = m.weight.detach().abs() > m.weight.detach().abs().flatten().quantile(frac)
            if PruningMask is not None:
                set_mask(m, keep)
            else:
                with torch.no_grad():
                    m.weight.mul_(keep)


def _cluster(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            w = m.weight.detach()
            params.add(m, StandInCodebook(torch.linspace(float(w.min()), float(w.max()), K)))


def _weights(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for m in model.modules():
        fn = getattr(m, "ts_effective_weights", None)
        if fn is not None:
            out.append(fn()["weight"])
        elif isinstance(m, nn.Linear):
            out.append(m.weight.detach())
    return out


CONFIGS = {
    "dynamic": lambda: ts.DynamicInt8(),
    "static": lambda: ts.StaticInt8(calibration_batches=1),
    "weight_only_int4": lambda: ts.WeightOnly(bits=4, group_size=16),
    "weight_only_int3_affine": lambda: ts.WeightOnly(bits=3, group_size=None, symmetric=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pruned_zeros_stay_exactly_zero(name: str) -> None:
    model = _mlp()
    _prune(model)
    zeros_before = [w == 0 for w in _weights(model)]
    q = ts.quantize(model, CONFIGS[name](), calibration=[torch.randn(16, 64)], progress=False)
    for z, w in zip(zeros_before, _weights(q)):
        assert z.sum() > 0 and torch.equal(w[z], torch.zeros(int(z.sum())))


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quant_goes_after_the_mask_and_keeps_zeros(symmetric: bool) -> None:
    if PruningMask is None:
        pytest.skip("torchshrink.prune.mask not available")
    model = _mlp()
    _prune(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    attach_fake_quant(model, layers, bits=3, symmetric=symmetric, granularity="group", group_size=16,
                      method="mse", lsq=True)
    for _, m in layers:
        kinds = [type(p) for p in params.chain(m)]
        assert kinds == [PruningMask, FakeQuant]
        mask = params.find(m, PruningMask).mask
        assert torch.equal(m.weight[~mask], torch.zeros(int((~mask).sum())))


def test_qat_keeps_pruned_zeros_through_training() -> None:
    model = _mlp()
    _prune(model)
    zeros = [w == 0 for w in _weights(model)]
    x = torch.randn(64, 64)
    y = torch.randint(0, 8, (64,))
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    q = ts.quantize(model, QAT(bits=4, epochs=2, lr=1e-2, convert=True), train=loader, progress=False)
    for z, w in zip(zeros, _weights(q)):
        assert torch.equal(w[z], torch.zeros(int(z.sum())))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_clustered_values_stay_shared(name: str) -> None:
    model = _mlp()
    _cluster(model)
    assert all(w.unique().numel() <= K for w in _weights(model))
    q = ts.quantize(model, CONFIGS[name](), calibration=[torch.randn(16, 64)], progress=False)
    for w in _weights(q):
        assert w.unique().numel() <= K


def test_fake_quant_on_codebook_keeps_at_most_k_values() -> None:
    model = _mlp()
    _cluster(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    attach_fake_quant(model, layers, bits=4, symmetric=False, granularity="group", group_size=16,
                      method="minmax", lsq=False)
    for _, m in layers:
        assert params.find(m, FakeQuant).granularity == "tensor"
        assert m.weight.unique().numel() <= K


def test_pruned_and_clustered_real_codebook_if_available() -> None:
    try:
        from torchshrink.cluster.codebook import Codebook  # noqa: F401
    except ImportError:
        pytest.skip("torchshrink.cluster not available")
    if PruningMask is None:
        pytest.skip("torchshrink.prune.mask not available")
    model = _mlp()
    _prune(model)
    ts.cluster(model, ts.KMeansSharing(bits=3))
    before = _weights(model)
    q = ts.quantize(model, ts.WeightOnly(bits=4, group_size=16))
    for b, w in zip(before, _weights(q)):
        assert torch.equal(w[b == 0], torch.zeros(int((b == 0).sum())))
        assert w.unique().numel() <= b.unique().numel()

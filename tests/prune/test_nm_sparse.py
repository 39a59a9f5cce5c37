from __future__ import annotations

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.prune import PruningMask, SparseLinear, is_nm, mask_of
from torchshrink.prune.sparse import time_call


def test_nm_2_4_pattern(lenet300: nn.Module) -> None:
    ts.prune(lenet300, ts.NMPruning(n=2, m=4))
    for m in (lenet300.fc1, lenet300.fc2, lenet300.fc3):
        assert is_nm(m.weight, 2, 4)
        assert float((m.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
        assert isinstance(mask_of(m), torch.Tensor)  # CPU keeps the mask
        assert getattr(m, "execution", None) is None  # not accelerated on CPU


def test_nm_skips_non_divisible_layers_and_conv() -> None:
    model = ts.models.create("lenet5")  # conv1 has 1*5*5 = 25 inputs per row
    ts.prune(model, ts.NMPruning(n=1, m=4))
    assert mask_of(model.conv1) is None and "conv1" in model.torchshrink_nm_skipped
    assert is_nm(model.conv2.weight, 1, 4) and is_nm(model.fc1.weight, 1, 4)


def test_nm_config_errors() -> None:
    with pytest.raises(ts.ConfigError, match=r"n must be in \[1, m\)"):
        ts.NMPruning(n=4, m=4)


def test_nm_obs() -> None:
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    ts.prune(model, ts.NMPruning(criterion="obs"), calibration=[torch.randn(64, 32)])
    assert is_nm(model[0].weight, 2, 4) and is_nm(model[2].weight, 2, 4)


def test_sparse_linear_matches_dense() -> None:
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight[torch.rand(32, 64) < 0.9] = 0
    sp = SparseLinear.from_linear(lin)
    x = torch.randn(5, 3, 64)
    assert torch.allclose(sp(x), lin(x), atol=1e-5)
    assert torch.equal(sp.ts_effective_weights()["weight"], lin.weight.detach())
    assert sp.execution == "sparse CSR"


def test_sparse_execution_swaps_by_measurement(lenet300: nn.Module) -> None:
    ts.prune(lenet300, ts.MagnitudePruning(per_layer={"fc1": 0.97, "fc2": 0.5, "fc3": 0.5}))
    x = torch.randn(4, 1, 28, 28)
    ref = lenet300(x)
    # min_speedup=0 forces the swap wherever sparse enough, so the test does not depend on timing
    ts.prune(lenet300, ts.SparseExecution(min_sparsity=0.9, min_speedup=0.0, rounds=1))
    d = lenet300.torchshrink_sparse_execution
    assert d["fc1"]["execution"] == "sparse CSR" and d["fc1"]["speedup"] > 0
    assert d["fc2"]["execution"].startswith("dense")
    assert isinstance(lenet300.fc1, SparseLinear) and isinstance(lenet300.fc2.parametrizations.weight[0], PruningMask)
    assert torch.allclose(lenet300(x), ref, atol=1e-5)
    # an impossible speedup requirement keeps every layer masked
    m2 = ts.models.create("lenet300")
    ts.prune(m2, ts.MagnitudePruning(sparsity=0.95))
    ts.prune(m2, ts.SparseExecution(min_sparsity=0.9, min_speedup=1e9, rounds=1))
    assert all(v["execution"].startswith("masked only") for v in m2.torchshrink_sparse_execution.values())


def test_time_call_returns_positive() -> None:
    t = time_call({"a": lambda: torch.ones(10).sum()}, rounds=2, inner=2)
    assert t["a"] > 0


def test_measure_labels_pruned_layers() -> None:
    model = ts.models.create("lenet300")
    ts.prune(model, ts.ChannelPruning(ratio=0.5))  # fc1, fc2 physically smaller
    ts.prune(model, ts.MagnitudePruning(sparsity=0.97, targets=["fc1"]))
    ts.prune(model, ts.MagnitudePruning(sparsity=0.5, targets=["fc3"]))
    ts.prune(model, ts.SparseExecution(min_sparsity=0.9, min_speedup=0.0, rounds=1, targets=["fc1"]))
    report = ts.measure(model, latency=False)
    labels = {r.name: r.execution for r in report.layers}
    assert labels["fc1"] == "sparse CSR"
    assert labels["fc2"] == "physically smaller"
    assert labels["fc3"] == "physically smaller + masked only"  # thinner input, then masked

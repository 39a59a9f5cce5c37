"""ProductQuantization: sub-vector codebooks, pruned zeros kept, trained centroids, bit-exact
artifacts and an ONNX graph that gathers the weight from the codebook."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.cluster import KMeansSharing, ProductCodebook, ProductQuantization
from torchshrink.errors import ConfigError
from torchshrink.nn import params


def _correlated_linear(out: int = 64, inp: int = 32) -> nn.Linear:
    """Rows whose neighbouring weights move together (as trained filters' do), so a codebook
    of vectors can capture what scalar sharing cannot."""
    torch.manual_seed(0)
    layer = nn.Linear(inp, out)
    base = torch.randn(out, inp // 2, 1)
    with torch.no_grad():
        layer.weight.copy_((base + 0.1 * torch.randn(out, inp // 2, 2)).reshape(out, inp))
    return layer


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_codebook_shape_and_at_most_2_pow_bits_vectors() -> None:
    layer = _correlated_linear()
    ts.cluster(nn.Sequential(layer), ProductQuantization(dim=4, bits=5))
    p = params.find(layer, ProductCodebook)
    assert p is not None and p.k <= 32 and p.dim == 4 and tuple(p.indices.shape) == (64, 8)
    rows = layer.weight.detach().reshape(-1, 4)
    assert torch.unique(rows, dim=0).shape[0] <= 32


def test_beats_scalar_sharing_at_equal_bits_per_weight() -> None:
    w = _correlated_linear().weight.detach().clone()
    pq, km = nn.Sequential(_correlated_linear()), nn.Sequential(_correlated_linear())
    ts.cluster(pq, ProductQuantization(dim=2, bits=4))  # 2 bits per weight
    ts.cluster(km, KMeansSharing(bits=2))  # 2 bits per weight
    e_pq, e_km = _rel_err(pq[0].weight.detach(), w), _rel_err(km[0].weight.detach(), w)
    assert e_pq < 0.7 * e_km, (e_pq, e_km)


def test_pruned_zeros_stay_zero_through_fine_tuning_and_centroids_move() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 4))
    ts.prune(m, ts.MagnitudePruning(sparsity=0.6))
    zeros = (m[0].weight == 0).clone()
    ts.cluster(m, ProductQuantization(dim=4, bits=4))
    assert torch.equal(m[0].weight == 0, zeros | (m[0].weight == 0)) and bool((m[0].weight[zeros] == 0).all())
    p = params.find(m[0], ProductCodebook)
    assert p is not None and p.mask is not None
    before = p.codebook.detach().clone()
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    ts.fit(m, [(x, y)] * 4, epochs=1, lr=1e-2, progress=False)
    assert not torch.equal(before, p.codebook.detach())
    assert bool((m[0].weight[zeros] == 0).all())


def test_artifact_round_trip_is_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = ts.prune(ts.models.create("lenet300"), ts.MagnitudePruning(sparsity=0.8))
    ts.cluster(m, ProductQuantization(dim=4, bits=4, iters=3, per_layer={"fc3": [2, 4]}))
    path = tmp_path / "pq.tsz"
    ts.save(m, path)
    back = ts.load(path)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(back(x), m(x))
    p = params.find(back.fc3, ProductCodebook)
    assert p is not None and p.dim == 2 and p.k <= 16
    for name, t in m.state_dict().items():
        if not name.endswith(".original"):  # the raw weight under a codebook is stored as zeros
            assert torch.equal(back.state_dict()[name], t), name


def test_bad_dim_is_a_config_error_naming_the_layer_before_any_work() -> None:
    m = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"dim=3.*layer '0'.*10 elements"):
        ts.cluster(m, ProductQuantization(dim=3, bits=4, targets=("0", "2")))
    assert not params.chain(m[2])  # nothing was half done
    with pytest.warns(UserWarning, match="0"):  # selected by default: left float, with a warning
        ts.cluster(m, ProductQuantization(dim=4, bits=2))
    assert not params.chain(m[0]) and params.find(m[2], ProductCodebook) is not None
    with pytest.raises(ConfigError, match="per_layer"):
        ProductQuantization(per_layer={"0": [2]})
    with pytest.raises(ConfigError, match="bits"):
        ProductQuantization(bits=0)


def test_onnx_export_gathers_the_weight_and_matches_in_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    import onnx

    torch.manual_seed(0)
    m = ts.prune(ts.models.create("lenet300"), ts.MagnitudePruning(sparsity=0.7))
    ts.cluster(m, ProductQuantization(dim=4, bits=4, iters=3))
    path = tmp_path / "pq.onnx"
    r = ts.export(m.eval(), path, example=torch.randn(2, 1, 28, 28), format="onnx")
    assert r.parity is not None and r.parity.passed  # checked in onnxruntime
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("Gather") == 3 and "Reshape" in ops
    dense = sum(int(torch.tensor(i.dims).prod()) for i in graph.initializer if i.data_type == 1 and len(i.dims) == 2
                and tuple(i.dims) in {(300, 784), (100, 300), (10, 100)})
    assert dense == 0  # no layer's weight is stored as dense floats

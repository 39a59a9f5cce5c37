import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.cluster import Codebook, KMeansSharing
from torchshrink.nn import params


def _pruned_mlp() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    with torch.no_grad():
        for layer in (m[0], m[2]):
            layer.weight[layer.weight.abs() < 0.1] = 0
    return m


def test_shares_at_most_2_pow_bits_values_and_keeps_zeros() -> None:
    m = _pruned_mlp()
    zeros = [(layer.weight == 0).clone() for layer in (m[0], m[2])]
    ts.cluster(m, KMeansSharing(bits=3, per_layer={"2": 2}))
    for layer, z, bits in zip((m[0], m[2]), zeros, (3, 2)):
        w = layer.weight
        assert torch.equal(w == 0, z)
        assert w[w != 0].unique().numel() <= 2**bits
        p = params.find(layer, Codebook)
        assert p is not None and p.k <= 2**bits


def test_centroid_gradient_is_per_cluster_sum() -> None:
    m = _pruned_mlp()
    ts.cluster(m, KMeansSharing(bits=2))
    layer = m[0]
    p = params.find(layer, Codebook)
    assert p is not None
    x = torch.randn(8, 20)
    out = layer(x).sum()
    out.backward()
    # dL/dW for y = x W^T summed: every row gets x.sum(0)
    dw = x.sum(0).expand(30, 20)
    idx = p.indices.long()
    expected = torch.zeros(p.k + 1).index_add_(0, idx.flatten(), dw.flatten())[: p.k]
    assert torch.allclose(p.codebook.grad, expected, atol=1e-5)


def test_fine_tuning_moves_centroids_not_zeros() -> None:
    m = _pruned_mlp()
    ts.cluster(m, KMeansSharing(bits=2, algorithm="optimal"))
    zeros = (m[0].weight == 0).clone()
    before = params.find(m[0], Codebook).codebook.detach().clone()
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    loader = [(x, y)] * 5
    ts.fit(m, loader, epochs=1, lr=1e-2, progress=False)
    after = params.find(m[0], Codebook).codebook.detach()
    assert not torch.equal(before, after)
    assert torch.equal(m[0].weight == 0, zeros)
    assert m[0].weight[~zeros].unique().numel() <= 4


def test_folds_pruning_mask_and_canonical_is_zero() -> None:
    from torchshrink.prune.mask import PruningMask, set_mask

    model = nn.Sequential(nn.Linear(10, 10))
    m = model[0]
    mask = torch.rand(10, 10, generator=torch.Generator().manual_seed(0)) < 0.3
    set_mask(m, mask)
    ts.cluster(model, KMeansSharing(bits=2))
    assert params.find(m, PruningMask) is None
    assert torch.equal(m.weight != 0, mask)
    p = params.find(m, Codebook)
    assert torch.count_nonzero(p.canonical_original(params.original(m))) == 0


def test_config_errors() -> None:
    with pytest.raises(ts.ConfigError, match="bits must be in"):
        KMeansSharing(bits=0)
    with pytest.raises(ts.ConfigError, match="init"):
        KMeansSharing(init="kmeans++")
    with pytest.raises(ts.ConfigError, match=r"per_layer\['fc1'\]"):
        KMeansSharing(per_layer={"fc1": 40})
    with pytest.raises(ts.ConfigError, match="per_layer pattern 'nope' matches no"):
        ts.cluster(nn.Sequential(nn.Linear(2, 2)), KMeansSharing(per_layer={"nope": 3}))
    assert KMeansSharing.from_dict(KMeansSharing(bits=4).to_dict()) == KMeansSharing(bits=4)

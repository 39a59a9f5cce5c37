from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import torchshrink as ts
from torchshrink.nn import params
from torchshrink.prune import PruningMask, mask_of, set_mask, sparsity_of


def _layer_sparsity(m: nn.Module) -> float:
    return float((m.weight == 0).float().mean())


def test_layer_scope_exact(lenet300: nn.Module) -> None:
    out = ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.73))
    assert out is lenet300  # structure unchanged -> same object
    for layer in (lenet300.fc1, lenet300.fc2, lenet300.fc3):
        assert abs(_layer_sparsity(layer) - 0.73) <= 0.001
        assert isinstance(params.chain(layer)[0], PruningMask)


def test_global_scope_exact_and_uneven(lenet300: nn.Module) -> None:
    ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.9, scope="global"))
    assert abs(sparsity_of(lenet300) - 0.9) <= 0.001
    per = [_layer_sparsity(m) for m in (lenet300.fc1, lenet300.fc2, lenet300.fc3)]
    assert len({round(p, 3) for p in per}) > 1  # one global threshold, not one per layer


def test_per_layer_deep_compression_rates(lenet300: nn.Module) -> None:
    rates = {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}
    ts.prune(lenet300, ts.MagnitudePruning(per_layer=rates))
    for name, s in rates.items():
        assert abs(_layer_sparsity(getattr(lenet300, name)) - s) <= 0.001


def test_global_with_per_layer_override(lenet300: nn.Module) -> None:
    ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.8, scope="global", per_layer={"fc3": 0.5}))
    assert abs(_layer_sparsity(lenet300.fc3) - 0.5) <= 0.001
    rest = [lenet300.fc1, lenet300.fc2]
    zeros = sum(int((m.weight == 0).sum()) for m in rest)
    assert abs(zeros / sum(m.weight.numel() for m in rest) - 0.8) <= 0.001


def test_stays_exact_after_fit_and_zero_entries(lenet300: nn.Module, img_loader) -> None:
    ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.8, scope="global"))
    masks = {n: mask_of(m).clone() for n, m in lenet300.named_modules() if mask_of(m) is not None}
    before = sparsity_of(lenet300)
    ts.fit(lenet300, img_loader, epochs=2, lr=1e-2, weight_decay=0.1, progress=False)
    assert sparsity_of(lenet300) == before
    for n, m in lenet300.named_modules():
        if n in masks:
            assert torch.equal(mask_of(m), masks[n])
            assert torch.all(m.weight[~masks[n]] == 0)


def test_state_dict_round_trip(lenet300: nn.Module) -> None:
    ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.6))
    sd = lenet300.state_dict()
    assert "fc1.parametrizations.weight.0.mask" in sd and sd["fc1.parametrizations.weight.0.mask"].dtype == torch.bool
    fresh = ts.models.create("lenet300")
    for m in (fresh.fc1, fresh.fc2, fresh.fc3):
        set_mask(m, torch.ones_like(m.weight, dtype=torch.bool))
    fresh.load_state_dict(sd)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(fresh(x), lenet300(x))
    assert abs(sparsity_of(fresh) - 0.6) <= 0.001


class _Scale(nn.Module):
    """Stand-in for a later parametrization (codebook / fake quant)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * 2 + 0.0


def test_composes_with_later_parametrizations(lenet300: nn.Module) -> None:
    ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.5))
    params.add(lenet300.fc1, _Scale())
    assert abs(_layer_sparsity(lenet300.fc1) - 0.5) <= 0.001
    # re-pruning a layer that already has a later parametrization updates the mask in place
    ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.7, targets=["fc1"]))
    chain = params.chain(lenet300.fc1)
    assert isinstance(chain[0], PruningMask) and isinstance(chain[1], _Scale)
    assert abs(_layer_sparsity(lenet300.fc1) - 0.7) <= 0.001


def test_mask_goes_first_when_added_after_another_parametrization() -> None:
    lin = nn.Linear(8, 4)
    params.add(lin, _Scale())
    set_mask(lin, torch.rand(4, 8) > 0.5)
    assert [type(p) for p in params.chain(lin)] == [PruningMask, _Scale]


def test_canonical_original_is_masked_and_chain_identical() -> None:
    lin = nn.Linear(8, 4)
    p = set_mask(lin, torch.rand(4, 8) > 0.5)
    raw = params.original(lin)
    canon = p.canonical_original(raw)
    assert torch.equal(p(canon), p(raw)) and torch.all(canon[~p.mask] == 0)
    assert p.execution == "masked only"


def test_repruning_never_regrows(lenet300: nn.Module) -> None:
    ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.5))
    first = mask_of(lenet300.fc2).clone()
    ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.8))
    assert not torch.any(mask_of(lenet300.fc2) & ~first)
    assert abs(_layer_sparsity(lenet300.fc2) - 0.8) <= 0.001


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_sparsity_out_of_range(bad: float) -> None:
    with pytest.raises(ts.ConfigError, match=r"sparsity must be in \[0, 1\), got"):
        ts.MagnitudePruning(sparsity=bad)
    with pytest.raises(ts.ConfigError, match=r"per_layer\['fc1'\] must be in \[0, 1\)"):
        ts.MagnitudePruning(per_layer={"fc1": bad})


def test_pattern_matching_no_layer_lists_layers(lenet300: nn.Module) -> None:
    with pytest.raises(ts.ConfigError, match=r"per_layer pattern 'fc9' matches no .*Layers: fc1, fc2, fc3"):
        ts.prune(lenet300, ts.MagnitudePruning(per_layer={"fc9": 0.5}))
    with pytest.raises(ts.ConfigError, match=r"ignore pattern 'conv\*' matches no .*Layers: fc1, fc2, fc3"):
        ts.prune(lenet300, ts.MagnitudePruning(ignore=["conv*"]))


def test_criterion_without_data(lenet300: nn.Module) -> None:
    with pytest.raises(ts.ConfigError, match=r"criterion 'taylor' needs calibration data.*calibration=loader"):
        ts.prune(lenet300, ts.MagnitudePruning(criterion="taylor"))
    with pytest.raises(ts.ConfigError, match=r"criterion 'activation' needs calibration data"):
        ts.prune(ts.models.create("resnet_small"), ts.ChannelPruning(criterion="activation"))


def test_config_round_trip() -> None:
    cfg = ts.MagnitudePruning(sparsity=0.9, scope="global", per_layer={"fc3": 0.5}, ignore=["fc1"])
    assert ts.Config.from_dict(cfg.to_dict()) == cfg
    assert not parametrize.is_parametrized(nn.Linear(2, 2))


def test_removing_masks_from_a_deep_copy_leaves_the_original_working(lenet300: nn.Module) -> None:
    import copy

    from torchshrink.prune import remove_masks

    ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.5))
    baked = remove_masks(copy.deepcopy(lenet300))
    x = torch.randn(2, 784)
    assert torch.equal(baked(x), lenet300(x))
    assert not params.is_parametrized(baked.fc1) and params.is_parametrized(lenet300.fc1)


def test_artifact_round_trip_keeps_masks(lenet300: nn.Module, tmp_path) -> None:
    ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.9, scope="global"))
    ts.save(lenet300, tmp_path / "m.tsz")
    back = ts.load(tmp_path / "m.tsz", like=ts.models.create("lenet300"))
    x = torch.randn(3, 784)
    assert torch.equal(back(x), lenet300(x))
    assert torch.equal(mask_of(back.fc1), mask_of(lenet300.fc1))

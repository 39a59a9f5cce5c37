"""The model walker: layer selection, per-layer patterns, module swaps, parametrization chains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink import models
from torchshrink.errors import ConfigError
from torchshrink.nn import params, resolve_per_layer, select_layers, set_module


def test_select_all_linear_layers_of_lenet300_in_order() -> None:
    names = [n for n, _ in select_layers(models.create("lenet300"))]
    assert names == ["fc1", "fc2", "fc3"]


def test_targets_and_ignore_globs_and_regex() -> None:
    m = models.create("lenet5")
    assert [n for n, _ in select_layers(m, targets=["conv*"])] == ["conv1", "conv2"]
    assert [n for n, _ in select_layers(m, ignore=["fc2"])] == ["conv1", "conv2", "fc1"]
    assert [n for n, _ in select_layers(m, targets=["re:fc\\d"])] == ["fc1", "fc2"]
    assert [n for n, _ in select_layers(m, types=(nn.Conv2d,))] == ["conv1", "conv2"]


def test_unmatched_pattern_lists_the_layers() -> None:
    with pytest.raises(ConfigError, match=r"pattern 'fc9' matches no .* Layers: fc1, fc2, fc3"):
        select_layers(models.create("lenet300"), targets=["fc9"])
    with pytest.raises(ConfigError, match=r"ignore pattern 'nope'"):
        select_layers(models.create("lenet300"), ignore=["nope"])


def test_resolve_per_layer_first_match_wins() -> None:
    per = {"fc1": 0.9, "fc*": 0.5}
    assert resolve_per_layer("fc1", per, 0.0) == 0.9
    assert resolve_per_layer("fc3", per, 0.0) == 0.5
    assert resolve_per_layer("conv1", per, 0.1) == 0.1


def test_set_module_swaps_and_returns_old() -> None:
    m = models.create("resnet_small")
    new = nn.Linear(128, 10)
    old = set_module(m, "fc", new)
    assert isinstance(old, nn.Linear) and m.fc is new
    with pytest.raises(ConfigError, match="cannot replace the root module"):
        set_module(m, "", new)


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


class _AddOne(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def test_parametrization_chain_order_original_and_remove() -> None:
    lin = nn.Linear(3, 2)
    raw = lin.weight.detach().clone()
    params.add(lin, _Double())
    params.add(lin, _AddOne())
    assert [type(p) for p in params.chain(lin)] == [_Double, _AddOne]
    assert torch.equal(lin.weight, 2 * raw + 1)  # applied in registration order
    assert torch.equal(params.original(lin), raw)
    assert torch.equal(params.value_before(lin, params.chain(lin)[1]), 2 * raw)
    assert params.find(lin, _AddOne) is params.chain(lin)[1]
    params.remove(lin, _Double)  # keeps _AddOne and the raw tensor
    assert [type(p) for p in params.chain(lin)] == [_AddOne]
    assert torch.equal(lin.weight, raw + 1)
    params.materialize(lin)
    assert not params.is_parametrized(lin)
    assert torch.equal(lin.weight, raw + 1)

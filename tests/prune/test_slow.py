"""Accuracy claims that need real training (excluded from the default suite: `pytest -m slow`)."""

from __future__ import annotations

import copy

import pytest
import torch

import torchshrink as ts

pytestmark = pytest.mark.slow


def test_deep_compression_lenet300_rates_lose_at_most_0_2_points() -> None:
    splits = ts.data.load("mnist5k")
    train, _, test = ts.data.loaders(splits, batch_size=64)
    torch.manual_seed(0)
    model = ts.models.create("lenet300")
    ts.fit(model, train, epochs=20, lr=1e-3, progress=False)
    dense = ts.evaluate(model, test)["accuracy"]
    rates = {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}
    ts.prune(model, ts.MagnitudePruning(per_layer=rates))
    ts.fit(model, train, epochs=6, lr=1e-3, progress=False)
    for name, s in rates.items():
        assert abs(float((getattr(model, name).weight == 0).float().mean()) - s) <= 0.001
    pruned = ts.evaluate(model, test)["accuracy"]
    assert dense >= 93.0
    assert pruned >= dense - 0.2, (dense, pruned)


def test_resnet_small_channel_pruning_within_one_point_after_short_finetune() -> None:
    # 8x8 digits keep this affordable on 2 shared cores (same setup as bench/bench_prune.py)
    splits = ts.data.load("digits")
    train, _, test = ts.data.loaders(splits, batch_size=64)
    torch.manual_seed(0)
    model = ts.models.create("resnet_small")
    ts.fit(model, train, epochs=20, lr=2e-3, progress=False)
    dense = ts.evaluate(model, test)["accuracy"]
    pruned = ts.prune(copy.deepcopy(model), ts.ChannelPruning(ratio=0.5), example=torch.randn(1, 1, 8, 8))
    ts.fit(pruned, train, epochs=5, lr=1e-3, progress=False)
    after = ts.evaluate(pruned, test)["accuracy"]
    assert after >= dense - 1.0, (dense, after)

"""Accuracy after fine-tuning on real data (slow: trains the reference models on mnist5k)."""

from __future__ import annotations

import copy

import pytest
import torch

import torchshrink as ts
from torchshrink.lowrank import count_params, layer_macs

pytestmark = pytest.mark.slow


def test_lenet300_4x_fewer_parameters_within_half_a_point() -> None:
    splits = ts.data.load("mnist5k")
    train, val, test = ts.data.loaders(splits, batch_size=128)
    torch.manual_seed(0)
    base = ts.models.create("lenet300")
    ts.fit(base, train, val=val, epochs=20, lr=1e-3, progress=False)
    base_acc = ts.evaluate(base, test)["accuracy"]
    model = ts.factorize(copy.deepcopy(base), ts.SvdFactorization(budget_params=0.25))
    assert count_params(base) / count_params(model) >= 4.0
    ts.fit(model, train, val=val, epochs=10, lr=5e-4, progress=False)
    assert ts.evaluate(model, test)["accuracy"] >= base_acc - 0.5


def test_resnet_small_half_the_macs_within_one_point() -> None:
    splits = ts.data.load("mnist5k")
    train, val, test = ts.data.loaders(splits, batch_size=64)
    torch.manual_seed(0)
    base = ts.models.create("resnet_small")
    ts.fit(base, train, val=val, epochs=6, lr=1e-3, progress=False)
    base_acc = ts.evaluate(base, test)["accuracy"]
    x = ts.models.example_input(base, 1)
    model = ts.factorize(copy.deepcopy(base), ts.SvdFactorization(budget_macs=0.5), example=x)
    assert sum(layer_macs(model, x).values()) <= 0.5 * sum(layer_macs(base, x).values())
    ts.fit(model, train, val=val, epochs=3, lr=5e-4, progress=False)
    assert ts.evaluate(model, test)["accuracy"] >= base_acc - 1.0

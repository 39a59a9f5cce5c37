"""Shared fixtures: a small trained classifier on the synthetic data set (seconds to train)."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from torchshrink import data
from torchshrink.train import fit


class SmallNet(nn.Module):
    """Conv + BN + Linear: exercises conv kernels, BN folding and linear kernels at test speed."""

    input_shape = (1, 28, 28)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 14 * 14, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


@pytest.fixture(scope="session")
def synthetic_loaders() -> tuple:
    return data.loaders(data.load("synthetic"), batch_size=64, eval_batch_size=500)


@pytest.fixture(scope="session")
def _trained(synthetic_loaders: tuple) -> nn.Module:
    torch.manual_seed(0)
    model = SmallNet()
    fit(model, synthetic_loaders[0], epochs=1, lr=2e-3, progress=False)
    return model.eval()


@pytest.fixture()
def trained(_trained: nn.Module) -> nn.Module:
    """A fresh copy per test (quantization works in place)."""
    return copy.deepcopy(_trained)


@pytest.fixture()
def skeleton() -> nn.Module:
    """An untrained SmallNet for ts.load(like=...)."""
    return SmallNet()


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread avoids OpenMP spin-waits on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

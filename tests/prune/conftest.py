from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import torchshrink as ts


@pytest.fixture
def lenet300() -> torch.nn.Module:
    torch.manual_seed(0)
    return ts.models.create("lenet300")


@pytest.fixture
def img_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


@pytest.fixture
def token_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 64), generator=g)
    return DataLoader(TensorDataset(x, torch.roll(x, -1, 1)), batch_size=8)

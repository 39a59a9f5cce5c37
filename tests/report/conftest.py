"""A small compressed LeNet-300-100 (pruned, then 4-bit shared weights, no training) and its
fp32 baseline, saved once per session: the fast report tests read these files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import torchshrink as ts


@pytest.fixture(scope="session")
def lenet_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("report_models")
    torch.manual_seed(0)
    base = ts.models.create("lenet300")
    base_path, small_path = tmp / "lenet300_fp32.tsz", tmp / "lenet300_small.tsz"
    ts.save(base, base_path)
    small = ts.prune(copy.deepcopy(base), ts.MagnitudePruning(per_layer={"fc1": 0.92, "fc2": 0.8, "fc3": 0.4}))
    small = ts.cluster(small, ts.KMeansSharing(bits=4))
    ts.save(small, small_path)
    return base_path, small_path


@pytest.fixture(scope="session")
def labeled() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two labeled batches of random images: enough for an accuracy to exist, not to mean much."""
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(2)]

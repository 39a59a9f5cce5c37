"""Format 2's manifest: compressed, history optional, tensor names and shapes left to the
skeleton where it rebuilds them, so a LeNet file carries at most 300 B beyond its streams."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchshrink as ts
from torchshrink.api import HISTORY_ATTR


def _deep_compressed(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = ts.prune(ts.models.create(name), ts.MagnitudePruning(sparsity=0.92))
    return ts.cluster(m, ts.KMeansSharing(bits=4))


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_lenet_file_overhead_is_at_most_300_bytes(tmp_path: Path, name: str) -> None:
    m = _deep_compressed(name)
    path = tmp_path / "m.tsz"
    n = ts.save(m, path, metadata={"data": "mnist5k"})
    info = ts.read_info(path)
    assert n == info.file_bytes == info.header_bytes + info.payload_bytes
    assert info.header_bytes <= 300, info.header_bytes
    assert "K" in info.manifest  # names and shapes came from the skeleton
    assert [r.key for r in info.tensors] == [k for k in m.state_dict()]
    back = ts.load(path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(back(x), m(x))
    # like= a fresh module of the same architecture rebuilds the same layout
    assert torch.equal(ts.load(path, like=ts.models.create(name))(x), m(x))


def test_history_is_kept_only_when_asked(tmp_path: Path) -> None:
    m = _deep_compressed("lenet300")
    assert len(getattr(m, HISTORY_ATTR)) == 2
    small, full = tmp_path / "a.tsz", tmp_path / "b.tsz"
    ts.save(m, small)
    ts.save(m, full, history=True)
    assert ts.read_info(small).history == []
    assert getattr(ts.load(small), HISTORY_ATTR, []) == []
    assert ts.read_info(full).history == getattr(m, HISTORY_ATTR)
    assert getattr(ts.load(full), HISTORY_ATTR) == getattr(m, HISTORY_ATTR)
    assert full.stat().st_size > small.stat().st_size


def test_models_without_a_registered_skeleton_keep_the_named_table(tmp_path: Path) -> None:
    m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    path = tmp_path / "s.tsz"
    ts.save(m, path)
    info = ts.read_info(path)
    assert "K" not in info.manifest and info.manifest["t"][0][0] == "0.weight"
    like = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    x = torch.randn(3, 6)
    assert torch.equal(ts.load(path, like=like)(x), m(x))

"""Core ML (.mlpackage) export: k-means codebooks as palettized weights, pruning as sparse weights,
checked against ours bit for bit in the converted program (Core ML itself runs only on Apple
platforms). Error paths are fast; the conversion is slow and skips without coremltools."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.errors import ConfigError, UnsupportedModelError

HAVE_CT = importlib.util.find_spec("coremltools") is not None
needs_ct = pytest.mark.skipif(not HAVE_CT, reason="coremltools not installed (pip install 'torchshrink[coreml]')")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                         nn.Linear(32, 10)).eval()


def test_missing_extra_names_it(without_module: Any, tmp_path: Any) -> None:
    without_module("coremltools")
    with pytest.raises(ConfigError, match=r"pip install 'torchshrink\[coreml\]'"):
        ts.export(_mlp(), f"{tmp_path}/m.mlpackage", example=torch.randn(1, 64), format="coreml")


def test_integer_layers_are_refused_before_conversion(tmp_path: Any) -> None:
    q = ts.quantize(_mlp(), ts.DynamicInt8())
    with pytest.raises(UnsupportedModelError, match=r"layer '1' is int8_dynamic.*format='tflite'"):
        ts.export(q, f"{tmp_path}/m.mlpackage", example=torch.randn(1, 64), format="coreml")
    assert not (tmp_path / "m.mlpackage").exists()


@pytest.mark.slow
@needs_ct
def test_deep_compression_is_palettized_and_sparse_bit_for_bit(tmp_path: Any) -> None:
    m = ts.prune(_mlp(), ts.MagnitudePruning(sparsity=0.6, targets=("1", "3")))
    m = ts.cluster(m, ts.KMeansSharing(bits=4, targets=("1", "5")))
    path = tmp_path / "dc.mlpackage"
    r = ts.export(m, str(path), example=torch.randn(1, 1, 8, 8), format="coreml")
    assert r.swapped == {"1": "sparse+palettized", "3": "sparse", "5": "palettized"}
    assert r.edge_form == "palettized+sparse" and r.parity is None
    fp32 = sum(p.numel() * 4 for p in _mlp().parameters())
    assert path.is_dir() and r.bytes < 0.5 * fp32, (r.bytes, fp32)



@pytest.mark.slow
@needs_ct
def test_a_weight_one_step_off_fails_and_writes_nothing(tmp_path: Any, monkeypatch: Any) -> None:
    import torchshrink.export.coreml as coreml

    m = ts.prune(_mlp(), ts.MagnitudePruning(sparsity=0.6, targets=("3",)))
    real = coreml._forms

    def off_by_one_step(model: nn.Module) -> Any:
        forms, ours = real(model)
        w = ours["3"]
        w.flat[np.flatnonzero(w)[0]] = np.nextafter(w.flat[np.flatnonzero(w)[0]], np.float32(np.inf))
        return forms, ours

    monkeypatch.setattr(coreml, "_forms", off_by_one_step)
    with pytest.raises(UnsupportedModelError, match="no constant equal to layer '3'"):
        ts.export(m, str(tmp_path / "m.mlpackage"), example=torch.randn(1, 1, 8, 8), format="coreml")
    assert not (tmp_path / "m.mlpackage").exists()

"""Shared helpers for the export tests."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import onnx
import onnxruntime as ort
import pytest
import torch

import torchshrink as ts
from torchshrink import models


def _optimized_ops(path: str, tmp_path: object) -> list[str]:
    """Op types of the graph after ONNX Runtime's graph optimizations (QDQ fusion included)."""
    out = str(tmp_path) + "/optimized.onnx"  # type: ignore[operator]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = out
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(out).graph.node]


@pytest.fixture()
def optimized_ops() -> Callable[[str, object], list[str]]:
    """A fixture, not an import: `from conftest import ...` picks whichever conftest module
    another test folder loaded first."""
    return _optimized_ops


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def trained_lenet5() -> tuple[torch.nn.Module, Any, Any]:
    """LeNet-5 trained for three epochs on the synthetic set, with its train and test loaders:
    an untrained net's logits are near-tied, so int8 rounding differences between kernels flip
    its argmax at random (after one epoch, 3 of 256 flipped between PyTorch and ONNX Runtime on
    an AVX2 CPU without VNNI). One per test module (some tests quantize it in place)."""
    torch.manual_seed(0)
    splits = ts.data.load("synthetic")
    train, _, test = ts.data.loaders(splits, batch_size=64, eval_batch_size=128)
    model = models.create("lenet5")
    ts.fit(model, train, epochs=3, lr=1e-3, progress=False)
    return model.eval(), train, test


@pytest.fixture()
def without_module(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """`without_module("executorch")`: importing that package (or a submodule) through
    importlib raises ImportError for the rest of the test, as where the extra is not installed."""
    real = importlib.import_module

    def hide(prefix: str) -> None:
        def fake(name: str, *a: Any, **k: Any) -> Any:
            if name.startswith(prefix):
                raise ImportError(name)
            return real(name, *a, **k)

        monkeypatch.setattr(importlib, "import_module", fake)

    return hide

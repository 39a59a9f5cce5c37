"""Shared helpers for the export tests."""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnxruntime as ort
import pytest
import torch


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

"""ExecuTorch (.pte, XNNPACK) export: float32 and our static int8, run with executorch.runtime.
Error paths are fast and need no ExecuTorch; the lowerings are slow and skip without the extra."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink import models
from torchshrink.errors import ConfigError, UnsupportedModelError
from torchshrink.export.edge import PT2ELinear, edge_prepare

HAVE_ET = importlib.util.find_spec("executorch") is not None
needs_et = pytest.mark.skipif(not HAVE_ET, reason="executorch not installed (pip install 'torchshrink[executorch]')")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()


def test_missing_extra_names_it(without_module: Any, tmp_path: Any) -> None:
    without_module("executorch")
    with pytest.raises(ConfigError, match=r"pip install 'torchshrink\[executorch\]'"):
        ts.export(_mlp(), f"{tmp_path}/m.pte", example=torch.randn(1, 16), format="pte")


def test_forms_without_our_numbers_are_refused() -> None:
    from torchshrink.export.executorch import _check_forms

    q = ts.quantize(_mlp(), ts.DynamicInt8())
    with pytest.raises(UnsupportedModelError, match=r"layer '1' is int8_dynamic.*format='tflite'"):
        _check_forms(edge_prepare(q, fold_weights=True))


def test_pt2e_form_holds_our_codes_and_grids() -> None:
    calib = [(torch.randn(8, 16),) for _ in range(2)]
    q = ts.quantize(_mlp(), ts.StaticInt8(), calibration=calib, progress=False)
    prep = edge_prepare(q, fold_weights=True)
    layer = prep.module.get_submodule("1")
    assert isinstance(layer, PT2ELinear)
    ours = q.get_submodule("1")
    assert torch.equal(layer.weight_q, ours.weight_int8)
    assert torch.equal(layer.weight_scale, ours.weight_scale.float().expand(12))
    assert layer.input_qdq is not None
    assert layer.input_qdq.scale == pytest.approx(float(ours.in_scale), rel=0)
    assert layer.input_qdq.zero_point == int(ours.in_zero_point) - 128
    x = torch.randn(32, 16)
    # the same grids: PyTorch's int8 kernels and the PT2E simulation agree on the argmax
    assert (prep.module(x).argmax(-1) == q(x).argmax(-1)).float().mean() >= 0.9


@pytest.mark.slow
@needs_et
def test_static_int8(trained_lenet5: Any, tmp_path: Any) -> None:
    """(float32 .pte files are checked in test_capabilities.py.)"""
    model, train, test = trained_lenet5
    x = models.example_input(model, 1)
    q = ts.quantize(copy.deepcopy(model), ts.StaticInt8(calibration_batches=4), calibration=train, progress=False)
    r = ts.export(q, f"{tmp_path}/q.pte", example=x, format="pte", check_data=test)
    assert r.edge_form == "int8_static" and r.parity is not None and r.parity.passed
    assert r.parity.top1_agreement is not None and r.parity.top1_agreement >= 99.0
    assert r.parity.accuracy_reference is not None and r.parity.accuracy_reference > 50
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    assert r.bytes < 0.3 * fp32, (r.bytes, fp32)  # int8 weights in the delegate blob

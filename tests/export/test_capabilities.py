"""The capability table (export/capabilities.py) is what the exporters do: every cell is checked
by exporting a small trained model in that form to that runtime. Runtimes whose package is absent
are skipped with a message; the table itself is checked in the fast suite."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.errors import UnsupportedModelError
from torchshrink.export.capabilities import CAPABILITIES, FORMS, RUNTIMES, markdown

PACKAGES = {"onnxruntime": "onnxruntime", "litert": "litert_torch", "executorch": "executorch",
            "coreml": "coremltools"}
SUFFIX = {"onnx": "onnx", "tflite": "tflite", "pte": "pte", "coreml": "mlpackage"}


def test_table_is_complete_and_renders() -> None:
    assert set(CAPABILITIES) == set(FORMS)
    for form in FORMS:
        assert set(CAPABILITIES[form]) == set(RUNTIMES), form
    text = markdown()
    assert text.count("\n") == len(FORMS) + 1
    assert "| int8 static | native (QDQ, fused to QLinearConv/QGemm) | native (int8 kernels, int8 I/O) |" in text


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Any, Any]:
    torch.manual_seed(0)
    splits = ts.data.load("digits", seed=0)
    train, _, test = ts.data.loaders(splits, batch_size=64, eval_batch_size=120)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    ts.fit(model, train, epochs=4, lr=3e-3, progress=False)
    return model.eval(), train, test


def _in_form(form: str, model: nn.Module, train: Any) -> nn.Module:
    m = copy.deepcopy(model)
    if form == "fp32":
        return m
    if form == "int8 static":
        return ts.quantize(m, ts.StaticInt8(calibration_batches=4), calibration=train, progress=False)
    if form == "int8 dynamic":
        return ts.quantize(m, ts.DynamicInt8())
    if form == "int8 weight-only":
        return ts.quantize(m, ts.WeightOnly(bits=8, group_size=None, clip="minmax"))
    if form == "int4 weight-only":
        return ts.quantize(m, ts.WeightOnly(bits=4, group_size=32, cpu_kernel=False))
    if form == "float16":
        return ts.quantize(m, ts.Cast(dtype="float16"))
    if form == "2:4":
        return ts.prune(m, ts.NMPruning(n=2, m=4))
    if form == "unstructured sparse":
        return ts.prune(m, ts.MagnitudePruning(sparsity=0.75))
    if form == "palettized":
        return ts.cluster(m, ts.KMeansSharing(bits=4))
    if form == "low rank":
        return ts.apply(m, ts.SvdFactorization(rank=8, targets=("1", "3")))
    raise AssertionError(form)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_every_cell(runtime: str, trained: Any, tmp_path: Any) -> None:
    if importlib.util.find_spec(PACKAGES[runtime]) is None:
        pytest.skip(f"{PACKAGES[runtime]} not installed: the {runtime} column is not checked here")
    model, train, test = trained
    fmt = RUNTIMES[runtime]
    x = next(iter(test))[0][:1]
    base = ts.export(model, f"{tmp_path}/fp32.{SUFFIX[fmt]}", example=x, format=fmt,  # type: ignore[arg-type]
                     check_data=None if fmt == "coreml" else test)
    wrong = {}
    for form in FORMS[1:]:
        claim = CAPABILITIES[form][runtime]
        m = _in_form(form, model, train)
        path = f"{tmp_path}/{form.replace(' ', '_').replace(':', '_')}.{SUFFIX[fmt]}"
        try:
            r = ts.export(m, path, example=x, format=fmt, check_data=None if fmt == "coreml" else test)  # type: ignore[arg-type]
        except UnsupportedModelError:
            got = "no"
        else:
            assert fmt == "coreml" or (r.parity is not None and r.parity.passed)
            got = "native" if r.bytes < 0.75 * base.bytes else "dense"
        if got != claim:
            wrong[form] = f"table says {claim}, export gave {got}"
    assert not wrong, wrong

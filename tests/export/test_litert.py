"""LiteRT (.tflite) export: every form the format carries, run in the ai-edge-litert Interpreter.
Error paths are fast and need no LiteRT; the conversions are slow and skip without the extra."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink import models
from torchshrink.errors import ConfigError, UnsupportedModelError
from torchshrink.export.edge import FixedBatchRunner, edge_prepare

HAVE_LITERT = importlib.util.find_spec("litert_torch") is not None and \
    importlib.util.find_spec("ai_edge_litert") is not None
needs_litert = pytest.mark.skipif(not HAVE_LITERT, reason="litert-torch / ai-edge-litert not installed "
                                  "(pip install 'torchshrink[litert]')")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()


def test_missing_extra_names_it(without_module: Any, tmp_path: Any) -> None:
    without_module("litert_torch")
    with pytest.raises(ConfigError, match=r"pip install 'torchshrink\[litert\]'"):
        ts.export(_mlp(), f"{tmp_path}/m.tflite", example=torch.randn(1, 16), format="tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_low_bit_weight_only_is_refused_with_the_alternatives() -> None:
    from torchshrink.export.litert import tflite_form

    q = ts.quantize(_mlp(), ts.WeightOnly(bits=4, group_size=4))
    with pytest.raises(UnsupportedModelError, match=r"int4 in groups of 4.*format='onnx' or 'pt2'"):
        tflite_form(edge_prepare(q, fold_weights=False))


def test_mixed_forms_are_refused_naming_the_layers() -> None:
    from torchshrink.export.litert import tflite_form

    q = ts.quantize(_mlp(), ts.DynamicInt8(targets=("1",)))
    q = ts.quantize(q, ts.Cast(dtype="float16", targets=("3",)))
    with pytest.raises(UnsupportedModelError, match=r"mixes float16, int8_dynamic \(float16: 3; int8_dynamic: 1\)"):
        tflite_form(edge_prepare(q, fold_weights=False))


def test_fixed_batch_runner_slices_and_pads() -> None:
    seen: list[int] = []

    def run(arrays: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        seen.append(arrays[0].shape[0])
        return [arrays[0] * 2]

    out = FixedBatchRunner(run, 4)((torch.arange(10.0).reshape(10, 1),))
    assert seen == [4, 4, 4]
    np.testing.assert_array_equal(out[0][:, 0], np.arange(10.0) * 2)


def _ops(path: str) -> tuple[Any, list[dict[str, Any]]]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path)
    it.allocate_tensors()
    return it, it._get_ops_details()


@pytest.mark.slow
@needs_litert
def test_static_int8_carries_our_grids_in_integer_kernels(trained_lenet5: Any, tmp_path: Any) -> None:
    model, train, test = trained_lenet5
    q = ts.quantize(copy.deepcopy(model), ts.StaticInt8(calibration_batches=4), calibration=train, progress=False)
    path = f"{tmp_path}/q.tflite"
    r = ts.export(q, path, example=models.example_input(model, 1), format="tflite", check_data=test)
    assert r.edge_form == "int8_static" and r.parity is not None and r.parity.passed
    assert r.parity.top1_agreement is not None and r.parity.top1_agreement >= 99.0
    assert r.parity.accuracy_reference is not None and r.parity.accuracy_reference > 50
    it, ops = _ops(path)
    details = {d["index"]: d for d in it.get_tensor_details()}
    compute = [o for o in ops if o["op_name"] in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(compute) == 4
    for o in compute:  # int8 activations in, int8 weights: the integer kernels
        assert details[o["inputs"][0]]["dtype"] == np.int8 and details[o["inputs"][1]]["dtype"] == np.int8
    # the input grid is our calibrated one, moved from uint8 to int8 (zero point - 128)
    layer = q.conv1
    scale, zero = it.get_input_details()[0]["quantization"]
    assert scale == pytest.approx(float(layer.in_scale), rel=1e-7)
    assert zero == int(layer.in_zero_point) - 128


@pytest.mark.slow
@needs_litert
@pytest.mark.parametrize("form", ["fp32", "int8_dynamic", "weight_only", "float16"])
def test_float_program_forms(trained_lenet5: Any, tmp_path: Any, form: str) -> None:
    model, _, test = trained_lenet5
    configs = {"int8_dynamic": ts.DynamicInt8(), "weight_only": ts.WeightOnly(bits=8, group_size=None, clip="minmax"),
               "float16": ts.Cast(dtype="float16")}
    m = ts.quantize(copy.deepcopy(model), configs[form]) if form in configs else model
    path = f"{tmp_path}/m.tflite"
    r = ts.export(m, path, example=models.example_input(model, 1), format="tflite", check_data=test)
    assert r.parity is not None and r.parity.passed
    assert r.edge_form == ("float32" if form == "fp32" else form)
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    ratio = {"fp32": 1.0, "int8_dynamic": 0.3, "weight_only": 0.3, "float16": 0.51}[form]
    assert r.bytes <= ratio * fp32_bytes + 16_384, (r.bytes, fp32_bytes)
    if form == "fp32":
        assert r.parity.relative_error <= 1e-5


def test_cli_knows_the_edge_formats_and_runtimes() -> None:
    from torchshrink.cli.bench import runtimes_of
    from torchshrink.cli.export import output_format

    assert output_format("m.tflite", None) == "tflite"
    assert output_format("m.pte", "pte") == "pte"
    with pytest.raises(ConfigError, match=r"use \.tflite for --format tflite"):
        output_format("m.onnx", "tflite")
    assert runtimes_of("torch,onnxruntime,litert,executorch") == ["torch", "onnxruntime", "litert", "executorch"]
    with pytest.raises(ConfigError, match=r"unknown runtime 'litrt'.*litert"):
        runtimes_of("litrt")

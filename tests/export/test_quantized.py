"""Quantized forms: static int8 as a QDQ graph ORT fuses into integer kernels, dynamic int8 as
integer matmuls, weight-only low-bit as packed initializers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchshrink as ts
from torchshrink import models
from torchshrink.export.packed import unpack_stream
from torchshrink.quant.packing import pack
from torchshrink.quant.weight_only import WeightOnlyLayer


def _calibration(shape: tuple[int, ...]) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(64, *shape, generator=g)
    return DataLoader(TensorDataset(xs, torch.zeros(64, dtype=torch.long)), batch_size=16)


def test_static_int8_is_a_fused_qdq_graph(trained_lenet5: Any, tmp_path: Any, optimized_ops: Any) -> None:
    model, train, test = trained_lenet5
    q = ts.quantize(model, ts.StaticInt8(calibration_batches=4), calibration=train, progress=False)
    path = f"{tmp_path}/q.onnx"
    result = ts.export(q, path, example=models.example_input(model, 4), check_data=test)
    assert result.form == "quantized" and result.parity is not None
    assert result.parity.top1_agreement is not None and result.parity.top1_agreement >= 99.0
    # labelled check data: the same accuracy in ORT as in PyTorch, within one of the 256 samples
    assert result.parity.accuracy_reference is not None and result.parity.accuracy_exported is not None
    assert result.parity.samples == 256
    assert abs(result.parity.accuracy_reference - result.parity.accuracy_exported) <= 100 / 256 + 1e-9
    assert result.parity.accuracy_reference > 50
    assert set(result.swapped.values()) == {"QDQConv2d", "QDQLinear"}
    inits = {i.name: i.data_type for i in onnx.load(path).graph.initializer}
    assert inits["conv1.weight_q"] == onnx.TensorProto.INT8  # int8 in the file, not float
    assert inits["conv1.bias_q"] == onnx.TensorProto.INT32
    ops = optimized_ops(path, tmp_path)
    assert ops.count("QLinearConv") == 2, ops  # ORT fused DQ -> Conv -> Q into integer kernels
    assert "QGemm" in ops or "QLinearMatMul" in ops, ops
    assert "Conv" not in ops


def test_dynamic_int8_runs_integer_matmul(tmp_path: Any, optimized_ops: Any) -> None:
    model = models.create("lenet300")
    q = ts.quantize(model, ts.DynamicInt8(reduce_range=False))
    path = f"{tmp_path}/d.onnx"
    result = ts.export(q, path, example=torch.randn(4, 784))
    assert result.parity is not None and result.parity.top1_agreement == 100.0
    # the same integer recipe on both sides: a few output steps at most, not just agreement
    assert result.parity.relative_error < 2e-2
    ops = optimized_ops(path, tmp_path)
    assert ops.count("DynamicQuantizeMatMul") == 3, ops


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_unpack_stream_matches_the_packing(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (1001,), generator=g)
    assert torch.equal(unpack_stream(pack(codes, bits), bits, 1001), codes.to(torch.int32))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_weight_only_stays_packed_in_the_file(bits: int, tmp_path: Any) -> None:
    model = models.create("lenet300")
    q = ts.quantize(model, ts.WeightOnly(bits=bits, group_size=None))
    path = f"{tmp_path}/w{bits}.onnx"
    result = ts.export(q, path, example=torch.randn(4, 784))
    assert result.form == "float" and result.parity is not None
    assert result.parity.relative_error <= 1e-4  # dequantization is exact: float criteria
    inits = {i.name: i for i in onnx.load(path).graph.initializer}
    packed = inits["fc1.packed"]
    assert packed.data_type == onnx.TensorProto.UINT8
    assert int(np.prod(packed.dims)) == (784 * 300 * bits + 7) // 8
    # the whole file is smaller than the float32 weights alone
    assert result.bytes < 266_610 * 4 * (bits + 2) / 32 + 20_000


def test_int4_kernel_model_exports_with_its_exact_function(tmp_path: Path) -> None:
    # With the default cpu_kernel, PyTorch runs these layers on the bfloat16 int4 kernel; the
    # file computes in float, so parity is checked against the exact float path, and the
    # model's own setting is left as it was.
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    q = ts.quantize(m, ts.WeightOnly(bits=4, group_size=32))
    layers = [layer for layer in q.modules() if isinstance(layer, WeightOnlyLayer)]
    assert layers and all(layer.cpu_kernel is None for layer in layers)
    r = ts.export(q, tmp_path / "q.onnx", example=torch.randn(8, 128))
    assert r.parity is not None and r.parity.passed
    assert all(layer.cpu_kernel is None for layer in layers)

"""ONNX export of float, half and parametrized models, checked in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink import models
from torchshrink.export import ParityError
from torchshrink.export.onnx import OrtRunner
from torchshrink.nn import params

SLOW = {"gpt_tiny", "mobilenet_small", "resnet_small"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in models.names()])
def test_reference_model_exports_and_matches(name: str, tmp_path: object) -> None:
    model = models.create(name)
    x = models.example_input(model, 2)
    path = f"{tmp_path}/{name}.onnx"
    result = ts.export(model, path, example=x, format="onnx")
    assert result.form == "float" and result.parity is not None and result.parity.passed
    assert result.parity.relative_error <= 1e-4
    # the check ran more than the example: several batch sizes through the dynamic batch axis
    assert len(result.parity.batch_sizes) >= 2 and result.parity.samples >= 64
    with torch.no_grad():
        want = model.eval()(x).numpy()
    got = OrtRunner(path)((x,))[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_gpt_tiny_with_sdpa_exports(tmp_path: object) -> None:
    # one layer keeps this in the default run; the full model runs in the slow set above
    model = models.create("gpt_tiny", n_layer=1, n_embd=32, n_head=2, block_size=16)
    x = models.example_input(model, 2)
    result = ts.export(model, f"{tmp_path}/gpt.onnx", example=x)
    assert result.parity is not None and result.parity.relative_error <= 1e-4
    assert result.parity.top1_agreement == 100.0


def test_batch_dimension_is_dynamic(tmp_path: object) -> None:
    model = models.create("lenet5").eval()
    path = f"{tmp_path}/lenet5.onnx"
    ts.export(model, path, example=models.example_input(model, 1))
    graph_input = onnx.load(path).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.randn(37, 1, 28, 28)
    got = OrtRunner(path)((x,))[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (37, 10)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


class _HalfMask(nn.Module):
    """A stand-in pruning mask: zeroes every other weight."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(w).flatten()
        mask[::2] = 0
        return w * mask.reshape(w.shape)


def test_parametrized_model_is_materialized_on_a_copy(tmp_path: object) -> None:
    model = models.create("lenet300")
    params.add(model.fc1, _HalfMask())
    x = models.example_input(model, 4)
    path = f"{tmp_path}/masked.onnx"
    result = ts.export(model, path, example=x)
    assert result.parity is not None and result.parity.passed
    assert params.is_parametrized(model.fc1), "the user's model must keep its parametrizations"
    init = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    w = init["fc1.weight"]
    assert (w.reshape(-1)[::2] == 0).all() and (w.reshape(-1)[1::2] != 0).mean() > 0.99


@pytest.mark.parametrize("name", ["lenet5", pytest.param("resnet_small", marks=pytest.mark.slow)])
def test_fp16_model_stores_half_weights(name: str, tmp_path: object) -> None:
    model = models.create(name).half()
    x = models.example_input(model, 2).half()
    f32 = ts.export(models.create(name), f"{tmp_path}/f32.onnx", example=x.float())
    result = ts.export(model, f"{tmp_path}/f16.onnx", example=x)
    assert result.form == "half"
    assert result.parity is not None and result.parity.passed
    assert result.parity.relative_error <= 10 * torch.finfo(torch.float16).eps
    assert result.bytes < 0.55 * f32.bytes  # weights stored as float16
    mp = onnx.load(result.path)
    assert mp.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert mp.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


class _Twice(torch.autograd.Function):
    """Computes 2x in PyTorch but exports as identity: an export that silently lies."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    @staticmethod
    def symbolic(g: object, x: object) -> object:
        return x


class _Lying(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Twice.apply(self.fc(x))


def test_parity_failure_raises_and_writes_nothing(tmp_path: object) -> None:
    path = f"{tmp_path}/lying.onnx"
    with pytest.raises(ParityError, match="does not match the PyTorch model.*FAILED"):
        ts.export(_Lying(), path, example=torch.randn(2, 8))
    import os

    assert os.listdir(str(tmp_path)) == []


def test_shared_weights_stay_packed_indices(tmp_path: object) -> None:
    model = ts.prune(models.create("lenet300"), ts.MagnitudePruning(sparsity=0.9))
    model = ts.cluster(model, ts.KMeansSharing(bits=4))
    dense = ts.export(models.create("lenet300"), f"{tmp_path}/dense.onnx", example=torch.randn(2, 784))
    result = ts.export(model, f"{tmp_path}/shared.onnx", example=torch.randn(2, 784))
    assert result.parity is not None and result.parity.relative_error <= 1e-4
    assert result.swapped == {"fc1": "CodebookLayer", "fc2": "CodebookLayer", "fc3": "CodebookLayer"}
    inits = {i.name: i for i in onnx.load(result.path).graph.initializer}
    # 16 centroids + the pruned-zero slot = 17 table entries -> 5-bit indices
    assert list(inits["fc1.w.table"].dims) == [17]
    assert int(np.prod(inits["fc1.w.packed"].dims)) == 784 * 300 * 5 // 8
    assert result.bytes < dense.bytes / 5

"""Contract: every registered method's output on every reference model exports to ONNX and
passes the parity check in ONNX Runtime (float forms: 1e-4 of output scale; quantized forms:
top-1 agreement >= 99%).

Parametrized at collection time over `ts.methods()` x `models.names()`. LeNet-300-100 runs by
default; the other models, and methods that train, are marked slow. A method that does not
apply to a model (it raises while compressing) is skipped with its reason: applicability is
the family's contract, exporting what it produced is ours.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import torchshrink as ts
from torchshrink import models
from torchshrink.errors import UnsupportedModelError

FAST_MODELS = {"lenet300"}
TRAINING_METHODS = {"distillation", "qat"}
# (model, method) -> words the UnsupportedModelError must contain. Keep it short.
# HeadPruning works from transformer structure; the CNNs and MLPs have none to prune.
REFUSALS: dict[tuple[str, str], str] = {
    (name, "head_pruning"): "no attention or MLP block recognisable"
    for name in ("lenet300", "lenet5", "resnet_small", "mobilenet_small")
}
KNOWN: dict[tuple[str, str], str] = {}  # (model, method) -> why it is expected to fail


def _config(method: Any) -> ts.Config:
    cls = method.config
    return cls.example() if hasattr(cls, "example") else cls()


def _cases() -> list[Any]:
    out = []
    for m in ts.methods():
        for name in models.names():
            marks = []
            if name not in FAST_MODELS or m.name in TRAINING_METHODS:
                marks.append(pytest.mark.slow)
            if (name, m.name) in KNOWN:
                marks.append(pytest.mark.xfail(reason=KNOWN[(name, m.name)], strict=False))
            out.append(pytest.param(m.name, name, marks=marks, id=f"{m.name}-{name}"))
    return out


def _data(x: torch.Tensor) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    if x.is_floating_point():
        xs = torch.randn(64, *x.shape[1:], generator=g)
        ys = torch.randint(0, 10, (64,), generator=g)
    else:
        xs = torch.randint(0, 256, (64, *x.shape[1:]), generator=g)
        ys = torch.randint(0, 256, (64, *x.shape[1:]), generator=g)
    return DataLoader(TensorDataset(xs, ys), batch_size=16)


@pytest.mark.parametrize(("method_name", "model_name"), _cases())
def test_method_output_exports_and_passes_parity(method_name: str, model_name: str, tmp_path: Any) -> None:
    method = ts.get_method(method_name)
    model = models.create(model_name)
    x = models.example_input(model, 8)
    loader = _data(x)
    refusal = REFUSALS.get((model_name, method_name))
    if refusal is not None:
        with pytest.raises(UnsupportedModelError, match=refusal):
            ts.apply(model, _config(method), example=x, calibration=loader, train=loader, val=loader,
                     evaluate=lambda m: 0.0, progress=False)
        return
    compressed = ts.apply(model, _config(method), example=x, calibration=loader, train=loader, val=loader,
                          evaluate=lambda m: 0.0, progress=False)
    with torch.no_grad():
        compressed.eval()(x)
    result = ts.export(compressed, f"{tmp_path}/{method_name}.onnx", example=x, format="onnx")
    assert result.parity is not None and result.parity.passed, result.parity
    if result.form == "quantized":
        assert result.parity.top1_agreement is not None and result.parity.top1_agreement >= 99.0
    elif result.form == "float":
        assert result.parity.relative_error <= 1e-4

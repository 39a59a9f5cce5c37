"""Inference forms (`ts.for_inference`) export as compactly as the training forms they came from:
a codebook CSR layer as packed indices plus its table, an int4-kernel layer as the packed 4-bit
stream, and the file computes what the inference form computes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchshrink as ts
from torchshrink.infer.forms import CompactSparseLinear, Int4Linear


def _pick(order: list[str]) -> Callable[[dict[str, Callable[[], Any]]], dict[str, float]]:
    """A timer under which the first listed candidate present is the fastest."""
    def timer(fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
        return {k: (order.index(k) if k in order else len(order)) + 1.0 for k in fns}
    return timer


def test_a_codebook_csr_form_exports_as_small_as_its_training_form(tmp_path: Path) -> None:
    m = ts.cluster(ts.prune(ts.models.create("lenet300"), ts.MagnitudePruning(sparsity=0.92)),
                   ts.KMeansSharing(bits=4)).eval()
    x = torch.randn(2, 1, 28, 28)
    trained = ts.export(m, tmp_path / "training.onnx", example=x)
    f = ts.for_inference(m, example=x, timer=_pick(["compact CSR + codebook"]))
    assert all(isinstance(getattr(f, n), CompactSparseLinear) and getattr(f, n).codes is not None
               for n in ("fc1", "fc2", "fc3"))
    served = ts.export(f, tmp_path / "served.onnx", example=x)
    assert served.parity is not None and served.parity.passed
    assert set(served.swapped.values()) == {"CodebookLayer"}
    assert served.bytes <= trained.bytes * 1.01
    fp32 = 4 * sum(p.numel() for p in ts.models.create("lenet300").parameters())
    assert served.bytes < fp32 / 5


def test_an_fp32_csr_form_exports_as_a_dense_linear(tmp_path: Path) -> None:
    m = ts.prune(ts.models.create("lenet300"), ts.MagnitudePruning(sparsity=0.9)).eval()
    x = torch.randn(2, 1, 28, 28)
    f = ts.for_inference(m, example=x, timer=_pick(["compact CSR"]))
    assert isinstance(f.fc1, CompactSparseLinear) and f.fc1.codes is None
    result = ts.export(f, tmp_path / "m.onnx", example=x)
    assert result.parity is not None and result.parity.passed
    assert result.swapped["fc1"] == "Linear"


def test_an_int4_kernel_form_exports_as_the_packed_stream(tmp_path: Path) -> None:
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32))
    q = ts.quantize(lin, ts.WeightOnly(bits=4, group_size=64))
    x = torch.randn(2, 256)
    f = ts.for_inference(q, example=x, timer=_pick(["int4 kernel"]))
    assert isinstance(f[0], Int4Linear) and isinstance(f[2], Int4Linear)
    packed = ts.export(q.train(), tmp_path / "packed.onnx", example=x)  # the training form, for size
    result = ts.export(f, tmp_path / "int4.onnx", example=x)
    assert result.parity is not None and result.parity.passed, result.parity.summary()
    assert set(result.swapped.values()) == {"PackedWeightLinear"}
    assert result.bytes <= packed.bytes * 1.05
    # the exported codes are the kernel's: the file computes the int4 form's weight exactly
    # (the ONNX graph rounds no activations, so it is compared on the float weight it decodes)
    from torchshrink.export.qdq import rule_for
    from torchshrink.export.rules import load

    load()
    for layer in (f[0], f[2]):
        exported = rule_for(layer).convert(layer)  # type: ignore[union-attr]
        torch.testing.assert_close(exported.weight(), layer.ts_effective_weights()["weight"], rtol=0, atol=1e-6)

"""DynamicInt8(activations="token"): one int8 scale per row of the input."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.errors import ConfigError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10)).eval()


def _outlier_batch() -> torch.Tensor:
    x = torch.randn(32, 64)
    x[3] *= 30  # one outlier row coarsens a per-call grid for every other row
    return x


def test_per_token_is_closer_to_float_and_independent_of_the_batch() -> None:
    m, x = _mlp(), _outlier_batch()
    ref = m(x)
    per_call = ts.quantize(copy.deepcopy(m), ts.DynamicInt8())
    per_token = ts.quantize(copy.deepcopy(m), ts.DynamicInt8(activations="token"))
    rows = [i for i in range(32) if i != 3]

    @torch.no_grad()
    def err(q: nn.Module) -> float:
        y = q(x)
        return float((y[rows] - ref[rows]).norm() / ref[rows].norm())

    assert err(per_token) < 0.5 * err(per_call)
    assert torch.equal(per_token(x[:5]), per_token(x)[:5])
    assert all(q.per_token for q in per_token.modules() if isinstance(q, ts.quant.DynamicInt8Linear))


def test_per_token_matches_its_definition() -> None:
    m, x = _mlp(), _outlier_batch()
    q = ts.quantize(copy.deepcopy(m), ts.DynamicInt8(activations="token"))[0]
    s = x.abs().amax(-1, keepdim=True) / 127
    codes = torch.round(x / s).clamp(-127, 127)
    want = (codes @ q.weight_int8.float().t()) * s * q.weight_scale + q.bias
    torch.testing.assert_close(q(x), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(q(torch.zeros(2, 64)), q.bias.expand(2, -1))  # all-zero rows: scale 1, codes 0


def test_per_token_saves_loads_and_exports(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    m, x = _mlp(), _outlier_batch()
    q = ts.quantize(copy.deepcopy(m), ts.DynamicInt8(activations="token"))
    ts.save(q, tmp_path / "q.tsz")
    back = ts.load(tmp_path / "q.tsz", like=_mlp())
    assert torch.equal(back(x), q(x))
    # The export check compares ONNX Runtime (all graph optimizations on) with PyTorch.
    ts.export(q, tmp_path / "q.onnx", example=x)
    import onnxruntime as ort

    s = ort.InferenceSession(str(tmp_path / "q.onnx"))
    y = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    assert abs(torch.from_numpy(y) - q(x)).max() < 1e-4


def test_bad_activations_value_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="tensor.*token"):
        ts.DynamicInt8(activations="row")

"""AWQ through WeightOnly(algorithm="awq"): activation-aware column scales beat rounding to
nearest where a few input channels carry large activations, save and load, export to ONNX."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.quant.awq import awq_column_scale
from torchshrink.quant.weight_only import WeightOnlyLayer


def _outlier_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Activations where 4 channels are 30x larger than the rest, as in LLMs (the AWQ premise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, :4] *= 30.0
    return x


def _err(layer: nn.Linear, x: torch.Tensor, alg: str, bits: int = 3, group_size: int | None = None) -> float:
    model = nn.Sequential(copy.deepcopy(layer))
    data = [x[i : i + 256] for i in range(0, len(x), 256)]
    q = ts.quantize(model, ts.WeightOnly(bits=bits, group_size=group_size, algorithm=alg, clip="minmax"),
                    calibration=data, progress=False)
    with torch.no_grad():
        return float((q(x) - layer(x)).pow(2).mean())


@pytest.mark.parametrize("group_size", [None, 32])
def test_awq_beats_round_to_nearest_when_a_few_channels_dominate(group_size: int | None) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(128, 64)
    x = _outlier_inputs(1024, 128)
    rtn, awq = _err(layer, x, "rtn", group_size=group_size), _err(layer, x, "awq", group_size=group_size)
    assert awq < 0.8 * rtn, (rtn, awq)


def test_alpha_zero_is_a_candidate_so_awq_never_loses_on_its_data() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(64, 32)
    x = torch.randn(1024, 64)  # no outliers: little to gain, nothing to lose
    assert _err(layer, x, "awq") <= _err(layer, x, "rtn") * (1 + 1e-6)


def test_column_scale_is_centred_and_positive() -> None:
    x = _outlier_inputs(512, 64)
    s = awq_column_scale(torch.randn(16, 64), x.T @ x, bits=4, symmetric=True, granularity="channel",
                         group_size=None)
    assert s.shape == (64,) and bool((s > 0).all())
    assert float(s.max() * s.min()) == pytest.approx(1.0, rel=1e-4)


def test_awq_layer_saves_loads_and_exports(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = ts.models.create("lenet300")
    data = [torch.rand(64, 1, 28, 28) for _ in range(4)]
    q = ts.quantize(model, ts.WeightOnly(bits=4, group_size=None, algorithm="awq"), calibration=data,
                    progress=False)
    assert isinstance(q.fc1, WeightOnlyLayer) and q.fc1.col_scale is not None
    ts.save(q, tmp_path / "awq.tsz")
    back = ts.load(tmp_path / "awq.tsz")
    x = data[0][:8]
    with torch.no_grad():
        assert torch.equal(q.eval()(x), back.eval()(x))
    ts.export(back, tmp_path / "awq.onnx", example=x)  # checks parity in ONNX Runtime itself
    assert (tmp_path / "awq.onnx").stat().st_size > 0

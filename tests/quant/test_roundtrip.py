"""Every quantized module and parametrization is registered with the artifact codec and
round-trips through ts.save / ts.load with bit-identical outputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.codec.structure import module_codec, parametrization_codec
from torchshrink.nn import params
from torchshrink.quant import (
    ActQuantized,
    CastLayer,
    DynamicInt8Linear,
    FakeQuant,
    StaticInt8Layer,
    WeightOnlyLayer,
)


def _quantized(kind: str, model: nn.Module, loaders: tuple) -> nn.Module:
    calib = [b for _, b in zip(range(2), loaders[0])]
    if kind == "dynamic":
        return ts.quantize(model, ts.DynamicInt8())
    if kind == "static":
        return ts.quantize(model, ts.StaticInt8(), calibration=calib, progress=False)
    if kind == "static16":
        return ts.quantize(model, ts.StaticInt8(activation_bits=16), calibration=calib, progress=False)
    if kind == "int3":
        return ts.quantize(model, ts.WeightOnly(bits=3, group_size=None, symmetric=False))
    if kind == "int4g":
        return ts.quantize(model, ts.WeightOnly(bits=4, group_size=8, ignore=("conv",)))
    if kind == "cast":
        return ts.quantize(model, ts.Cast(dtype="bfloat16"))
    if kind == "qat_lsq":
        return ts.quantize(model, ts.QAT(bits=4, epochs=1, activation_bits=8), train=calib, progress=False)
    if kind == "mixed":
        return ts.quantize(model, ts.MixedPrecision(budget_bits=5.0, calibration_batches=1, hutchinson_samples=1),
                           calibration=calib)
    raise AssertionError(kind)


KINDS = ["dynamic", "static", "static16", "int3", "int4g", "cast", "qat_lsq", "mixed"]
CUSTOM = (DynamicInt8Linear, StaticInt8Layer, WeightOnlyLayer, CastLayer, ActQuantized)


def _check_specs(q: nn.Module) -> None:
    found = 0
    for m in q.modules():
        if isinstance(m, CUSTOM):
            codec = module_codec(m)
            assert codec is not None, type(m).__name__
            rebuilt = codec.from_spec(json.loads(json.dumps(codec.to_spec(m))))
            if isinstance(m, ActQuantized) and params.is_parametrized(m.layer):
                continue  # the container re-attaches the inner chain; covered by the save/load test
            rebuilt.load_state_dict(m.state_dict())
            op = m.layer.op if isinstance(m, ActQuantized) and hasattr(m.layer, "op") else getattr(m, "op", None)
            if op is not None:
                x = torch.randn(2, op["in"]) if op["kind"] == "linear" else torch.randn(2, op["in"], 14, 14)
                assert torch.equal(rebuilt(x), m(x))
            found += 1
        for p in params.chain(m):
            codec = parametrization_codec(p)
            assert codec is not None, type(p).__name__
            rebuilt_p = codec.from_spec(json.loads(json.dumps(codec.to_spec(p))))
            rebuilt_p.load_state_dict(p.state_dict())
            w = params.original(m)
            assert torch.equal(rebuilt_p(w), p(w))
            found += 1
    assert found > 0


@pytest.mark.parametrize("kind", KINDS)
def test_specs_and_save_load_round_trip(kind: str, trained: nn.Module, synthetic_loaders: tuple, tmp_path: Path,
                              skeleton: nn.Module) -> None:
    q = _quantized(kind, trained, synthetic_loaders).eval()
    _check_specs(q)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = q(x)
    path = tmp_path / "q.tsz"
    ts.save(q, path)
    loaded = ts.load(path, like=skeleton)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    kinds = sorted({type(m).__name__ for m in loaded.modules() if isinstance(m, CUSTOM)})
    assert kinds == sorted({type(m).__name__ for m in q.modules() if isinstance(m, CUSTOM)})
    assert [type(p).__name__ for m in loaded.modules() for p in params.chain(m)] == \
        [type(p).__name__ for m in q.modules() for p in params.chain(m)]
    assert all(isinstance(p, FakeQuant) for m in loaded.modules() for p in params.chain(m))
    assert copy.deepcopy(loaded) is not None

"""Fake quantization: SQNR thresholds, exact zeros, STE and LSQ gradients, bad bit widths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.nn import params
from torchshrink.quant.fake import FakeQuant, fake_quantize, grid_params, group_rows, sqnr_db


def _linear(seed: int = 0, shape: tuple[int, int] = (256, 512)) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(shape[1], shape[0])


def test_int8_per_channel_sqnr_at_least_35db() -> None:
    w = _linear().weight.detach()
    fq = FakeQuant(tuple(w.shape), bits=8, granularity="channel")
    assert sqnr_db(w, fq(w)) >= 35.0


def test_int4_groupwise_sqnr_at_least_18db() -> None:
    w = _linear().weight.detach()
    fq = FakeQuant(tuple(w.shape), bits=4, granularity="group", group_size=128, method="mse")
    assert sqnr_db(w, fq(w)) >= 18.0


def test_finer_granularity_and_more_bits_are_better() -> None:
    w = _linear().weight.detach() * torch.linspace(0.1, 3, 256)[:, None]  # rows of very different scale
    s = {g: sqnr_db(w, FakeQuant(tuple(w.shape), bits=4, granularity=g, group_size=64 if g == "group" else None)(w))
         for g in ("tensor", "channel", "group")}
    assert s["tensor"] < s["channel"] < s["group"]
    by_bits = [sqnr_db(w, FakeQuant(tuple(w.shape), bits=b)(w)) for b in (2, 3, 4, 8)]
    assert by_bits == sorted(by_bits)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_zero_maps_to_exact_zero(symmetric: bool, bits: int) -> None:
    w = torch.randn(16, 32) + 0.7  # an off-centre range: affine grids get a nonzero zero point
    w[w.abs() < 0.5] = 0.0
    out = FakeQuant(tuple(w.shape), bits=bits, symmetric=symmetric)(w)
    assert torch.equal(out[w == 0], torch.zeros(int((w == 0).sum())))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_values_on_grid_and_within_half_step(bits: int) -> None:
    w = torch.randn(8, 64)
    rows = group_rows(w, "channel", None)
    scale, zero = grid_params(rows, bits, False)
    q = fake_quantize(rows, scale, zero, bits, False)
    assert q.unique(dim=None).numel() <= 8 * 2**bits
    assert ((q - rows).abs() <= scale / 2 + 1e-6).all()
    assert ((q / scale - (q / scale).round()).abs() < 1e-3).all()


def test_straight_through_estimator_passes_gradient() -> None:
    w = torch.randn(4, 8, requires_grad=True)
    FakeQuant((4, 8), bits=4)(w).sum().backward()
    assert w.grad is not None and torch.equal(w.grad, torch.ones(4, 8))


def test_lsq_learns_step_size() -> None:
    lin = _linear(shape=(16, 32))
    params.add(lin, FakeQuant((16, 32), bits=3, lsq=True, init=lin.weight.detach()))
    fq = params.find(lin, FakeQuant)
    assert fq is not None and fq.scale is not None
    before = fq.scale.detach().clone()
    opt = torch.optim.SGD(lin.parameters(), lr=0.05)
    x = torch.randn(64, 32)
    target = torch.randn(64, 16)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(lin(x), target).backward()
        assert fq.scale.grad is not None and fq.scale.grad.abs().sum() > 0
        opt.step()
    assert not torch.equal(before, fq.scale.detach())


@pytest.mark.parametrize("bits", [0, 1, 17, 32])
def test_bits_outside_range_are_rejected(bits: int) -> None:
    with pytest.raises(ts.ConfigError, match=r"bits must be an integer in \[2, 8\]"):
        ts.WeightOnly(bits=bits)
    with pytest.raises(ts.ConfigError, match=r"bits must be an integer in \[2, 8\]"):
        ts.QAT(bits=bits)
    with pytest.raises(ts.ConfigError, match=r"candidates must be an integer in \[2, 8\]"):
        ts.MixedPrecision(candidates=(bits, 4))


def test_activation_bits_outside_8_or_16_are_rejected() -> None:
    with pytest.raises(ts.ConfigError, match="activation_bits"):
        ts.StaticInt8(activation_bits=4)  # type: ignore[arg-type]
    with pytest.raises(ts.ConfigError, match="activation_bits"):
        ts.StaticInt8(activation_bits=17)  # type: ignore[arg-type]


@pytest.mark.parametrize("config", [ts.DynamicInt8(), ts.StaticInt8(observer="entropy"), ts.WeightOnly(bits=3, clip="minmax"),
                                    ts.Cast(dtype="float16"), ts.QAT(bits=2, activation_bits=8),
                                    ts.MixedPrecision(budget_bytes=1000, candidates=(2, 4))])
def test_configs_round_trip_through_plain_data(config: ts.Config) -> None:
    import json

    assert ts.Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_quantize_codes_in_slices_matches_one_expression(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchshrink.quant.fake as fake

    torch.manual_seed(0)
    rows = torch.randn(37, 64) * 3
    for symmetric in (True, False):
        scale, zero = fake.grid_params(rows, 4, symmetric)
        qmin, qmax = fake.qrange(4, symmetric)
        expect = (torch.clamp((rows / scale).round() + zero, qmin, qmax) - qmin).to(torch.int16)
        monkeypatch.setattr(fake, "_CODES_SLICE_ELEMENTS", 64 * 5)  # 5 rows per slice, a ragged last one
        assert torch.equal(fake.quantize_codes(rows, scale, zero, 4, symmetric), expect)
        one = torch.tensor(0.25)
        assert torch.equal(fake.quantize_codes(rows, one, torch.tensor(0.0), 8, True),
                           (torch.clamp((rows / one).round(), -128, 127) + 128).to(torch.int16))

"""GPTQ through WeightOnly(algorithm="gptq"): lower output error than rounding to nearest on the
same grid, the same storage, pruned zeros kept, and clear errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.errors import ConfigError
from torchshrink.quant.fake import dequantize_codes, group_rows
from torchshrink.quant.gptq import gptq_codes
from torchshrink.quant.weight_only import WeightOnlyLayer


def _correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Inputs with a decaying, correlated spectrum, as real activations have: where all
    directions matter equally, GPTQ has nothing to trade."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d)[None, :]
    return torch.randn(n, d, generator=g) @ mix.T + 0.3 * torch.randn(1, d, generator=g)


@pytest.mark.parametrize(("bits", "group_size"), [(3, None), (4, 32), (2, 16)])
def test_gptq_output_error_is_below_round_to_nearest(bits: int, group_size: int | None) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(128, 64)
    x = _correlated_inputs(2048, 128)
    data = [x[i : i + 256] for i in range(0, 2048, 256)]
    ref = layer(x).detach()

    def err(alg: str) -> float:
        model = nn.Sequential(copy.deepcopy(layer))
        q = ts.quantize(model, ts.WeightOnly(bits=bits, group_size=group_size, algorithm=alg, clip="minmax"),
                        calibration=data, progress=False)
        assert isinstance(q[0], WeightOnlyLayer)
        return float((q(x) - ref).pow(2).mean())

    rtn, gptq = err("rtn"), err("gptq")
    assert gptq < 0.7 * rtn, (rtn, gptq)


def test_codes_decode_to_the_grid_the_sweep_chose() -> None:
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    x = _correlated_inputs(512, 64)
    codes, scale, zero = gptq_codes(w, x.T @ x, bits=4, symmetric=False, granularity="group", group_size=16)
    assert codes.shape == (16 * 4, 16) and scale.shape == (64, 1) and zero.shape == (64, 1)
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    deq = dequantize_codes(codes, scale, zero, 4, False)
    # every group's values lie on its own grid, and the result stays close to the weight
    assert torch.allclose(group_rows(deq.reshape(16, 64), "group", 16), deq)
    assert float((deq.reshape(16, 64) - w).pow(2).mean()) < 0.05 * float(w.pow(2).mean())
    with pytest.raises(ValueError, match="tensor grids use RTN"):
        gptq_codes(w, x.T @ x, bits=4, symmetric=True, granularity="tensor", group_size=None)


def test_gptq_on_a_trained_model_saves_and_loads_bit_exact(trained: nn.Module, skeleton: nn.Module,
                                                           synthetic_loaders: tuple, tmp_path: Path) -> None:
    train, _, _ = synthetic_loaders
    model = ts.quantize(copy.deepcopy(trained), ts.WeightOnly(bits=4, group_size=None, algorithm="gptq",
                                                              calibration_batches=4),
                        calibration=train, progress=False)
    path = tmp_path / "gptq.tsz"
    ts.save(model, path)
    back = ts.load(path, like=skeleton)
    x = next(iter(train))[0]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), back.eval()(x))


def test_pruned_zeros_stay_zero_under_gptq() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    model = ts.prune(model, ts.MagnitudePruning(sparsity=0.5))
    zeros = [(m.weight == 0) for m in (model[0], model[2])]
    data = [_correlated_inputs(128, 64, seed=s) for s in range(4)]
    q = ts.quantize(model, ts.WeightOnly(bits=3, group_size=None, algorithm="gptq"), calibration=data,
                    progress=False)
    for z, layer in zip(zeros, (q[0], q[2])):
        w = layer.dequantized_weight()
        assert torch.all(w[z] == 0)


def test_gptq_bad_input_words() -> None:
    with pytest.raises(ConfigError, match=r"algorithm='gptq'\) needs calibration data .* or use algorithm='rtn'"):
        ts.quantize(nn.Sequential(nn.Linear(8, 4)), ts.WeightOnly(group_size=None, algorithm="gptq"))
    with pytest.raises(ConfigError, match=r"WeightOnly.algorithm must be .*got .obq."):
        ts.WeightOnly(algorithm="obq")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"damping must be in \(0, 1\), got 0.0"):
        ts.WeightOnly(algorithm="gptq", damping=0.0)
    with pytest.raises(ConfigError, match=r"calibration_batches must be >= 1, got 0"):
        ts.WeightOnly(algorithm="gptq", calibration_batches=0)


def test_gptq_on_gpt_tiny_saves_and_loads(tmp_path: Path) -> None:
    # regression: the attention's artifact spec read q_proj.in_features, which a
    # WeightOnlyLayer does not have, so a weight-only gpt_tiny could not be saved
    torch.manual_seed(0)
    model = ts.models.create("gpt_tiny")
    calib = [ts.models.example_input(model, 4) for _ in range(2)]
    q = ts.quantize(model, ts.WeightOnly(bits=4, group_size=32, algorithm="gptq"), calibration=calib, progress=False)
    ts.save(q, tmp_path / "g.tsz")
    back = ts.load(tmp_path / "g.tsz")
    with torch.no_grad():
        assert torch.equal(q.eval()(calib[0]), back.eval()(calib[0]))


def test_output_aware_clip_beats_weight_mse_clip_on_the_output() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(128, 64)
    x = _correlated_inputs(2048, 128)
    data = [x[i : i + 256] for i in range(0, 2048, 256)]
    ref = layer(x).detach()

    def err(clip: str, alg: str = "rtn") -> float:
        q = ts.quantize(nn.Sequential(copy.deepcopy(layer)),
                        ts.WeightOnly(bits=3, group_size=None, algorithm=alg, clip=clip),  # type: ignore[arg-type]
                        calibration=data, progress=False)
        return float((q(x) - ref).pow(2).mean())

    assert err("output") < err("mse")
    assert err("output", "awq") <= err("mse", "awq") * 1.05
    with pytest.raises(ConfigError, match=r"WeightOnly\(clip='output'\) needs calibration data"):
        ts.quantize(nn.Sequential(nn.Linear(8, 4)), ts.WeightOnly(group_size=None, clip="output"))


def test_h_blocks_are_the_diagonal_blocks() -> None:
    from torchshrink.quant.fake import h_blocks_for

    h = torch.arange(36.0).reshape(6, 6)
    blocks = h_blocks_for(h, "group", 2)
    assert blocks.shape == (3, 2, 2)
    assert torch.equal(blocks[1], h[2:4, 2:4])


@pytest.mark.parametrize("group_size", [None, 16])
def test_act_order_codes_stay_on_their_groups_and_do_not_lose_on_skewed_inputs(group_size: int | None) -> None:
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    x = _correlated_inputs(1024, 64) * torch.logspace(1, -1, 64)[torch.randperm(64)]  # energy in shuffled columns
    h = x.T @ x
    out = {}
    for desc in (False, True):
        codes, scale, zero = gptq_codes(w, h, bits=3, symmetric=True, granularity="group" if group_size else "channel",
                                        group_size=group_size, desc_act=desc)
        deq = dequantize_codes(codes, scale, zero, 3, True).reshape(32, 64)
        out[desc] = float(((x @ (deq - w).T) ** 2).mean())
        assert int(codes.min()) >= 0 and int(codes.max()) < 8
    assert out[True] <= 1.05 * out[False], out


def test_desc_act_through_weight_only() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(128, 64)
    x = _correlated_inputs(2048, 128)
    data = [x[i : i + 256] for i in range(0, 2048, 256)]
    q = ts.quantize(nn.Sequential(copy.deepcopy(layer)),
                    ts.WeightOnly(bits=3, group_size=32, algorithm="gptq", desc_act=True), calibration=data,
                    progress=False)
    r = ts.quantize(nn.Sequential(copy.deepcopy(layer)), ts.WeightOnly(bits=3, group_size=32, algorithm="rtn"),
                    calibration=data, progress=False)
    with torch.no_grad():
        ref = layer(x)
        assert float((q(x) - ref).pow(2).mean()) < 0.7 * float((r(x) - ref).pow(2).mean())

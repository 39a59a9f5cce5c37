"""The energy model against values computed by hand from LeNet-300-100's layer sizes and the
45 nm table (Horowitz, ISSCC 2014), so a change to the model shows up as a wrong number."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchshrink as ts
from torchshrink.report import HOROWITZ_45NM, estimate_energy, file_streams

# LeNet-300-100: 784 -> 300 -> 100 -> 10
LAYERS = [(784, 300), (300, 100), (100, 10)]
DRAM, SRAM, REG = 640.0, 5.0, 1.0          # pJ per 32-bit access
FP32_MULT, FP32_ADD = 3.7, 0.9              # pJ


def test_fp32_lenet300_by_hand(lenet_files: tuple[Path, Path]) -> None:
    base, _ = lenet_files
    model = ts.load(base)
    x = ts.models.example_input(model, 1)
    params = sum(i * o + o for i, o in LAYERS)                   # 266,610 weights and biases
    macs = sum(i * o for i, o in LAYERS)                         # 266,200
    act = sum(i + o for i, o in LAYERS)                          # 1,594 values read + written
    assert (params, macs, act) == (266_610, 266_200, 1_594)
    weights_pj = params * 32 / 32 * DRAM                         # 170,630,400 pJ per batch
    compute_pj = macs * (FP32_MULT + FP32_ADD)                   # 1,224,520 pJ
    act_pj = act * SRAM                                          # 7,970 pJ
    for batch in (1, 64):
        e = estimate_energy(model, x, batch=batch, stored_bytes=file_streams(base).layer_bytes())
        assert e.weight_pj == pytest.approx(weights_pj / batch)
        assert e.compute_pj == pytest.approx(compute_pj)
        assert e.activation_pj == pytest.approx(act_pj)
        assert not e.weights_on_chip
    e1 = estimate_energy(model, x, batch=1, stored_bytes=file_streams(base).layer_bytes())
    assert e1.total_pj == pytest.approx(171_862_890.0)           # 171.86 uJ at batch 1
    # The dense fp32 equivalent of the same file is the same number.
    assert estimate_energy(model, x, dense_fp32=True).total_pj == pytest.approx(171_862_890.0)


def test_pruned_shared_lenet300_by_hand(lenet_files: tuple[Path, Path]) -> None:
    _, small = lenet_files
    model = ts.load(small)
    x = ts.models.example_input(model, 1)
    info = ts.read_info(small)
    stored = sum(r.nbytes for r in info.tensors)                 # the payload; the header is not fetched
    nonzeros = [int(torch.count_nonzero(getattr(model, f"fc{i}").weight)) for i in (1, 2, 3)]
    # Linear: one MAC per weight per sample; zeros skipped; one codebook read per kept weight
    compute_pj = sum(nonzeros) * (FP32_MULT + FP32_ADD + REG)
    act_pj = 1_594 * SRAM
    for batch, sram, fetch in ((1, 0, DRAM), (64, 0, DRAM), (1, 10**6, SRAM)):
        e = estimate_energy(model, x, batch=batch, sram_bytes=sram, stored_bytes=file_streams(small).layer_bytes())
        assert e.stored_bytes == stored
        assert e.weights_on_chip == (sram > 0)
        assert e.total_pj == pytest.approx(stored * 8 / 32 * fetch / batch + compute_pj + act_pj)
    no_skip = estimate_energy(model, x, skip_zeros=False, stored_bytes=file_streams(small).layer_bytes())
    assert no_skip.compute_pj == pytest.approx(266_200 * (FP32_MULT + FP32_ADD + REG))


def test_int8_layers_price_int8_multiplies(lenet_files: tuple[Path, Path]) -> None:
    base, _ = lenet_files
    model = ts.load(base)
    x = ts.models.example_input(model, 1)
    e = estimate_energy(model, x, precision={"fc1": "int8", "fc2": "int8", "fc3": "int8"})
    assert e.compute_pj == pytest.approx(266_200 * (0.2 + 0.1))  # int8 multiply, int32 accumulate
    assert e.activation_pj == pytest.approx(1_594 * 8 / 32 * SRAM)


def test_the_table_is_replaceable_and_checked(lenet_files: tuple[Path, Path]) -> None:
    base, _ = lenet_files
    model = ts.load(base)
    x = ts.models.example_input(model, 1)
    mine = dict(HOROWITZ_45NM, dram_32bit=100.0)
    e = estimate_energy(model, x, table=mine)
    assert e.weight_pj == pytest.approx(266_610 * 4 * 8 / 32 * 100.0)
    assert "user-supplied" in e.assumptions[0]
    with pytest.raises(ts.ConfigError, match=r"energy table lacks \['fp32_add'"):
        estimate_energy(model, x, table={k: v for k, v in HOROWITZ_45NM.items() if k != "fp32_add"})
    with pytest.raises(ts.ConfigError, match="precision names layers \\['fc9'\\]"):
        estimate_energy(model, x, precision={"fc9": "int8"})


def test_every_counted_mac_is_priced_once() -> None:
    """Attention blocks own their score matmuls beside their projections' MACs; the sum over
    the estimate's layers is the model's MAC count, neither double-counted nor dropped."""
    from torchshrink.measure import count_macs

    torch.manual_seed(0)
    model = ts.models.create("gpt_tiny")
    x = ts.models.example_input(model, 1)
    total, _ = count_macs(model, x)
    e = estimate_energy(model, x)
    assert sum(r.macs for r in e.layers) == total
    assert e.compute_pj == pytest.approx(total * (FP32_MULT + FP32_ADD))


def test_layers_the_mac_counter_cannot_see_are_named() -> None:
    model = ts.quantize(ts.models.create("lenet300"), ts.DynamicInt8())
    e = estimate_energy(model, ts.models.example_input(model, 1))
    assert "layers ['fc1', 'fc2', 'fc3'] hold weights but run kernels the MAC counter does not know" in e.assumptions[-1]

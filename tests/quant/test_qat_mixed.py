"""QAT, BatchNorm folding, mixed precision and the diagnostics table."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.nn import params
from torchshrink.quant import FakeQuant, WeightOnlyLayer
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.mixed import PLAN_ATTR
from torchshrink.quant.qat import ActQuantized
from torchshrink.train import evaluate


def test_fold_batchnorm_is_exact_in_eval(trained: nn.Module) -> None:
    x = torch.randn(4, 1, 28, 28)
    ref = trained(x)
    assert fold_batchnorm(trained) == ["bn"]
    assert isinstance(trained.bn, nn.Identity) and trained.conv.bias is not None
    assert torch.allclose(trained(x), ref, atol=1e-4)


def test_qat_recovers_2bit_accuracy(trained: nn.Module, synthetic_loaders: tuple) -> None:
    train, val, test = synthetic_loaders
    base = evaluate(trained, test)["accuracy"]
    ptq = ts.quantize(copy.deepcopy(trained), ts.WeightOnly(bits=2, group_size=None, clip="minmax"))
    ptq_acc = evaluate(ptq, test)["accuracy"]
    q = ts.quantize(trained, ts.QAT(bits=2, epochs=1, lr=1e-3), train=train, val=val, progress=False)
    assert all(params.has(m, FakeQuant) for m in (q.conv, q.fc1, q.fc2))
    qat_acc = evaluate(q, test)["accuracy"]
    assert qat_acc >= ptq_acc and qat_acc >= base - 5.0


def test_qat_convert_packs_exactly_the_trained_grid(trained: nn.Module, synthetic_loaders: tuple) -> None:
    train = [b for _, b in zip(range(4), synthetic_loaders[0])]
    q = ts.quantize(trained, ts.QAT(bits=4, epochs=1, lr=1e-3), train=train, progress=False)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        fake = q(x)
        expected_w = q.fc1.weight.detach().clone()
    from torchshrink.quant.weight_only import quantize_layer_weight_only

    packed = quantize_layer_weight_only("fc1", q.fc1, bits=4)
    assert torch.equal(packed.ts_effective_weights()["weight"], expected_w)
    q2 = ts.quantize(q, ts.WeightOnly(bits=4, group_size=None))  # reuses the trained FakeQuant grids
    assert isinstance(q2.fc1, WeightOnlyLayer)
    assert torch.equal(q2(x), fake)


def test_qat_with_activation_quantization(trained: nn.Module, synthetic_loaders: tuple) -> None:
    train = [b for _, b in zip(range(4), synthetic_loaders[0])]
    q = ts.quantize(trained, ts.QAT(bits=8, activation_bits=8, epochs=1, lr=1e-4), train=train, progress=False)
    assert isinstance(q.fc1, ActQuantized) and float(q.fc1.scale.detach()) != 1.0
    assert evaluate(q, synthetic_loaders[2])["accuracy"] > 80


def test_qat_without_training_data_is_an_error(trained: nn.Module) -> None:
    with pytest.raises(ts.ConfigError, match="QAT fine-tunes the model and needs training data"):
        ts.quantize(trained, ts.QAT())


@pytest.mark.parametrize("sensitivity", ["loss", "hessian"])
def test_mixed_precision_meets_budget(sensitivity: str, trained: nn.Module, synthetic_loaders: tuple) -> None:
    ref = copy.deepcopy(trained)
    q = ts.quantize(trained, ts.MixedPrecision(budget_bits=4.5, sensitivity=sensitivity, hutchinson_samples=2,
                                               calibration_batches=2), calibration=synthetic_loaders[0])
    plan = getattr(q, PLAN_ATTR)
    sizes = {"conv": ref.conv.weight.numel(), "fc1": ref.fc1.weight.numel(), "fc2": ref.fc2.weight.numel()}
    avg = sum(sizes[n] * plan["bits"][n] for n in sizes) / sum(sizes.values())
    assert avg <= 4.5 and plan["average_bits"] == pytest.approx(avg)
    assert all(isinstance(getattr(q, n), WeightOnlyLayer) and getattr(q, n).bits == plan["bits"][n] for n in sizes)
    assert all(t == t for t in plan["hessian_trace"].values())  # finite numbers
    # fc1 holds 96% of the weights: the budget forces it low while the small layers keep more bits.
    assert plan["bits"]["fc1"] <= 4 and plan["bits"]["fc2"] >= plan["bits"]["fc1"]
    assert evaluate(q, synthetic_loaders[2])["accuracy"] > 80


def test_mixed_precision_bytes_budget_and_errors(trained: nn.Module, synthetic_loaders: tuple) -> None:
    n = sum(m.weight.numel() for m in (trained.conv, trained.fc1, trained.fc2))
    budget = n * 3 // 8 + 2000
    q = ts.quantize(copy.deepcopy(trained), ts.MixedPrecision(budget_bytes=budget, hutchinson_samples=1,
                                                              calibration_batches=1),
                    calibration=synthetic_loaders[0])
    used = sum(m.packed.numel() + 4 * m.scale.numel() for m in q.modules() if isinstance(m, WeightOnlyLayer))
    assert used <= budget
    with pytest.raises(ts.ConfigError, match="budget_bits=1.5 is below what the narrowest candidate"):
        ts.quantize(copy.deepcopy(trained), ts.MixedPrecision(budget_bits=1.5, calibration_batches=1,
                                                              hutchinson_samples=1),
                    calibration=synthetic_loaders[0])
    with pytest.raises(ts.ConfigError, match="needs data"):
        ts.quantize(trained, ts.MixedPrecision())


def test_diagnostics_table_points_at_the_broken_layer(trained: nn.Module, synthetic_loaders: tuple) -> None:
    ref = copy.deepcopy(trained)
    q = ts.quantize(trained, ts.WeightOnly(bits=8, group_size=None, targets=("conv", "fc2")))
    q = ts.quantize(q, ts.WeightOnly(bits=2, group_size=None, clip="minmax", targets=("fc1",)))
    d = ts.quant_diagnostics(ref, q, synthetic_loaders[2], limit=1)
    rows = {r.name: r for r in d.layers}
    assert set(rows) == {"conv", "fc1", "fc2"}
    assert rows["conv"].weight_sqnr_db > 35 and rows["fc1"].weight_sqnr_db < 15
    assert d.worst(1)[0].name in ("fc1", "fc2")  # the error surfaces at fc1 and propagates
    assert rows["conv"].output_sqnr_db > rows["fc1"].output_sqnr_db
    text = str(d)
    assert "weight SQNR dB" in text and "fc1" in text and "(model output)" in text


def test_batchnorm_folding_warns_when_fx_cannot_trace() -> None:

    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = x * 2
            return self.bn(self.conv(x))

    with pytest.warns(UserWarning, match=r"BatchNorm folding skipped: torch.fx cannot trace Dynamic"):
        assert fold_batchnorm(Dynamic()) == []

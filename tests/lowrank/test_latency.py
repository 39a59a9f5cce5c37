"""Rank choice under several budgets and under a measured latency budget.

The solver is tested on planted cost tables (deterministic); the timing path is tested for
shape and bookkeeping, with `model_time_ratio` replaced where a test needs a known answer,
since wall-clock ratios on a shared 2-core CI box are not assertable to a few percent.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.errors import ConfigError
from torchshrink.lowrank import Candidate, chosen_ranks, layer_macs, select_ranks, spectrum
from torchshrink.lowrank import factorization as fz
from torchshrink.lowrank.latency import measure_tables, model_time_ratio, rank_grid
from torchshrink.lowrank.svd import factorize_layer
from torchshrink.nn import recalibrate_batchnorm


def _brute(cands: list[Candidate], budget: np.ndarray) -> float:
    best = np.inf
    for combo in itertools.product(*[range(c.max_rank + 1) for c in cands]):
        cost = sum((c.cost(r) for c, r in zip(cands, combo)), np.zeros(len(budget)))
        if np.all(cost <= budget):
            best = min(best, sum(c.loss_of(r) for c, r in zip(cands, combo)))
    return best


def test_two_budgets_both_hold_and_land_near_the_optimum() -> None:
    rng = np.random.default_rng(1)
    cands = []
    for i in range(3):
        loss = np.concatenate([[0.0], np.sort(rng.random(6))[::-1] * (1 + i)])
        params = np.concatenate([[60.0], np.arange(1, 7) * (9.0 + i)])
        macs = np.concatenate([[100.0], np.arange(1, 7) * (20.0 - 3 * i)])
        cands.append(Candidate(f"l{i}", np.stack([params, macs]), loss))
    budget = np.array([110.0, 150.0])
    sel = select_ranks(cands, fixed=[0.0, 0.0], budget=budget)
    assert np.all(sel.total_cost <= budget)
    step = max(float(np.max(np.abs(np.diff(c.loss[1:])))) for c in cands)
    assert sel.total_loss <= _brute(cands, budget) + 2 * step


def test_step_shaped_costs_put_every_rank_at_the_top_of_its_step() -> None:
    # Latency steps every 8 ranks: ranks 1..8 cost 1, 9..16 cost 2, ...; loss falls with rank.
    ranks = np.arange(33)
    cost = np.where(ranks == 0, 5.0, np.ceil(ranks / 8.0))
    loss = np.where(ranks == 0, 0.0, 1.0 / (1.0 + ranks))
    cands = [Candidate(f"l{i}", cost[None, :], loss) for i in range(3)]
    sel = select_ranks(cands, fixed=0.0, budget=6.5)
    assert sel.total_cost[0] <= 6.5
    assert all(r is not None and r % 8 == 0 for r in sel.ranks.values()), sel.ranks


def test_lagrangian_refuses_two_budgets() -> None:
    c = Candidate("l", np.array([[10.0, 1.0], [10.0, 1.0]]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="one budget"):
        select_ranks([c], fixed=[0.0, 0.0], budget=[5.0, 5.0], solver="lagrangian")


def test_linear_candidate_matches_the_old_menu() -> None:
    c = Candidate.linear("l", 100.0, 7.0, np.zeros(5))
    assert c.cost(0).tolist() == [100.0]
    assert c.cost(3).tolist() == [21.0]


def test_params_and_macs_budgets_together() -> None:
    model = ts.models.create("resnet_small")
    x = ts.models.example_input(model, 1)
    n0, m0 = fz.count_params(model), sum(layer_macs(model, x).values())
    out = ts.factorize(model, ts.SvdFactorization(budget_params=0.8, budget_macs=0.4), example=x)
    assert fz.count_params(out) <= 0.8 * n0
    assert sum(layer_macs(out, x).values()) <= 0.4 * m0


def test_rank_grid_steps_by_eight_and_ends_at_the_limit() -> None:
    assert rank_grid(0) == []
    assert rank_grid(5) == [5]
    assert rank_grid(20) == [8, 16, 20]


def test_measured_tables_have_one_entry_per_rank_and_never_fall_with_rank() -> None:
    model = ts.models.create("resnet_small").eval()
    x = ts.models.example_input(model, 4)
    layers = [spectrum(n, m) for n, m in model.named_modules() if n in ("layers.0.conv1", "layers.2.conv2")]
    limits = {"layers.0.conv1": 20, "layers.2.conv2": 12}
    t = measure_tables(model, layers, limits, x, rounds=2)
    assert t.model_ms > 0 and t.fixed_ms >= 0
    for name, lim in limits.items():
        table = t.rank_ms[name]
        assert table.shape == (lim + 1,)
        assert np.all(table > 0)
        assert np.all(np.diff(table[1:]) >= 0)  # the fastest grid rank at or above
        assert np.all(table[1:9] == table[8])  # ranks below the first grid point cost rank 8's


def test_model_time_ratio_leaves_the_new_modules_in_place() -> None:
    model = ts.models.create("lenet300").eval()
    sp = spectrum("fc1", model.fc1)
    new = factorize_layer(sp, 8)
    ratio = model_time_ratio(model, {"fc1": (model.fc1, new)}, torch.rand(8, 1, 28, 28), rounds=2)
    assert ratio > 0
    assert model.fc1 is new


def test_latency_budget_runs_end_to_end_and_keeps_shapes() -> None:
    model = ts.models.create("resnet_small")
    x = ts.models.example_input(model, 8)
    # a loose target, so the result does not hinge on this machine's timing noise
    out = ts.factorize(model, ts.SvdFactorization(budget_latency=0.95, latency_rounds=2), example=x, progress=False)
    assert out(x).shape == (8, 10)
    assert model.training  # the timing ran in eval mode and put the mode back


def _fake_ratio(results: list[float]):  # type: ignore[no-untyped-def]
    calls: list[dict[str, int | None]] = []

    def fake(model: nn.Module, swaps: dict, example: object, *, rounds: int = 10) -> float:  # type: ignore[type-arg]
        calls.append({n: new.rank for n, (_, new) in swaps.items()})
        return results[min(len(calls) - 1, len(results) - 1)]
    return fake, calls


def _planted_tables(model, spectra, limits, example, *, rounds=10, progress=None):  # type: ignore[no-untyped-def]
    """Every layer 1 ms dense and r / (limit + 1) ms at rank r; 1 ms for the rest."""
    from torchshrink.lowrank.latency import LatencyTables

    tables = {sp.name: np.concatenate([[1.0], np.arange(1, limits[sp.name] + 1) / (limits[sp.name] + 1)])
              for sp in spectra}
    return LatencyTables(1.0 + len(spectra), 1.0, tables)


def test_a_missed_latency_target_tightens_the_budget_and_solves_again(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, calls = _fake_ratio([0.9, 0.6])  # the first choice measures slower than promised
    monkeypatch.setattr(fz, "model_time_ratio", fake)
    monkeypatch.setattr(fz, "measure_tables", _planted_tables)
    model = ts.models.create("resnet_small")
    out = ts.factorize(model, ts.SvdFactorization(budget_latency=0.6, latency_rounds=1), progress=False)
    assert len(calls) == 2
    first, second = calls
    assert sum(second.values()) < sum(first.values())  # tighter: smaller ranks
    assert chosen_ranks(out) == second


def test_a_latency_target_out_of_reach_names_the_fastest_measured_time(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, _ = _fake_ratio([0.8])  # never faster than 0.8, whatever is chosen
    monkeypatch.setattr(fz, "model_time_ratio", fake)
    monkeypatch.setattr(fz, "measure_tables", _planted_tables)
    with pytest.raises(ConfigError, match=r"budget_latency=0.2 cannot be met on this machine: the smallest "
                                          r"reachable time, .* is 0.800 of the model's .* Raise budget_latency "
                                          r"to at least 0.80"):
        ts.factorize(ts.models.create("resnet_small"),
                     ts.SvdFactorization(budget_latency=0.2, latency_rounds=1, latency_retries=5), progress=False)


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))


def test_recalibrated_batchnorm_holds_the_data_statistics() -> None:
    model = _bn_model()
    data = [(torch.randn(16, 1, 8, 8) * 3 + 2, torch.zeros(16)) for _ in range(4)]
    assert recalibrate_batchnorm(model, data) == 1
    with torch.no_grad():
        feats = torch.cat([model[0](x) for x, _ in data])
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
    # the cumulative average of per-batch unbiased variances, close to the pooled variance
    torch.testing.assert_close(bn.running_var, feats.var(dim=(0, 2, 3)), atol=0.05, rtol=0.05)
    assert model.training and bn.momentum == 0.1


def test_recalibration_failure_leaves_the_old_statistics() -> None:
    model = _bn_model()
    before = model[1].running_mean.clone()

    def broken():  # type: ignore[no-untyped-def]
        yield torch.randn(4, 1, 8, 8)
        raise RuntimeError("loader died")

    with pytest.raises(RuntimeError, match="loader died"):
        recalibrate_batchnorm(model, broken())
    torch.testing.assert_close(model[1].running_mean, before)
    with pytest.raises(ConfigError, match="got no batches"):
        recalibrate_batchnorm(model, [])


def test_factorize_with_calibration_recalibrates_batchnorm() -> None:
    torch.manual_seed(0)
    base = ts.models.create("resnet_small")
    data = [(torch.rand(16, 1, 28, 28), torch.zeros(16, dtype=torch.long)) for _ in range(3)]
    cfg = ts.SvdFactorization(budget_macs=0.3)
    plain = ts.factorize(copy.deepcopy(base), cfg)
    recal = ts.factorize(copy.deepcopy(base), cfg, calibration=data)
    assert torch.equal(plain.layers[0].bn1.running_mean, base.layers[0].bn1.running_mean)
    assert not torch.equal(recal.layers[0].bn1.running_mean, base.layers[0].bn1.running_mean)
    off = ts.factorize(copy.deepcopy(base), ts.SvdFactorization(budget_macs=0.3, recalibrate_bn=False),
                       calibration=data)
    assert torch.equal(off.layers[0].bn1.running_mean, base.layers[0].bn1.running_mean)

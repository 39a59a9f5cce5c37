"""Rank selection under a whole-model parameter or MAC budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import torchshrink as ts
from torchshrink.lowrank import (
    Candidate,
    chosen_ranks,
    count_params,
    layer_macs,
    select_ranks,
    spectral_loss,
)


def _spectra_model() -> torch.nn.Module:
    """lenet300 with planted spectra: fc1 decays fast (compressible), fc2 is flat (not)."""
    torch.manual_seed(0)
    model = ts.models.create("lenet300")
    with torch.no_grad():
        for layer, decay in ((model.fc1, 0.85), (model.fc2, 0.995), (model.fc3, 0.9)):
            u, _, vh = torch.linalg.svd(torch.randn_like(layer.weight), full_matrices=False)
            s = decay ** torch.arange(u.shape[1], dtype=torch.float32)
            layer.weight.copy_((u * s) @ vh)
    return model


def _cands(specs: list[tuple[str, float, float, np.ndarray]]) -> list[Candidate]:
    out = []
    for name, dense, per, s in specs:
        big = min(int((dense - 1) // per), len(s))
        out.append(Candidate.linear(name, dense, per, spectral_loss(s, big)))
    return out


@pytest.mark.parametrize("solver", ["greedy", "lagrangian"])
def test_solvers_match_brute_force_on_a_small_problem(solver: str) -> None:
    rng = np.random.default_rng(0)
    specs = [(f"l{i}", 60.0, 10.0 + 3 * i, np.sort(rng.gamma(1.0 + i, 1.0, 6))[::-1]) for i in range(3)]
    cands = _cands(specs)
    budget = 70.0
    sel = select_ranks(cands, fixed=0.0, budget=budget, solver=solver)  # type: ignore[arg-type]
    assert sel.total_cost[0] <= budget
    best = np.inf
    for combo in itertools.product(*[range(c.max_rank + 1) for c in cands]):
        cost = sum(float(c.cost(r)[0]) for c, r in zip(cands, combo))
        if cost <= budget:
            best = min(best, sum(c.loss_of(r) for c, r in zip(cands, combo)))
    # greedy/lagrangian plus the fill step land within one rank-step of the optimum
    step = max(float(np.max(np.abs(np.diff(c.loss[1:])))) for c in cands)
    assert sel.total_loss <= best + step + 1e-12


@pytest.mark.parametrize("solver", ["greedy", "lagrangian"])
def test_param_budget_is_met_and_spent_where_the_spectrum_decays(solver: str) -> None:
    model = _spectra_model()
    total = count_params(model)
    out = ts.factorize(model, ts.SvdFactorization(budget_params=0.25, solver=solver))
    n = count_params(out)
    assert n <= 0.25 * total
    assert n >= 0.24 * total  # the fill step spends what is left
    ranks = chosen_ranks(out)
    assert ranks["fc1"] < 60  # fast decay: a small rank holds nearly all the energy


def test_budgeted_selection_beats_uniform_ratio_in_reconstruction() -> None:
    model = _spectra_model()
    uniform = ts.factorize(_spectra_model(), ts.SvdFactorization(ratio=0.3))
    n = count_params(uniform)
    budgeted = ts.factorize(model, ts.SvdFactorization(budget_params=n))
    assert count_params(budgeted) <= n
    ref = _spectra_model()

    def rel_err(m: torch.nn.Module) -> float:
        errs = []
        for name in ("fc1", "fc2", "fc3"):
            w = getattr(ref, name).weight.detach()
            layer = getattr(m, name)
            approx = layer.product() if hasattr(layer, "product") else layer.weight
            errs.append(float(((w - approx.detach()) ** 2).sum() / (w**2).sum()))
        return sum(errs)

    assert rel_err(budgeted) < 0.5 * rel_err(uniform)


@pytest.mark.parametrize("mode", ["channel", "spatial"])
def test_mac_budget_is_met(mode: str) -> None:
    model = ts.models.create("resnet_small")
    x = ts.models.example_input(model, 1)
    before = sum(layer_macs(model, x).values())
    out = ts.factorize(model, ts.SvdFactorization(budget_macs=0.5, mode=mode), example=x)  # type: ignore[arg-type]
    after = sum(layer_macs(out, x).values())
    assert after <= 0.5 * before
    assert after >= 0.45 * before
    assert out(x).shape == (1, 10)


def test_mac_counts_of_known_models() -> None:
    # LeNet-5's documented 2,293,000 multiply-adds (see models/lenet.py)
    m = ts.models.create("lenet5")
    assert sum(layer_macs(m, ts.models.example_input(m)).values()) == 2_293_000


def test_score_by_measured_validation_loss() -> None:
    torch.manual_seed(0)
    model = _spectra_model().eval()
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    calls = []

    def evaluate(m: torch.nn.Module) -> float:
        calls.append(1)
        with torch.no_grad():
            return -float(((m(x) - ref) ** 2).mean())

    total = count_params(model)
    out = ts.factorize(model, ts.SvdFactorization(budget_params=0.3, score="loss", loss_points=4),
                       evaluate=evaluate, progress=False)
    assert count_params(out) <= 0.3 * total
    assert len(calls) >= 1 + 3 * 2  # the base model plus a few ranks per layer
    with torch.no_grad():
        assert float(((out(x) - ref) ** 2).mean()) < float((ref**2).mean())


def test_per_layer_pins_a_layer_under_a_budget() -> None:
    model = _spectra_model()
    out = ts.factorize(model, ts.SvdFactorization(budget_params=0.3, per_layer={"fc2": 5}))
    assert chosen_ranks(out)["fc2"] == 5
    assert count_params(out) <= 0.3 * 266_610

"""The allocator against brute force on planted random problems."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from torchshrink.errors import ConfigError
from torchshrink.plan.allocate import allocate


def _problem(rng: np.random.Generator, integral: bool, budgets: int) -> tuple[list, dict, dict]:
    n = int(rng.integers(1, 6))
    opts = [int(rng.integers(1, 6)) for _ in range(n)]
    errors = [rng.random(k) for k in opts]
    costs = {}
    for name in ("bytes", "macs", "ms")[:budgets]:
        costs[name] = [rng.integers(0, 30, k).astype(float) if integral else rng.random(k) * 30 for k in opts]
    limits = {}
    for name, cs in costs.items():
        lo, hi = sum(c.min() for c in cs), sum(c.max() for c in cs)
        limits[name] = float(np.floor(rng.uniform(lo, hi))) if integral else float(rng.uniform(lo, hi))
    return errors, costs, limits


def _brute(errors: list, costs: dict, limits: dict) -> float:
    best = np.inf
    for ch in itertools.product(*[range(len(e)) for e in errors]):
        if all(sum(costs[n][i][j] for i, j in enumerate(ch)) <= limits[n] + 1e-9 for n in limits):
            best = min(best, sum(errors[i][j] for i, j in enumerate(ch)))
    return best


def _check_feasible(a, costs: dict, limits: dict) -> None:
    for n, lim in limits.items():
        assert a.costs[n] <= lim + 1e-9
        assert a.costs[n] == pytest.approx(sum(costs[n][i][j] for i, j in enumerate(a.choice)))


@pytest.mark.parametrize("budgets", [1, 2])
def test_dp_is_exact_on_integer_problems(budgets: int) -> None:
    rng = np.random.default_rng(budgets)
    for _ in range(300):
        errors, costs, limits = _problem(rng, integral=True, budgets=budgets)
        opt = _brute(errors, costs, limits)
        a = allocate(errors, costs, limits)
        assert a.method == ("dp" if budgets == 1 else "dp2")
        if not np.isfinite(opt):
            assert not a.feasible
            continue
        assert a.feasible
        _check_feasible(a, costs, limits)
        assert a.error == pytest.approx(opt)


def test_dp_on_real_costs_is_feasible_and_within_one_unit_per_layer_of_optimal() -> None:
    rng = np.random.default_rng(7)
    resolution = 50
    for _ in range(300):
        errors, costs, limits = _problem(rng, integral=False, budgets=1)
        a = allocate(errors, costs, limits, resolution=resolution)
        opt = _brute(errors, costs, limits)
        if not a.feasible:
            # rounding up can only lose solutions that sit within a unit per layer of the budget
            tight = {"bytes": limits["bytes"] - len(errors) * limits["bytes"] / resolution}
            assert not np.isfinite(_brute(errors, costs, tight))
            continue
        _check_feasible(a, costs, limits)
        assert a.error >= opt - 1e-9
        # any choice that fits a budget smaller by one unit per layer survives the rounding
        tight = {"bytes": limits["bytes"] - len(errors) * limits["bytes"] / resolution}
        assert a.error <= _brute(errors, costs, tight) + 1e-9


def test_lagrangian_is_feasible_and_usually_optimal() -> None:
    rng = np.random.default_rng(3)
    hits = total = 0
    for _ in range(200):
        errors, costs, limits = _problem(rng, integral=True, budgets=3)
        opt = _brute(errors, costs, limits)
        a = allocate(errors, costs, limits)
        assert a.method == "lagrangian"
        if a.feasible:
            _check_feasible(a, costs, limits)
            assert a.error >= opt - 1e-9
        if np.isfinite(opt):
            total += 1
            hits += a.feasible and a.error == pytest.approx(opt)
    # a relaxation: it may miss a feasible choice or the optimum, but rarely on such problems
    assert hits / total > 0.8


def test_infeasible_budget_returns_the_cheapest_choice() -> None:
    a = allocate([[0.0, 1.0], [0.0, 2.0]], {"bytes": [[10, 5], [8, 3]]}, {"bytes": 4})
    assert not a.feasible and a.choice == [1, 1] and a.costs["bytes"] == 8


def test_allocate_bad_input_words() -> None:
    with pytest.raises(ConfigError, match="one cost per option of every layer"):
        allocate([[0.0, 1.0]], {"bytes": [[1.0]]}, {"bytes": 3})
    with pytest.raises(ConfigError, match="budget 'ms' has no costs"):
        allocate([[0.0]], {"bytes": [[1.0]]}, {"ms": 3})
    with pytest.raises(ConfigError, match="needs at least one budget"):
        allocate([[0.0]], {"bytes": [[1.0]]}, {})

"""The local search after the DP: neighbours within budget, moves kept only on a better metric."""

from __future__ import annotations

import itertools

import pytest
import torch

import torchshrink as ts
from torchshrink.errors import ConfigError
from torchshrink.plan.allocate import allocate
from torchshrink.plan.options import LayerOption
from torchshrink.plan.refine import exchange_moves, local_search


def _planted(seed: int, layers: int = 4, options: int = 4) -> tuple[list[list[float]], dict[str, list[list[float]]]]:
    g = torch.Generator().manual_seed(seed)
    costs = [sorted(torch.randint(1, 30, (options,), generator=g).tolist(), reverse=True) for _ in range(layers)]
    errors = [sorted(torch.rand(options, generator=g).tolist()) for _ in range(layers)]
    return errors, {"bytes": [[float(c) for c in row] for row in costs]}


def _total(choice: list[int], c: list[list[float]]) -> float:
    return sum(c[i][j] for i, j in enumerate(choice))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exchange_moves_are_every_one_or_two_layer_change_within_budget(seed: int) -> None:
    errors, costs = _planted(seed)
    budget = {"bytes": 0.6 * sum(max(r) for r in costs["bytes"])}
    start = allocate(errors, costs, budget).choice
    moves = exchange_moves(start, errors, costs, budget, limit=10_000)
    got = {tuple(c) for _, c in moves}
    # brute force: every choice differing from start in one layer, or in two layers where the
    # first changed layer gets less error, within the budget
    want = set()
    for c in itertools.product(*[range(len(e)) for e in errors]):
        diff = [i for i in range(len(c)) if c[i] != start[i]]
        if not diff or len(diff) > 2 or _total(list(c), costs["bytes"]) > budget["bytes"]:
            continue
        if len(diff) == 2 and not any(errors[i][c[i]] < errors[i][start[i]] for i in diff):
            continue
        want.add(c)
    assert got == want
    deltas = [d for d, _ in moves]
    assert deltas == sorted(deltas)
    base = sum(errors[i][j] for i, j in enumerate(start))
    for d, c in moves:
        assert d == pytest.approx(sum(errors[i][j] for i, j in enumerate(c)) - base)
    assert len(exchange_moves(start, errors, costs, budget, limit=3)) == min(3, len(moves))


def test_local_search_follows_the_real_metric_within_budget_and_evaluations() -> None:
    errors, costs = _planted(5, layers=5, options=5)
    budget = {"bytes": 0.5 * sum(max(r) for r in costs["bytes"])}
    start = allocate(errors, costs, budget).choice
    # the real metric disagrees with the summed error: it rewards layer 0 being as accurate
    # as possible, whatever the others pay
    calls: list[list[int]] = []

    def score(ch: list[int]) -> float:
        calls.append(ch)
        return -errors[0][ch[0]] * 10 - sum(errors[i][j] for i, j in enumerate(ch))

    r = local_search(start, errors, costs, budget, score, evaluations=12, per_round=4)
    assert len(calls) <= 13  # the start, then at most 12 moves
    assert r.metric >= r.start_metric and r.metric == pytest.approx(score(r.choice))
    assert _total(r.choice, costs["bytes"]) <= budget["bytes"]
    if r.choice != start:
        assert any(h["accepted"] and h["choice"] == r.choice for h in r.history)
        assert errors[0][r.choice[0]] <= errors[0][start[0]]
    # a metric that never improves keeps the start after one round
    flat = local_search(start, errors, costs, budget, lambda ch: 0.0, evaluations=12, per_round=3)
    assert flat.choice == start and len(flat.history) <= 3


def test_joint_plan_with_refine_meets_the_budget_and_records_the_search() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    calib = [torch.rand(32, 64) for _ in range(2)]
    x = torch.rand(64, 64)
    with torch.no_grad():
        ref = model(x)

    def fidelity(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return -float((m.eval()(x) - ref).pow(2).mean())

    menu = [LayerOption(sparsity=0.9), LayerOption(bits=4, group_size=None), LayerOption(kmeans_bits=3),
            LayerOption(sparsity=0.9, kmeans_bits=4), LayerOption(bits=8, group_size=None)]
    res = ts.plan(model, evaluate=fidelity, max_bytes=0.1, calibration=calib, search="joint",
                  options=lambda n, m: menu, refine=5, pareto_points=0, progress=False)
    assert res.best is not None and res.best.file_bytes <= 0.1 * res.baseline.file_bytes
    assert len(res.refinements) >= 1
    first = res.refinements[0]
    assert first["evaluations"] <= 6 and first["metric"] >= first["start_metric"]
    assert res.seconds["refine"] > 0
    with pytest.raises(ConfigError, match=r"refine must be a whole number of evaluations >= 0, got -1"):
        ts.plan(model, evaluate=fidelity, max_bytes=0.1, calibration=calib, search="joint", refine=-1)

"""Choosing every layer's rank jointly under whole-model budgets (parameters, MACs, latency).

Each factorizable layer offers a menu: stay dense (option 0, loss 0) or take rank r in 1..R
(loss[r]), where R is the largest rank that may still save. Every option has a cost in each
budgeted quantity: `costs[k, r]` for budget k (column 0 is the dense layer). Parameters and
MACs grow linearly in r (`Candidate.linear`); measured latency is a table with steps, because a
CPU kernel pads channels to its vector width (rank 13 runs as fast as rank 16, not faster).

The loss is either spectral (the relative discarded energy sum_{i>r} s_i^2 / sum s_i^2, which is
the relative Frobenius error by Eckart-Young) or measured (drop of a validation metric when that
layer alone is truncated, interpolated between a few measured ranks).

Two solvers pick one option per layer so that every total fits its budget:
- "greedy": repeatedly take the move with the least added loss per saved unit of the budgets
  still exceeded (each weighted by 1/budget, so two budgets share one scale), where a move may
  jump several ranks at once (to the best point of the layer's lower convex hull, so a small
  dense -> rank-R saving does not hide the cheap savings behind it). A move never pushes a
  budget that is met back over it.
- "lagrangian" (one budget): for a multiplier lam each layer independently minimizes
  loss + lam * cost; lam is bisected to the smallest value whose choice fits the budget.
Both end with a fill step that spends what is left of the budgets on the rank increases with
the best loss reduction per cost, so neither leaves budget unused; with step-shaped latency
costs this moves every rank to the top of its step, which is free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = ["Candidate", "Selection", "Solver", "select_ranks", "min_total", "spectral_loss", "interpolate_loss",
           "measured_loss_points"]

Solver = Literal["greedy", "lagrangian"]
DENSE = 0  # choice index meaning "keep the dense layer"


@dataclasses.dataclass
class Candidate:
    """One layer's menu: `loss[r]` for r = 0..R (loss[0] unused; dense has loss 0) and
    `costs[k, r]` in each budgeted quantity k (costs[k, 0]: the dense layer)."""

    name: str
    costs: np.ndarray
    loss: np.ndarray

    def __post_init__(self) -> None:
        self.costs = np.atleast_2d(np.asarray(self.costs, dtype=np.float64))
        self.loss = np.asarray(self.loss, dtype=np.float64)
        if self.costs.shape[1] != len(self.loss):
            raise ValueError(f"{self.name}: costs has {self.costs.shape[1]} options, loss {len(self.loss)}")

    @classmethod
    def linear(cls, name: str, dense_cost: float, cost_per_rank: float, loss: np.ndarray) -> Candidate:
        """A menu whose single cost is `dense_cost` dense and `r * cost_per_rank` at rank r."""
        ranks = np.arange(len(loss), dtype=np.float64)
        costs = ranks * cost_per_rank
        costs[DENSE] = dense_cost
        return cls(name, costs[None, :], loss)

    @property
    def max_rank(self) -> int:
        return len(self.loss) - 1

    def cost(self, choice: int) -> np.ndarray:
        return self.costs[:, choice]

    def loss_of(self, choice: int) -> float:
        return 0.0 if choice == DENSE else float(self.loss[choice])


@dataclasses.dataclass
class Selection:
    ranks: dict[str, int | None]  # None: left dense
    total_cost: np.ndarray  # per budget
    total_loss: float


def spectral_loss(s: np.ndarray, max_rank: int) -> np.ndarray:
    """loss[r] = sum_{i>r} s_i^2 / sum s_i^2 for r = 0..max_rank."""
    e = np.asarray(s, dtype=np.float64) ** 2
    total = float(e.sum()) or 1.0
    tail = np.concatenate([np.cumsum(e[::-1])[::-1], [0.0]])  # tail[r] = sum_{i>=r} e_i (0-based)
    return tail[: max_rank + 1] / total


def interpolate_loss(points: dict[int, float], max_rank: int, tiebreak: np.ndarray | None = None,
                     eps: float = 1e-3) -> np.ndarray:
    """Measured losses at a few ranks -> loss[r] for r = 0..max_rank: linear in between, made
    non-increasing in r (more rank never hurts in expectation, and the solvers rely on it),
    never below 0, plus `eps * tiebreak` so ties of a coarse metric break by spectral energy."""
    rs = np.array(sorted(points), dtype=np.float64)
    vals = np.array([points[int(r)] for r in rs], dtype=np.float64)
    grid = np.arange(max_rank + 1, dtype=np.float64)
    out = np.interp(grid, rs, vals)
    out = np.maximum(out, 0.0)
    out = np.maximum.accumulate(out[::-1])[::-1]
    if tiebreak is not None:
        out = out + eps * tiebreak
    return out


def min_total(cands: Sequence[Candidate], fixed: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """The smallest reachable total of each budgeted quantity (each minimized on its own)."""
    out = np.atleast_1d(np.asarray(fixed, dtype=np.float64)).copy()
    for c in cands:
        out += c.costs.min(axis=1)
    return out


def _as_vector(x: float | Sequence[float] | np.ndarray, k: int, what: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if v.shape != (k,):
        raise ValueError(f"{what} has {v.size} entries for {k} budgets")
    return v


def _best_move(c: Candidate, cur: int, total: np.ndarray, budget: np.ndarray) -> tuple[float, int] | None:
    """(added loss per weighted saving, target) of the best move away from `cur` that lowers
    the budgets still exceeded and keeps the met ones met; None where no move does."""
    over = total > budget
    weight = np.where(over, 1.0 / np.maximum(budget, 1e-300), 0.0)
    saved = c.costs[:, cur][:, None] - c.costs[:, 1:]  # (K, R)
    after = total[:, None] - saved
    keeps = np.all(over[:, None] | (after <= budget[:, None] * (1 + 1e-12)), axis=0)
    gain = weight @ saved
    ok = keeps & (gain > 0)
    if cur != DENSE:
        ok[cur - 1] = False
    if not ok.any():
        return None
    added = np.maximum(c.loss[1:] - c.loss_of(cur), 0.0)
    ratio = np.where(ok, added / np.where(ok, gain, 1.0), np.inf)
    # Among equal ratios prefer the largest rank: the finest step, the least overshoot.
    best = int(np.flatnonzero(ratio == ratio.min())[-1])
    return float(ratio[best]), best + 1


def _greedy(cands: Sequence[Candidate], fixed: np.ndarray, budget: np.ndarray) -> list[int]:
    choice = [DENSE] * len(cands)
    total = fixed + sum((c.cost(DENSE) for c in cands), np.zeros_like(fixed))
    while np.any(total > budget):
        best: tuple[float, int, int] | None = None
        for i, c in enumerate(cands):
            mv = _best_move(c, choice[i], total, budget)
            if mv is not None and (best is None or mv[0] < best[0]):
                best = (mv[0], i, mv[1])
        if best is None:
            break  # infeasible; the caller checked min_total, so only reachable by rounding
        _, i, to = best
        total = total + cands[i].cost(to) - cands[i].cost(choice[i])
        choice[i] = to
    return choice


def _lagrangian(cands: Sequence[Candidate], fixed: float, budget: float, iters: int = 60) -> list[int]:
    def pick(lam: float) -> tuple[list[int], float]:
        out, total = [], fixed
        for c in cands:
            obj = np.concatenate([[0.0], c.loss[1:]]) + lam * c.costs[0]
            best = int(np.flatnonzero(obj == obj.min())[0])  # dense (index 0) wins ties
            out.append(best)
            total += float(c.costs[0, best])
        return out, total

    choice, total = pick(0.0)
    if total <= budget:
        return choice
    lo, hi = 0.0, 1e-12
    while pick(hi)[1] > budget and hi < 1e30:
        hi *= 10.0
    for _ in range(iters):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 2.0
        if pick(mid)[1] > budget:
            lo = mid
        else:
            hi = mid
    return pick(hi)[0]


def _fill(cands: Sequence[Candidate], choice: list[int], fixed: np.ndarray, budget: np.ndarray) -> list[int]:
    """Spend leftover budget on rank increases (or going back to dense) with the best loss
    reduction per added cost, while every budget still holds."""
    choice = list(choice)
    total = fixed + sum((c.cost(ch) for c, ch in zip(cands, choice)), np.zeros_like(fixed))
    scale = 1.0 / np.maximum(budget, 1e-300)
    while True:
        best: tuple[float, int, int] | None = None
        for i, c in enumerate(cands):
            cur = choice[i]
            if cur == DENSE:
                continue
            options = np.concatenate([np.arange(cur + 1, c.max_rank + 1), [DENSE]]).astype(int)
            added = c.costs[:, options] - c.costs[:, [cur]]  # (K, n)
            gain = c.loss_of(cur) - np.where(options == DENSE, 0.0, c.loss[options])
            fits = np.all(total[:, None] + added <= budget[:, None] * (1 + 1e-12), axis=0)
            ok = fits & (gain > 0)
            if not ok.any():
                continue
            # A free increase (no budget grows) scores as if it cost almost nothing.
            price = np.maximum(scale @ np.maximum(added, 0.0), 1e-12)
            score = np.where(ok, gain / price, -np.inf)
            j = int(np.argmax(score))
            if best is None or score[j] > best[0]:
                best = (float(score[j]), i, int(options[j]))
        if best is None:
            return choice
        _, i, to = best
        total = total + cands[i].cost(to) - cands[i].cost(choice[i])
        choice[i] = to


def select_ranks(cands: Sequence[Candidate], *, fixed: float | Sequence[float] | np.ndarray,
                 budget: float | Sequence[float] | np.ndarray,
                 solver: Solver = "greedy") -> Selection:
    """Choose one option per candidate so that fixed + sum(costs) <= budget in every budgeted
    quantity, with small total loss. The caller checks feasibility with `min_total` first."""
    k = cands[0].costs.shape[0] if cands else len(np.atleast_1d(np.asarray(budget)))
    fixed_v, budget_v = _as_vector(fixed, k, "fixed"), _as_vector(budget, k, "budget")
    if solver == "greedy":
        choice = _greedy(cands, fixed_v, budget_v)
    else:
        if k != 1:
            raise ValueError("the lagrangian solver takes one budget; use the greedy solver for several")
        choice = _lagrangian(cands, float(fixed_v[0]), float(budget_v[0]))
    choice = _fill(cands, choice, fixed_v, budget_v)
    ranks = {c.name: (None if ch == DENSE else ch) for c, ch in zip(cands, choice)}
    total = fixed_v + sum((c.cost(ch) for c, ch in zip(cands, choice)), np.zeros(k))
    return Selection(ranks, total, sum(c.loss_of(ch) for c, ch in zip(cands, choice)))


def measured_loss_points(max_rank: int, points: int) -> list[int]:
    """Ranks at which to measure a layer: geometric from 1 to max_rank."""
    if max_rank <= points:
        return list(range(1, max_rank + 1))
    g = np.unique(np.round(np.geomspace(1, max_rank, points)).astype(int))
    return [int(v) for v in g]

"""Choosing every layer's rank jointly under a whole-model parameter or MAC budget.

Each factorizable layer offers a menu: stay dense (cost = its dense weight, loss 0) or take rank
r in 1..R (cost r * cost_per_rank, loss loss[r]), where R is the largest rank that still saves.
The loss is either spectral (the relative discarded energy sum_{i>r} s_i^2 / sum s_i^2, which is
the relative Frobenius error by Eckart-Young) or measured (drop of a validation metric when that
layer alone is truncated, interpolated between a few measured ranks).

Two solvers pick one option per layer so that the total cost fits the budget:
- "greedy": repeatedly take the move with the least added loss per saved unit of cost, where a
  move may jump several ranks at once (to the best point on the layer's lower convex hull, so a
  small dense -> rank-R saving does not hide the cheap savings behind it);
- "lagrangian": for a multiplier lam each layer independently minimizes loss + lam * cost; lam
  is bisected to the smallest value whose choice fits the budget.
Both end with a fill step that spends what is left of the budget on the rank increments with
the best loss reduction per cost, so neither leaves budget unused.
"""

from __future__ import annotations

import dataclasses
import heapq
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
    """One layer's menu. `loss[r]` for r = 0..R (loss[0] unused); dense has loss 0."""

    name: str
    dense_cost: float
    cost_per_rank: float
    loss: np.ndarray

    @property
    def max_rank(self) -> int:
        return len(self.loss) - 1

    def cost(self, choice: int) -> float:
        return self.dense_cost if choice == DENSE else choice * self.cost_per_rank

    def loss_of(self, choice: int) -> float:
        return 0.0 if choice == DENSE else float(self.loss[choice])


@dataclasses.dataclass
class Selection:
    ranks: dict[str, int | None]  # None: left dense
    total_cost: float
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


def min_total(cands: Sequence[Candidate], fixed: float) -> float:
    """The smallest reachable total: every layer at its cheapest option."""
    return fixed + sum(min(c.dense_cost, c.cost(1)) if c.max_rank >= 1 else c.dense_cost for c in cands)


def _best_move_down(c: Candidate, cur: int) -> tuple[float, int] | None:
    """(added loss per saved cost, target) of the best move from `cur` to a cheaper choice."""
    cur_cost, cur_loss = c.cost(cur), c.loss_of(cur)
    top = c.max_rank if cur == DENSE else cur - 1
    if top < 1:
        return None
    r = np.arange(1, top + 1)
    saved = cur_cost - r * c.cost_per_rank
    added = c.loss[1 : top + 1] - cur_loss
    ok = saved > 0
    if not ok.any():
        return None
    ratio = np.where(ok, np.maximum(added, 0.0) / np.where(ok, saved, 1.0), np.inf)
    # Among equal ratios prefer the smallest jump (largest rank): finer steps, less overshoot.
    best = int(np.flatnonzero(ratio == ratio.min())[-1])
    return float(ratio[best]), int(r[best])


def _greedy(cands: Sequence[Candidate], fixed: float, budget: float) -> list[int]:
    choice = [DENSE] * len(cands)
    total = fixed + sum(c.dense_cost for c in cands)
    heap: list[tuple[float, int, int, int]] = []  # (ratio, layer, from, to)
    for i, c in enumerate(cands):
        mv = _best_move_down(c, DENSE)
        if mv is not None:
            heapq.heappush(heap, (mv[0], i, DENSE, mv[1]))
    while total > budget and heap:
        _, i, frm, to = heapq.heappop(heap)
        if choice[i] != frm:
            continue  # stale entry
        c = cands[i]
        total += c.cost(to) - c.cost(frm)
        choice[i] = to
        mv = _best_move_down(c, to)
        if mv is not None:
            heapq.heappush(heap, (mv[0], i, to, mv[1]))
    return choice


def _lagrangian(cands: Sequence[Candidate], fixed: float, budget: float, iters: int = 60) -> list[int]:
    def pick(lam: float) -> tuple[list[int], float]:
        out, total = [], fixed
        for c in cands:
            r = np.arange(1, c.max_rank + 1)
            obj = c.loss[1:] + lam * r * c.cost_per_rank
            best_r = int(r[int(np.argmin(obj))]) if len(r) else DENSE
            if not len(r) or lam * c.dense_cost <= float(obj.min()):
                best_r = DENSE
            out.append(best_r)
            total += c.cost(best_r)
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


def _fill(cands: Sequence[Candidate], choice: list[int], fixed: float, budget: float) -> list[int]:
    """Spend leftover budget on single-rank increments (or going back to dense) with the best
    loss reduction per added cost, while they fit."""
    choice = list(choice)
    total = fixed + sum(c.cost(ch) for c, ch in zip(cands, choice))
    while True:
        best: tuple[float, int, int] | None = None
        for i, c in enumerate(cands):
            cur = choice[i]
            if cur == DENSE:
                continue
            options = [cur + 1] if cur + 1 <= c.max_rank else []
            options.append(DENSE)
            for to in options:
                added = c.cost(to) - c.cost(cur)
                gain = c.loss_of(cur) - c.loss_of(to)
                if added <= 0 or total + added > budget or gain <= 0:
                    continue
                score = gain / added
                if best is None or score > best[0]:
                    best = (score, i, to)
        if best is None:
            return choice
        _, i, to = best
        total += cands[i].cost(to) - cands[i].cost(choice[i])
        choice[i] = to


def select_ranks(cands: Sequence[Candidate], *, fixed: float, budget: float, solver: Solver = "greedy") -> Selection:
    """Choose one option per candidate so that fixed + sum(costs) <= budget with small total loss.
    The caller checks feasibility with `min_total` first."""
    choice = _greedy(cands, fixed, budget) if solver == "greedy" else _lagrangian(cands, fixed, budget)
    choice = _fill(cands, choice, fixed, budget)
    ranks = {c.name: (None if ch == DENSE else ch) for c, ch in zip(cands, choice)}
    total = fixed + sum(c.cost(ch) for c, ch in zip(cands, choice))
    return Selection(ranks, total, sum(c.loss_of(ch) for c, ch in zip(cands, choice)))


def measured_loss_points(max_rank: int, points: int) -> list[int]:
    """Ranks at which to measure a layer: geometric from 1 to max_rank."""
    if max_rank <= points:
        return list(range(1, max_rank + 1))
    g = np.unique(np.round(np.geomspace(1, max_rank, points)).astype(int))
    return [int(v) for v in g]


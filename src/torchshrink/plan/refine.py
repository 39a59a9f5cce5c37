"""Refine a planned choice by the real metric: a short local search on the validation split.

The DP minimizes the *sum* of per-layer errors, each measured with only that layer
compressed; compressing all layers at once interacts, and the summed KL is not the accuracy a
user measures. So, starting from the DP's choice, the search proposes exchanges the database
predicts are nearly as good (one layer gets a more accurate option, another a cheaper one, so
every budget still holds), ranks them by predicted error, applies the best few to the model
and keeps a move only where the real metric (`evaluate`, on validation data) improves.
Each evaluation is one apply + one metric pass, no file: the verifier still measures the
final file. `evaluations` bounds the whole search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Refinement", "local_search", "exchange_moves"]


@dataclasses.dataclass
class Refinement:
    """The choice after the search, its metric, and every evaluated move (in order)."""

    choice: list[int]
    metric: float
    start_metric: float
    history: list[dict[str, Any]]


def exchange_moves(choice: Sequence[int], errors: Sequence[Sequence[float]],
                   costs: Mapping[str, Sequence[Sequence[float]]], budgets: Mapping[str, float],
                   limit: int) -> list[tuple[float, list[int]]]:
    """Neighbours of `choice` within budget, by predicted error change (best first): every
    single-layer change that fits, and every pair (a more accurate option at layer i paid for
    by another option at layer k). At most `limit`; the current choice is never among them."""
    cur = list(choice)
    names = list(budgets)
    # the room each budget has left, and each option's cost change against the current one
    room = [budgets[k] - sum(costs[k][i][j] for i, j in enumerate(cur)) + 1e-9 for k in names]
    dc = [[[costs[k][i][j] - costs[k][i][cur[i]] for k in names] for j in range(len(errors[i]))]
          for i in range(len(cur))]
    de = [[errors[i][j] - errors[i][cur[i]] for j in range(len(errors[i]))] for i in range(len(cur))]
    found: list[tuple[float, int, int, int, int]] = []  # (error change, i, j, k, m); k = -1: single
    n = len(cur)
    for i in range(n):
        for j in range(len(de[i])):
            if j == cur[i]:
                continue
            left = [r - c for r, c in zip(room, dc[i][j])]
            if all(x >= 0 for x in left):
                found.append((de[i][j], i, j, -1, -1))
            if de[i][j] >= 0:
                continue  # pairs: layer i gains accuracy, another layer pays for it
            for k in range(n):
                if k == i:
                    continue
                for m in range(len(de[k])):
                    if m != cur[k] and all(x - c >= 0 for x, c in zip(left, dc[k][m])):
                        found.append((de[i][j] + de[k][m], i, j, k, m))
    found.sort()
    out: list[tuple[float, list[int]]] = []
    seen: set[tuple[int, ...]] = set()
    for d, i, j, k, m in found:
        c = cur.copy()
        c[i] = j
        if k >= 0:
            c[k] = m
        if tuple(c) not in seen:
            seen.add(tuple(c))
            out.append((d, c))
            if len(out) == limit:
                break
    return out


def local_search(choice: Sequence[int], errors: Sequence[Sequence[float]],
                 costs: Mapping[str, Sequence[Sequence[float]]], budgets: Mapping[str, float],
                 score: Callable[[list[int]], float], *, evaluations: int, per_round: int = 4,
                 start_metric: float | None = None) -> Refinement:
    """First-improvement search: each round evaluates the `per_round` best-predicted neighbours
    of the current choice by `score` (higher is better) and moves to the best that beats it;
    stops when a round finds nothing better or `evaluations` calls of `score` are spent."""
    cur = list(choice)
    best = float(score(cur)) if start_metric is None else float(start_metric)
    first = best
    history: list[dict[str, Any]] = []
    spent = 0
    tried: set[tuple[int, ...]] = {tuple(cur)}
    while spent < evaluations:
        moves = [(d, c) for d, c in exchange_moves(cur, errors, costs, budgets, limit=per_round * 8)
                 if tuple(c) not in tried][: min(per_round, evaluations - spent)]
        if not moves:
            break
        round_best: tuple[float, list[int]] | None = None
        for delta, c in moves:
            tried.add(tuple(c))
            got = float(score(c))
            spent += 1
            history.append({"choice": c, "predicted_error_change": delta, "metric": got, "accepted": False})
            if got > best and (round_best is None or got > round_best[0]):
                round_best = (got, c)
        if round_best is None:
            break
        best, cur = round_best
        for h in history:
            if h["choice"] == cur:
                h["accepted"] = True
    return Refinement(cur, best, first, history)

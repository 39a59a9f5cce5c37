"""Choose one option per layer: least summed error under budgets on summed costs.

This is a multiple-choice knapsack. The main budget is solved exactly by a dynamic program
over discretized costs (SPDY and OBC do the same): costs are rounded *up* to units of
budget / resolution, so every answer of the DP meets the real budget, and where costs are
integers and the budget is at most `resolution` the unit is 1 and the DP is exact. A second
budget is a second axis of the DP (exact in the same sense, on a coarser grid); more budgets
than two, or `method="lagrangian"`, fold the extra costs into the error with multipliers
found by bisection (feasible, not always optimal: the test says how close).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from torchshrink.errors import ConfigError

__all__ = ["Allocation", "allocate"]

Method = Literal["auto", "dp", "dp2", "lagrangian"]


@dataclasses.dataclass
class Allocation:
    """`choice[i]` is the option index of layer i; `costs` the summed real costs."""

    choice: list[int]
    error: float
    costs: dict[str, float]
    feasible: bool
    method: str


def _units(costs: Sequence[np.ndarray], budget: float, resolution: int) -> tuple[list[np.ndarray], int]:
    """Integer costs (rounded up) and the number of units the budget holds."""
    integral = all(np.all(np.equal(np.floor(c), c)) for c in costs) and float(budget).is_integer()
    if integral and budget <= resolution:
        return [c.astype(np.int64) for c in costs], int(budget)
    if budget <= 0:  # only free options fit: they cost 0 units, anything else more than the cap
        return [np.where(c > 0, 1, 0).astype(np.int64) for c in costs], 0
    unit = budget / resolution
    # A tiny slack so a cost that is an exact multiple of the unit is not bumped up by float noise.
    return [np.ceil(c / unit - 1e-9).astype(np.int64).clip(min=0) for c in costs], resolution


def _dp(errors: Sequence[np.ndarray], k: Sequence[np.ndarray], cap: int) -> list[int] | None:
    """Least-error choice with sum k <= cap (dp[b]: best error with total units <= b)."""
    dp = np.zeros(cap + 1)
    args = np.zeros((len(errors), cap + 1), dtype=np.int32)
    for i, (e, c) in enumerate(zip(errors, k)):
        new = np.full(cap + 1, np.inf)
        for j in range(len(e)):
            cj = int(c[j])
            if cj > cap:
                continue
            cand = dp[: cap + 1 - cj] + e[j]
            better = cand < new[cj:]
            new[cj:][better] = cand[better]
            args[i, cj:][better] = j
        dp = new
    if not np.isfinite(dp[cap]):
        return None
    out, b = [], cap
    for i in range(len(errors) - 1, -1, -1):
        j = int(args[i, b])
        out.append(j)
        b -= int(k[i][j])
    return out[::-1]


def _dp2(errors: Sequence[np.ndarray], k1: Sequence[np.ndarray], cap1: int, k2: Sequence[np.ndarray],
         cap2: int) -> list[int] | None:
    """The same DP with two budgets: a 2-D table over (units of budget 1, units of budget 2)."""
    dp = np.zeros((cap1 + 1, cap2 + 1))
    args = np.zeros((len(errors), cap1 + 1, cap2 + 1), dtype=np.int32)
    for i, e in enumerate(errors):
        new = np.full((cap1 + 1, cap2 + 1), np.inf)
        for j in range(len(e)):
            a, b = int(k1[i][j]), int(k2[i][j])
            if a > cap1 or b > cap2:
                continue
            cand = dp[: cap1 + 1 - a, : cap2 + 1 - b] + e[j]
            view, aview = new[a:, b:], args[i, a:, b:]
            better = cand < view
            view[better] = cand[better]
            aview[better] = j
        dp = new
    if not np.isfinite(dp[cap1, cap2]):
        return None
    out, r1, r2 = [], cap1, cap2
    for i in range(len(errors) - 1, -1, -1):
        j = int(args[i, r1, r2])
        out.append(j)
        r1 -= int(k1[i][j])
        r2 -= int(k2[i][j])
    return out[::-1]


def _totals(choice: Sequence[int], costs: Mapping[str, Sequence[np.ndarray]]) -> dict[str, float]:
    return {name: float(sum(c[i][j] for i, j in enumerate(choice))) for name, c in costs.items()}


def _lagrangian(errors: Sequence[np.ndarray], costs: Mapping[str, Sequence[np.ndarray]],
                budgets: Mapping[str, float], main: str, resolution: int, rounds: int = 3,
                steps: int = 40) -> list[int] | None:
    """DP on the main budget; every other budget priced into the error by a multiplier, each
    bisected in turn to the smallest price that meets its budget. Keeps the best feasible choice."""
    k, cap = _units(costs[main], budgets[main], resolution)
    extras = [n for n in budgets if n != main]
    scale = {n: max(float(np.max(np.abs(np.concatenate(errors)))), 1e-12) / max(budgets[n], 1e-12) for n in extras}
    lam = dict.fromkeys(extras, 0.0)
    best: tuple[float, list[int]] | None = None

    def solve() -> list[int] | None:
        priced = [e + sum(lam[n] * scale[n] * costs[n][i] for n in extras) for i, e in enumerate(errors)]
        return _dp(priced, k, cap)

    def consider(ch: list[int] | None) -> bool:
        nonlocal best
        if ch is None:
            return False
        tot = _totals(ch, costs)
        ok = all(tot[n] <= budgets[n] * (1 + 1e-12) for n in extras)
        if ok:
            err = float(sum(errors[i][j] for i, j in enumerate(ch)))
            if best is None or err < best[0]:
                best = (err, ch)
        return ok

    if consider(solve()):
        return best[1] if best is not None else None
    for _ in range(rounds):
        for n in extras:
            lo, hi = 0.0, 1.0
            while True:  # grow the price until this budget is met (or it cannot be)
                lam[n] = hi
                ch = solve()
                consider(ch)
                if ch is None or _totals(ch, costs)[n] <= budgets[n] or hi > 1e12:
                    break
                lo, hi = hi, hi * 4
            for _ in range(steps):
                lam[n] = (lo + hi) / 2
                ch = solve()
                if ch is not None and _totals(ch, costs)[n] <= budgets[n]:
                    hi = lam[n]
                    consider(ch)
                else:
                    lo = lam[n]
            lam[n] = hi
            consider(solve())
    return best[1] if best is not None else None


def allocate(
    errors: Sequence[Sequence[float]],
    costs: Mapping[str, Sequence[Sequence[float]]],
    budgets: Mapping[str, float],
    *,
    resolution: int = 4000,
    resolution2: int = 300,
    method: Method = "auto",
) -> Allocation:
    """One option per layer minimizing the summed error with every summed cost within its budget.

    errors[i][j]: the error of option j of layer i; costs[name][i][j]: its cost in `name`
    (bytes, MACs, ms). budgets: {name: limit} for some of those names; the first is the main
    budget (the DP's axis). resolution: units the main budget is cut into (resolution2: each
    axis of the 2-D DP). Where no choice meets the budgets, the cheapest choice in the main
    cost comes back with `feasible=False`.
    """
    errs = [np.asarray(e, dtype=np.float64) for e in errors]
    if not errs or any(e.ndim != 1 or e.size == 0 for e in errs):
        raise ConfigError("allocate() needs at least one option for every layer")
    cost_arrays = {n: [np.asarray(c, dtype=np.float64) for c in cs] for n, cs in costs.items()}
    for n, cs in cost_arrays.items():
        if len(cs) != len(errs) or any(c.shape != e.shape for c, e in zip(cs, errs)):
            raise ConfigError(f"costs[{n!r}] must have one cost per option of every layer, like errors")
        if any(np.any(c < 0) or not np.all(np.isfinite(c)) for c in cs):
            raise ConfigError(f"costs[{n!r}] must be finite and >= 0")
    if not budgets:
        raise ConfigError("allocate() needs at least one budget, e.g. {'bytes': 20000}")
    for n, b in budgets.items():
        if n not in cost_arrays:
            raise ConfigError(f"budget {n!r} has no costs; costs given: {sorted(cost_arrays)}")
        if not (isinstance(b, (int, float)) and b >= 0 and math.isfinite(b)):
            raise ConfigError(f"budget {n!r} must be a finite number >= 0, got {b!r}")
    names = list(budgets)
    main = names[0]
    if method == "auto":
        method = "dp" if len(names) == 1 else "dp2" if len(names) == 2 else "lagrangian"
    if method == "dp2" and len(names) != 2:
        raise ConfigError(f"method='dp2' needs exactly two budgets, got {names}")
    if method == "dp" and len(names) != 1:
        raise ConfigError(f"method='dp' takes one budget, got {names}; use 'dp2' or 'lagrangian'")
    choice: list[int] | None
    if method == "dp":
        k, cap = _units(cost_arrays[main], budgets[main], resolution)
        choice = _dp(errs, k, cap)
    elif method == "dp2":
        k1, cap1 = _units(cost_arrays[names[0]], budgets[names[0]], resolution2)
        k2, cap2 = _units(cost_arrays[names[1]], budgets[names[1]], resolution2)
        choice = _dp2(errs, k1, cap1, k2, cap2)
    else:
        choice = _lagrangian(errs, cost_arrays, budgets, main, resolution) if len(names) > 1 else \
            _dp(errs, *_units(cost_arrays[main], budgets[main], resolution))
    feasible = choice is not None
    if choice is None:
        choice = [int(np.argmin(c)) for c in cost_arrays[main]]
    err = float(sum(errs[i][j] for i, j in enumerate(choice)))
    return Allocation(choice, err, _totals(choice, cost_arrays), feasible, method)

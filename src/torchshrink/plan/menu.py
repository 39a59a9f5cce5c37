"""`ts.plan(search="menu")`: find the recipe that meets a size and/or latency budget with the least loss.

Every candidate recipe is run for real on a copy of the model (its fine-tune stages included)
and measured the way a user would: the bytes of the artifact `ts.save` would write, the median
latency at the example batch, and the user's metric. Nothing is estimated, so the answer holds
on this machine; the cost is one compression run per candidate, which is why the default menu
is short and cheap (no fine-tuning) and callers pass their own recipes where they know better.

Among the candidates that meet every budget the one with the best metric wins (ties: the
smaller file). Candidates a model cannot take (a group size that does not divide its widths, a
layer type a method does not support) are reported as skipped with the reason, not fatal.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from torchshrink.config import Config
from torchshrink.errors import ConfigError, ShrinkError
from torchshrink.plan.result import Candidate, PlanResult
from torchshrink.progress import progress_bar
from torchshrink.recipe import Recipe, Stage, compress, load_recipe

__all__ = ["RecipeLike", "default_candidates", "plan_menu"]

RecipeLike = Recipe | Config | Sequence[Config] | str | os.PathLike[str] | Mapping[str, Any]


def default_candidates() -> list[Recipe]:
    """A short menu of one- and two-stage recipes that need no fine-tuning data, from gentle
    to aggressive. Pass your own (with fine-tune stages) for better trade-offs."""
    from torchshrink.cluster import KMeansSharing
    from torchshrink.lowrank import SvdFactorization
    from torchshrink.prune import MagnitudePruning
    from torchshrink.quant import DynamicInt8, WeightOnly

    menus: list[list[Config]] = [
        [DynamicInt8()],
        [WeightOnly(bits=8, group_size=None)],
        [WeightOnly(bits=4, group_size=None)],
        [MagnitudePruning(sparsity=0.5), WeightOnly(bits=4, group_size=None)],
        [SvdFactorization(budget_params=0.5)],
        [KMeansSharing(bits=4)],
        [MagnitudePruning(sparsity=0.8), KMeansSharing(bits=4)],
    ]
    return [Recipe(tuple(Stage(c) for c in m)) for m in menus]


def _as_recipe(c: RecipeLike) -> Recipe:
    if isinstance(c, Recipe):
        return c
    if isinstance(c, Config):
        return Recipe((Stage(c),))
    if isinstance(c, Sequence) and not isinstance(c, str) and all(isinstance(x, Config) for x in c):
        return Recipe(tuple(Stage(x) for x in c))
    if isinstance(c, (str, os.PathLike, Mapping)):
        return load_recipe(c)
    raise ConfigError(f"a plan candidate must be a Recipe, a method config, a list of configs, a recipe path or "
                      f"mapping, got {type(c).__name__}")


def _name(r: Recipe) -> str:
    if r.name:
        return r.name
    return " + ".join(f"{type(s.config).__name__}({_short(s.config)})" for s in r.stages)


_HEADLINE = ("sparsity", "bits", "group_size", "rank", "ratio", "budget_params", "budget_macs", "budget_latency")


def _short(c: Config) -> str:
    """The settings that tell candidates apart: the headline ones when set, and any other one
    that differs from the default."""
    d = c.to_dict()
    d.pop("method", None)
    default = type(c)().to_dict() if _constructible(type(c)) else {}
    shown = {k: v for k, v in d.items()
             if (k in _HEADLINE or default.get(k, v) != v) and (v is not None or k == "group_size")}
    return ", ".join(f"{k}={v!r}" for k, v in shown.items())


def _constructible(cls: type[Config]) -> bool:
    try:
        cls()
        return True
    except Exception:  # a config with required fields: show everything that is set
        return False


def _fraction(name: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and value > 0):
        raise ConfigError(f"{name} must be a positive number (a float <= 1 is a fraction of the baseline), "
                          f"got {value!r}")


def plan_menu(
    model: nn.Module,
    candidates: Iterable[RecipeLike] | None = None,
    *,
    evaluate: Callable[[nn.Module], float],
    max_bytes: float | None = None,
    max_latency: float | None = None,
    example: Any = None,
    train: Iterable[Any] | None = None,
    val: Iterable[Any] | None = None,
    calibration: Iterable[Any] | None = None,
    latency_runs: int = 20,
    threads: int | None = 1,
    progress: bool = True,
) -> PlanResult:
    """Run every candidate recipe on a copy of `model`, measure it, and pick the best one
    within budget.

    evaluate: `model -> float`, higher is better (accuracy, or minus a loss).
    max_bytes / max_latency: the budget; a value <= 1.0 is a fraction of the baseline (file
        bytes of the fp32 model, its median latency at `example`), a larger one is absolute
        (bytes, milliseconds). At least one must be given.
    candidates: recipes, configs, lists of configs or recipe files; default `default_candidates()`.
    Returns every measurement (`PlanResult.table()`), the winner and its compressed model; where
    no candidate fits, `best` is None and the table says by how much each missed.
    """
    from torchshrink.measure.core import _default_example
    from torchshrink.measure.latency import time_forward
    from torchshrink.recipe import _file_bytes

    if max_bytes is None and max_latency is None:
        raise ConfigError("plan() needs a budget: max_bytes= and/or max_latency= (a float <= 1 is a fraction of "
                          "the baseline model)")
    _fraction("max_bytes", max_bytes)
    _fraction("max_latency", max_latency)
    recipes = [_as_recipe(c) for c in (candidates if candidates is not None else default_candidates())]
    if not recipes:
        raise ConfigError("plan() got no candidates; pass recipes or leave candidates=None for the default menu")
    x = example if example is not None else _default_example(model)

    def lat(m: nn.Module) -> float:
        # What a deployment runs: the inference form (kernels chosen per layer), not the
        # training form's masks and per-call decoding.
        from torchshrink.infer import for_inference

        return time_forward(for_inference(m, example=x), x, runs=latency_runs, warmup=3, threads=threads).median_ms

    base = Candidate("baseline (as given)", {}, _file_bytes(model), lat(model), float(evaluate(model)))
    limit_bytes = None if max_bytes is None else (max_bytes * base.file_bytes if max_bytes <= 1.0 else max_bytes)  # type: ignore[operator]
    limit_ms = None if max_latency is None else (max_latency * base.latency_ms if max_latency <= 1.0 else max_latency)  # type: ignore[operator]

    bar = progress_bar(len(recipes), "plan", progress)
    out: list[Candidate] = []
    best: Candidate | None = None
    best_model: nn.Module | None = None  # only the leader's model is kept, not every candidate's
    for r in recipes:
        cand = Candidate(_name(r), r.to_dict())
        t0 = time.perf_counter()
        try:
            res = compress(copy.deepcopy(model), r, train=train, val=val, evaluate=evaluate, example=example,
                           calibration=calibration, progress=False, measure_file=False)
        except (ShrinkError, ValueError) as e:  # the model cannot take this recipe: say why, go on
            cand.skipped = str(e).splitlines()[0][:200]
        else:
            m = res.model
            cand.file_bytes, cand.latency_ms, cand.metric = _file_bytes(m), lat(m), float(evaluate(m))
            cand.meets_budget = ((limit_bytes is None or cand.file_bytes <= limit_bytes)
                                 and (limit_ms is None or cand.latency_ms <= limit_ms))
            if cand.meets_budget and (best is None or _better(cand, best)):
                best, best_model = cand, m
        cand.seconds = time.perf_counter() - t0
        out.append(cand)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return PlanResult(base, out, best, best_model, {"max_bytes": limit_bytes, "max_latency_ms": limit_ms})


def _better(a: Candidate, b: Candidate) -> bool:
    """Higher metric wins; on a tie, the smaller file."""
    assert a.metric is not None and b.metric is not None
    return (a.metric, -(a.file_bytes or 0)) > (b.metric, -(b.file_bytes or 0))



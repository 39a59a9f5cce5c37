"""`ts.plan`: compress a model to a size / latency budget, every result measured.

Two searches:
- "menu" (the default): run a short menu of whole-model recipes (`menu.py`), keep the best in budget;
- "joint": per layer, measure options across the families (sparsity, bit widths, k-means
  sharing, SVD ranks and stacks; `options.py`), choose one per layer by a dynamic program
  under the budgets (`allocate.py`), then apply, save, reload and measure the file, and solve
  again on the costs that file corrected (`calibrate.py`, `joint.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.plan.menu import RecipeLike, default_candidates, plan_menu
from torchshrink.plan.result import Candidate, PlanResult

__all__ = ["Candidate", "PlanResult", "default_candidates", "plan"]


def plan(
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
    search: Literal["menu", "joint"] = "menu",
    **joint: Any,
) -> PlanResult:
    """Compress `model` to the budget and return every measurement and the winner.

    evaluate: `model -> float`, higher is better (accuracy, or minus a loss).
    max_bytes / max_latency: the budget; a value <= 1.0 is a fraction of the baseline (file
        bytes of the fp32 model, its median latency at `example`), a larger one is absolute
        (bytes, milliseconds). At least one must be given.
    search="menu": run `candidates` (recipes, configs, lists of configs or recipe files;
        default `default_candidates()`) and keep the best within budget.
    search="joint": one option per layer chosen jointly (see `torchshrink.plan.joint.plan_joint`
        for its keyword options: max_macs, finetune, error, options, latency, pareto_points, ...);
        the result adds `.per_layer`, `.pareto` and `.recipe`.
    """
    if search == "menu":
        if joint:
            raise ConfigError(f"plan(search='menu') got options of the joint search: {sorted(joint)}; "
                              "pass search='joint' to use them")
        return plan_menu(model, candidates, evaluate=evaluate, max_bytes=max_bytes, max_latency=max_latency,
                         example=example, train=train, val=val, calibration=calibration,
                         latency_runs=latency_runs, threads=threads, progress=progress)
    if search == "joint":
        if candidates is not None:
            raise ConfigError("plan(search='joint') chooses per-layer options itself; candidates= are recipes "
                              "for search='menu' (restrict the joint search with options=)")
        from torchshrink.plan.joint import plan_joint

        return plan_joint(model, evaluate=evaluate, max_bytes=max_bytes, max_latency=max_latency,
                          example=example, train=train, val=val, calibration=calibration,
                          latency_runs=latency_runs, threads=threads, progress=progress, **joint)
    raise ConfigError(f"plan(search=...) must be 'menu' or 'joint', got {search!r}")


# `ts.plan(model, ...)`: this subpackage is also the verb (see torchshrink._verb_module).
from torchshrink._verb_module import make_callable  # noqa: E402

make_callable(__name__, plan)

"""`ts.plan(search="joint")`: one option per layer, chosen jointly under the budgets, verified.

1. measure the option database (`options.build_database`): per layer and option, error, bytes,
   MACs and (optionally) latency;
2. choose one option per layer by the dynamic program of `allocate.py` under the budgets, less
   what the rest of the model costs (`fixed_*` in the database);
3. apply the choice as a recipe (one stage per family, per-layer settings; `compress`), fine-tune
   it when asked, save it to a temporary file, load it back and measure the file's bytes, the
   metric (and latency) on what was read back. Each verified file corrects the cost model
   (`calibrate.py`: the layers' bytes as saved, the real fixed part, latency's scale) and the
   plan is solved again under the same limits (`retries` times): a plan that missed is priced
   at what it took, a plan with bytes to spare makes room for a better one; the best plan that
   meets the budget on its file (validation metric) is kept;
4. sweep the byte budget (and the latency budget, where one is set) to draw the Pareto fronts
   of predicted error, verifying a few points (`PlanResult.plot_pareto`); a verified point
   that meets every limit on its file with a better metric than the pick replaces it (verified
   again with the fine-tune first, when one is asked for).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.plan.allocate import Allocation, allocate
from torchshrink.plan.calibrate import Calibration
from torchshrink.plan.options import LayerOption, OptionDatabase, build_database, stage_configs
from torchshrink.plan.result import Candidate, PlanResult
from torchshrink.progress import progress_bar
from torchshrink.recipe import FineTune, Recipe, Stage, compress

__all__ = ["plan_joint", "plan_recipe"]

LATENCY_SLACK = 0.9  # below this share of a latency budget, a plan that met it is re-solved


def plan_recipe(choice: dict[str, LayerOption], *, finetune: FineTune | None = None, name: str = "") -> Recipe:
    """The recipe that applies a per-layer choice (one stage per family, per-layer settings);
    a fine-tune, when given, runs after the last stage."""
    configs = stage_configs({n: o for n, o in choice.items() if o != LayerOption()})
    if not configs:
        raise ConfigError("the plan leaves every layer as it is; there is no recipe to write (loosen nothing: "
                          "the model already meets the budget)")
    stages = [Stage(c) for c in configs]
    if finetune is not None:
        stages[-1] = Stage(stages[-1].config, finetune)
    return Recipe(tuple(stages), name, "per-layer plan chosen by ts.plan(search='joint')")


def _limit(name: str, value: float | None, base: float | None) -> float | None:
    if value is None:
        return None
    if not (isinstance(value, (int, float)) and value > 0):
        raise ConfigError(f"{name} must be a positive number (a float <= 1 is a fraction of the baseline), "
                          f"got {value!r}")
    if value <= 1.0:
        assert base is not None
        return float(value) * base
    return float(value)


class _Verifier:
    """Apply a choice, save, load back, measure: what a user of the file would see."""

    def __init__(self, model: nn.Module, evaluate: Callable[[nn.Module], float], example: Any,
                 train: Iterable[Any] | None, val: Iterable[Any] | None, calibration: Iterable[Any] | None,
                 latency: bool, latency_runs: int, threads: int | None, recalibrate_bn: bool = True) -> None:
        self.model, self.evaluate, self.example = model, evaluate, example
        self.recalibrate_bn = recalibrate_bn
        self.train, self.val, self.calibration = train, val, calibration
        self.latency, self.latency_runs, self.threads = latency, latency_runs, threads

    # Set by plan_joint when the latency budget is a fraction of the baseline: plans are then
    # timed in turns with the baseline and priced as (their time / the baseline's, in the same
    # rounds) x the baseline's first time, so a machine that slows down or speeds up during a
    # long plan (a shared VM) does not move every plan over or under the budget.
    relative_to: tuple[nn.Module, float] | None = None
    ROUNDS = 3

    def time(self, m: nn.Module) -> float:
        from torchshrink.infer import for_inference

        return self.time_fast(for_inference(m, example=self.example))

    def time_fast(self, fast: nn.Module) -> float:
        """Median ms of a model already in its inference form (see `relative_to`)."""
        from statistics import median

        from torchshrink.measure.latency import time_forward

        if self.relative_to is None:
            return time_forward(fast, self.example, runs=self.latency_runs, warmup=3, threads=self.threads).median_ms
        base, base_ms = self.relative_to
        runs = max(1, self.latency_runs // self.ROUNDS)
        ratios = []
        for _ in range(self.ROUNDS):
            b = time_forward(base, self.example, runs=runs, warmup=2, threads=self.threads).median_ms
            c = time_forward(fast, self.example, runs=runs, warmup=2, threads=self.threads).median_ms
            ratios.append(c / b)
        return median(ratios) * base_ms

    def __call__(self, recipe: Recipe, label: str) -> tuple[Candidate, nn.Module]:
        from torchshrink.codec.container import save
        from torchshrink.infer.load import load

        t0 = time.perf_counter()
        res = compress(copy.deepcopy(self.model), recipe, train=self.train, val=self.val, example=self.example,
                       calibration=self.calibration, progress=False, measure_file=False,
                       recalibrate_bn=self.recalibrate_bn)
        cand = Candidate(label, recipe.to_dict())
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "plan.tsz")
            save(res.model, path)
            cand.file_bytes = os.path.getsize(path)
            back = load(path, like=self.model)
        cand.metric = float(self.evaluate(back))
        if self.latency:
            cand.latency_ms = self.time(back)
        cand.seconds = time.perf_counter() - t0
        return cand, res.model


def plan_joint(
    model: nn.Module,
    *,
    evaluate: Callable[[nn.Module], float],
    max_bytes: float | None = None,
    max_latency: float | None = None,
    max_macs: float | None = None,
    example: Any = None,
    train: Iterable[Any] | None = None,
    val: Iterable[Any] | None = None,
    calibration: Iterable[Any] | None = None,
    latency_runs: int = 20,
    threads: int | None = 1,
    progress: bool = True,
    error: Literal["output", "model"] = "model",
    options: Callable[[str, nn.Module], Sequence[LayerOption]] | None = None,
    database: OptionDatabase | None = None,
    targets: Iterable[str] | None = None,
    ignore: Iterable[str] = (),
    calibration_batches: int = 4,
    finetune: int = 0,
    finetune_lr: float = 1e-4,
    resolution: int = 4000,
    retries: int = 3,
    pareto_points: int = 8,
    verify_points: int = 3,
    refine: int = 0,
    workers: int = 1,
    threads_per_worker: int = 1,
    ray_address: str | None = None,
    recalibrate_bn: bool = True,
) -> PlanResult:
    """Choose one option per layer (sparsity, bits, k-means bits, SVD rank or a stack) that
    minimizes the summed error under max_bytes / max_macs / max_latency (<= 1: a fraction of the
    baseline), apply it, and measure the file it makes.

    A latency budget <= 1 is met relative to the baseline: each plan is timed in turns with it.
    error: "model" (KL divergence of the model's outputs when only that layer is compressed)
        or "output" (the layer's relative output reconstruction error).
    options: `(layer name, module) -> [LayerOption, ...]` to change the menu per layer.
    database: a database from an earlier call (`result.database`), to solve another budget
        without measuring again.
    finetune: epochs of `fit` after applying (needs train=); finetune_lr its learning rate.
    refine: evaluations of `evaluate` (pass a validation metric) a local search may spend after
        the DP, exchanging options between layers within the budgets where the real metric
        improves (`refine.local_search`); 0 keeps the DP's choice.
    workers / threads_per_worker / ray_address: measure the option database in that many
        processes with that many torch threads each, or as tasks on a Ray cluster (`workers.py`).
    recalibrate_bn: re-estimate BatchNorm statistics from `calibration` after applying a plan
        (and before pricing each option's model error), as `compress` does; False measures
        every plan with the statistics of the uncompressed model.
    Returns a PlanResult with .model, .per_layer, .pareto, .recipe (YAML: `.recipe.to_yaml()`).
    """
    from torchshrink.codec.container import encode_model
    from torchshrink.measure.macs import count_macs
    from torchshrink.plan.options import _first_sample

    if max_bytes is None and max_latency is None and max_macs is None:
        raise ConfigError("plan(search='joint') needs a budget: max_bytes=, max_macs= and/or max_latency= (a float "
                          "<= 1 is a fraction of the baseline model)")
    for n, v in (("max_bytes", max_bytes), ("max_latency", max_latency), ("max_macs", max_macs)):
        _limit(n, v, 1.0)
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ConfigError(f"refine must be a whole number of evaluations >= 0, got {refine!r}")
    from torchshrink.plan.workers import check_workers

    check_workers(workers, threads_per_worker, ray_address)
    if error not in ("output", "model"):
        raise ConfigError(f"error must be 'output' or 'model', got {error!r}")
    if finetune and train is None:
        raise ConfigError(f"finetune={finetune} needs train= a loader of (input, target) batches")
    if calibration is None:
        calibration = train
    if calibration is None:
        raise ConfigError("plan(search='joint') needs calibration= batches (or train=) to measure layer errors")
    if max_latency is not None and example is None:
        raise ConfigError("a latency budget needs example= one batch at the serving batch size")
    need_latency = max_latency is not None
    t_start = time.perf_counter()
    model = model.eval()
    verify = _Verifier(model, evaluate, example, train, val, calibration, need_latency, latency_runs, threads,
                       recalibrate_bn)
    base_ms = None
    if need_latency:
        from statistics import median

        from torchshrink.infer import for_inference

        base_fast = for_inference(model, example=example)
        if max_latency is not None and max_latency <= 1.0:
            # the budget's scale: the baseline's median over several rounds, not one timing
            base_ms = median(verify.time_fast(base_fast) for _ in range(verify.ROUNDS))
            verify.relative_to = (base_fast, base_ms)
        else:
            base_ms = verify.time_fast(base_fast)
    base = Candidate("baseline (as given)", {}, len(encode_model(model)), base_ms, float(evaluate(model)))
    sample = _first_sample(example if example is not None else next(iter(calibration)))
    base_macs = count_macs(model, sample)[0]
    limits = {"bytes": _limit("max_bytes", max_bytes, base.file_bytes),
              "macs": _limit("max_macs", max_macs, base_macs),
              "latency_ms": _limit("max_latency", max_latency, base.latency_ms)}
    limits_set = {k: v for k, v in limits.items() if v is not None}

    t0 = time.perf_counter()
    db = database if database is not None else build_database(
        model, calibration, example=example, options=options, targets=targets, ignore=ignore,
        calibration_batches=calibration_batches, model_error=error == "model", latency=need_latency,
        latency_runs=latency_runs, threads=threads, progress=progress, workers=workers,
        threads_per_worker=threads_per_worker, ray_address=ray_address, recalibrate_bn=recalibrate_bn)
    seconds = {"database": time.perf_counter() - t0 if database is None else 0.0}
    errors = db.errors(error)
    costs = {k: db.costs(k) for k in {"bytes", *limits_set}}
    fixed = {"bytes": float(db.fixed_bytes), "macs": float(db.fixed_macs), "latency_ms": db.fixed_latency_ms or 0.0}
    # the costs each verified file corrects (calibrate.py); the database keeps its own
    cal = Calibration.start(db.layers, costs, fixed)

    def solve(budgets: dict[str, float]) -> Allocation:
        return allocate(errors, cal.costs, cal.layer_budgets(budgets), resolution=resolution)

    def choice_of(a: Allocation) -> dict[str, LayerOption]:
        return {n: db.rows[n][j].option for n, j in zip(db.layers, a.choice)}

    refine_left = refine
    refinements: list[dict[str, Any]] = []

    def refined(a: Allocation, budgets: dict[str, float]) -> Allocation:
        # Spend what is left of the evaluation budget on a local search from the DP's choice.
        nonlocal refine_left
        if refine_left <= 0 or not a.feasible:
            return a
        from torchshrink.plan.refine import local_search

        def score(ch: list[int]) -> float:
            opts = {n: db.rows[n][j].option for n, j in zip(db.layers, ch)}
            if all(o == LayerOption() for o in opts.values()):
                return float(base.metric or 0.0)
            m = compress(copy.deepcopy(model), plan_recipe(opts), calibration=calibration, example=example,
                         progress=False, measure_file=False, recalibrate_bn=recalibrate_bn).model
            return float(evaluate(m))

        r = local_search(a.choice, errors, cal.costs, cal.layer_budgets(budgets), score, evaluations=refine_left)
        refine_left -= len(r.history) + 1
        refinements.append({"start_metric": r.start_metric, "metric": r.metric, "evaluations": len(r.history) + 1,
                            "moves": [{"changed": {db.layers[i]: db.rows[db.layers[i]][j].option.name
                                                   for i, j in enumerate(h["choice"]) if j != a.choice[i]},
                                       "metric": h["metric"], "accepted": h["accepted"]} for h in r.history]})
        if r.choice == a.choice:
            return a
        err = float(sum(errors[i][j] for i, j in enumerate(r.choice)))
        tot = {k: float(sum(c[i][j] for i, j in enumerate(r.choice))) for k, c in cal.costs.items()}
        return Allocation(r.choice, err, tot, True, a.method + "+local search")

    def meets(cand: Candidate, a: Allocation) -> bool:
        """Every limit met by what the verified file measured (MACs: the plan's exact count)."""
        real = {"bytes": cand.file_bytes, "latency_ms": cand.latency_ms,
                "macs": cal.predicted("macs", a.choice) if "macs" in cal.costs else None}
        return all(real[k] is not None and real[k] <= v for k, v in limits_set.items())  # type: ignore[operator]

    ft = FineTune(epochs=finetune, lr=finetune_lr) if finetune else None
    t0 = time.perf_counter()
    attempts: list[Candidate] = []
    best: Candidate | None = None
    best_model: nn.Module | None = None
    chosen: Allocation | None = None
    seen: set[tuple[int, ...]] = set()
    bar = progress_bar(retries + 1, "plan: solve and verify", progress)
    solve_s = refine_s = 0.0
    for attempt in range(retries + 1):
        # Every solve is under the limits themselves, on the costs the files so far corrected:
        # a plan that missed is priced at what it really took and is not chosen again; a plan
        # that fit with bytes to spare may make room for a better one (bytes and MACs are
        # deterministic; a latency budget is not chased upwards through timing noise).
        t1 = time.perf_counter()
        alloc = solve(limits_set)
        solve_s += time.perf_counter() - t1
        if attempt and (tuple(alloc.choice) in seen or not alloc.feasible or (
                best is not None and best.meets_budget and chosen is not None
                and alloc.error >= chosen.error - 1e-12 * max(1.0, abs(chosen.error)))):
            break  # nothing new to verify: the corrected costs lead back to a measured plan
        seen.add(tuple(alloc.choice))
        t1 = time.perf_counter()
        alloc = refined(alloc, limits_set)
        refine_s += time.perf_counter() - t1
        seen.add(tuple(alloc.choice))
        choice = choice_of(alloc)
        predicted = {k: cal.predicted(k, alloc.choice) for k in cal.costs}
        if all(o == LayerOption() for o in choice.values()):
            cand, m = copy.deepcopy(base), copy.deepcopy(model)
            cand.name, recipe = "as is (meets the budget)", None
        else:
            recipe = plan_recipe(choice, finetune=ft, name="joint_plan")
            cand, m = verify(recipe, f"joint plan, try {attempt + 1}")
        cand.predicted = predicted
        # measured, not predicted: a plan the database prices over the limit may fit on its file
        cand.meets_budget = meets(cand, alloc)
        attempts.append(cand)
        if best is None or (cand.meets_budget, cand.metric) > (best.meets_budget, best.metric):
            best, best_model, chosen = cand, m, alloc
        if bar is not None:
            bar.update(1)
        cal.observe(alloc.choice, m, cand.file_bytes, cand.latency_ms,
                    [db.rows[n][j].option.name for n, j in zip(db.layers, alloc.choice)])
        # a plan that meets a latency budget ends the search unless it left more than timing
        # noise unused (10%): then the corrected latency scale may fit a better plan
        if cand.meets_budget and "latency_ms" in limits_set and \
                (cand.latency_ms or 0.0) >= LATENCY_SLACK * limits_set["latency_ms"]:
            break
    if bar is not None:
        bar.close()
    seconds["solve_and_verify"] = time.perf_counter() - t0
    seconds["solve"] = solve_s
    seconds["refine"] = refine_s
    seconds["verify"] = seconds["solve_and_verify"] - solve_s - refine_s
    assert best is not None and chosen is not None

    t0 = time.perf_counter()
    front: dict[str, Any] = {}  # the best verified front point that meets every limit on its file

    def keep(cand: Candidate, a: Allocation, m: nn.Module) -> None:
        if meets(cand, a) and cand.metric is not None and cand.metric > front.get("metric", float("-inf")):
            front.update(metric=cand.metric, candidate=cand, alloc=a, model=m)

    pareto = _pareto(cal, solve, choice_of, verify, base.file_bytes or 0, limits["bytes"],
                     pareto_points, verify_points, progress, keep=keep)
    if need_latency:  # the latency-vs-metric front too
        pareto += _pareto(cal, solve, choice_of, verify, base.latency_ms or 0.0,
                          limits["latency_ms"], pareto_points, verify_points, progress, axis="latency_ms", keep=keep)
    # The summed per-layer errors can rank plans wrongly (layers compressed together interact);
    # a front point that meets the budget on its file with a better validation metric is the
    # better plan. With fine-tuning it is verified again fine-tuned before it may replace the pick.
    if front and (best is None or not best.meets_budget or front["metric"] > (best.metric or float("-inf"))):
        cand, m, a = front["candidate"], front["model"], front["alloc"]
        if ft is not None:
            cand, m = verify(plan_recipe(choice_of(a), finetune=ft, name="joint_plan"), "best front point, fine-tuned")
            keep_it = cand.metric is not None and (best is None or not best.meets_budget
                                                  or cand.metric > (best.metric or float("-inf")))
        else:
            keep_it = True
        if keep_it:
            cand.name = "joint plan (a verified front point)"
            cand.meets_budget = True
            attempts.append(cand)
            best, best_model, chosen = cand, m, a
    seconds["pareto"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    final_choice = choice_of(chosen)
    per_layer = _per_layer(db, chosen, errors, cal)
    recipe = None if all(o == LayerOption() for o in final_choice.values()) else \
        plan_recipe(final_choice, finetune=ft, name="joint_plan")
    result = PlanResult(base, attempts + [p["candidate"] for p in pareto if p.get("candidate") is not None],
                        best if best.meets_budget else None, best_model if best.meets_budget else None,
                        {"max_bytes": limits["bytes"], "max_latency_ms": limits["latency_ms"],
                         "max_macs": limits["macs"]},
                        search="joint", per_layer=per_layer,
                        pareto=[{k: v for k, v in p.items() if k != "candidate"} for p in pareto],
                        recipe=recipe, seconds=seconds, database=db, refinements=refinements,
                        calibration=cal.log)
    return result


def _per_layer(db: OptionDatabase, a: Allocation, errors: list[list[float]], cal: Calibration) -> list[dict[str, Any]]:
    # bytes: what the layer took in the saved model where this plan was verified (calibrate.py),
    # else the database's price; database_bytes: the database's price
    rows = [(n, db.rows[n][j], errors[i][j], cal.costs["bytes"][i][j]) for i, (n, j) in
            enumerate(zip(db.layers, a.choice))]
    total_b = sum(b for *_, b in rows) or 1
    total_e = sum(e for _, _, e, _ in rows) or 1.0
    return [{"layer": n, "option": r.option.name, "family": r.option.family, "bytes": b, "database_bytes": r.bytes,
             "error": e, "output_error": r.error, "macs": r.macs, "latency_ms": r.latency_ms,
             "bytes_share": b / total_b, "error_share": e / total_e} for n, r, e, b in rows]


def _pareto(cal: Calibration, solve: Callable[[dict[str, float]], Allocation],
            choice_of: Callable[[Allocation], dict[str, LayerOption]], verify: _Verifier,
            base_cost: float, limit: float | None, points: int, verified: int,
            progress: bool, axis: str = "bytes",
            keep: Callable[[Candidate, Allocation, nn.Module], None] | None = None) -> list[dict[str, Any]]:
    """Budgets on `axis` ("bytes" or "latency_ms") from the smallest plan to the fp32 model,
    geometric; each solved by the DP (on the costs the verified plans corrected), a few (evenly
    spread) applied and measured without fine-tuning (file bytes, metric, and latency where the
    verifier times)."""
    if points < 1:
        return []
    # the smallest plan, with room for the DP's rounding up (one unit per layer)
    lo = cal.predicted(axis, [min(range(len(c)), key=c.__getitem__) for c in cal.costs[axis]]) * 1.02
    hi = float(base_cost)
    grid = [lo * (hi / lo) ** (i / max(points - 1, 1)) for i in range(points)] if 0 < lo < hi else [hi]
    picks = set() if verified < 1 else {round(i * (len(grid) - 1) / max(verified - 1, 1))
                                        for i in range(min(verified, len(grid)))}
    out: list[dict[str, Any]] = []
    bar = progress_bar(len(picks), f"plan: pareto ({axis})", progress)
    for i, b in enumerate(grid):
        a = solve({axis: b})
        row: dict[str, Any] = {"axis": axis, "budget": b, "predicted": cal.predicted(axis, a.choice),
                               "predicted_error": a.error, "feasible": a.feasible,
                               "choice": {n: o.name for n, o in choice_of(a).items()},
                               "file_bytes": None, "latency_ms": None, "metric": None}
        if axis == "bytes":  # the names the bytes sweep has always had
            row.update(budget_bytes=b, predicted_bytes=row["predicted"])
        if i in picks and a.feasible and any(o != LayerOption() for o in choice_of(a).values()):
            cand, m = verify(plan_recipe(choice_of(a), name="pareto"), f"pareto point {i + 1} (no fine-tune)")
            if keep is not None:
                keep(cand, a, m)
            got = cand.file_bytes if axis == "bytes" else cand.latency_ms
            cand.meets_budget = limit is None or (got or 0) <= limit
            row.update(file_bytes=cand.file_bytes, latency_ms=cand.latency_ms, metric=cand.metric, candidate=cand)
            if bar is not None:
                bar.update(1)
        out.append(row)
    if bar is not None:
        bar.close()
    return out

"""`SvdFactorization`: replace Linear and Conv2d layers by truncated-SVD factor pairs.

Ranks come from one of: a fixed `rank`, a kept spectral `energy`, a kept parameter `ratio`
(per layer), or a whole-model `budget_params` / `budget_macs` under which all ranks are chosen
jointly (see `rank.py`). `per_layer` pins individual layers and wins over everything else.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from torchshrink.config import Config, check, check_choice, check_range
from torchshrink.errors import ConfigError, UnsupportedModelError
from torchshrink.lowrank.costs import (
    LAYER_TYPES,
    count_params,
    dense_macs,
    layer_macs,
    macs_per_rank,
)
from torchshrink.lowrank.latency import measure_tables, model_time_ratio
from torchshrink.lowrank.rank import (
    Candidate,
    Solver,
    interpolate_loss,
    measured_loss_points,
    min_total,
    select_ranks,
    spectral_loss,
)
from torchshrink.lowrank.svd import (
    FactorizedConv2d,
    FactorizedLinear,
    LayerSpectrum,
    dense_params,
    factor_params_per_rank,
    factorize_layer,
    max_saving_rank,
    spectrum,
    supports,
)
from torchshrink.nn import (
    check_per_layer_patterns,
    recalibrate_batchnorm,
    resolve_per_layer,
    select_layers,
    set_module,
)
from torchshrink.nn.shapes import record_shapes
from torchshrink.progress import progress_bar
from torchshrink.registry import Context, register

__all__ = ["SvdFactorization", "apply_svd_factorization", "chosen_ranks", "layer_macs", "count_params"]

_KINDS = ("rank", "energy", "ratio")
_BUDGETS = ("budget_params", "budget_macs", "budget_latency")
PerLayer = dict[str, int | dict[str, float]]


def _check_kind(kind: str, value: float, where: str) -> None:
    if kind == "rank":
        check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
              f"{where}rank must be an integer >= 1, got {value!r}")
    elif kind == "energy":
        check_range(f"{where}energy", value, 0.0, 1.0, low_inclusive=False)
    else:
        check_range(f"{where}ratio", value, 0.0, 1.0, low_inclusive=False, high_inclusive=False)


def _check_budget(name: str, value: int | float | None) -> None:
    if value is None:
        return
    if name == "budget_latency":
        check(isinstance(value, float) and 0.0 < value < 1.0,
              f"budget_latency is a fraction of the model's measured time in (0, 1), got {value!r}; "
              "e.g. 0.66 asks for a 1.5x speed-up")
        return
    if isinstance(value, float):
        check(0.0 < value <= 1.0,
              f"{name} as a float is a fraction of the model's total in (0, 1], got {value!r}; "
              f"give an int for an absolute count")
    else:
        check(value >= 1, f"{name} must be >= 1, got {value!r}")


def _per_layer_spec(value: int | Mapping[str, float]) -> tuple[str, float]:
    if isinstance(value, Mapping):
        return next(iter(value.items()))
    return "rank", value


@register(family="lowrank", handler=lambda model, config, ctx: apply_svd_factorization(model, config, ctx))
@dataclasses.dataclass(frozen=True, kw_only=True)
class SvdFactorization(Config):
    """Truncated-SVD factorization of Linear and Conv2d layers.

    Give at most one of:
      rank: the same rank for every layer (an error where it exceeds min(m, n));
      energy: keep the smallest rank holding this fraction of sum(s_i^2), in (0, 1];
      ratio: keep this fraction of each layer's weight parameters, in (0, 1);
      budget_params / budget_macs: a whole-model budget (int: absolute; float: fraction of the
        model's total) under which all ranks are chosen jointly by `solver`, scoring each rank
        by `score` ("spectral": relative discarded energy; "loss": measured drop of
        `evaluate(model)` when that layer alone is truncated, at `loss_points` ranks).
      budget_latency: a fraction of the model's time, measured on this machine at the batch of
        `example=` (pass your deployment batch): every layer is timed dense and at a grid of
        ranks, the ranks are chosen under the summed times, and the factorized model is timed
        against the original; if it misses, the budget is tightened by the shortfall and
        solved again (`latency_retries` times). Combines with budget_params/budget_macs: all
        given budgets hold (greedy solver).
    With none of them, energy=0.95.

    recalibrate_bn: with calibration= data, re-estimate BatchNorm statistics after factorizing
      (from `calibration_batches` batches), which recovers much of the accuracy before fine-tuning.

    per_layer: {"pattern": 16} or {"pattern": {"energy": 0.9}}; pinned layers keep that choice.
    mode: how a conv is matricized: "channel" (kxk conv to r channels, then 1x1) or "spatial"
      (k x 1 conv to r channels, then 1 x k).
    A layer is replaced only where the factor pair has fewer parameters than its weight; the
    rest stay as they are. Depthwise/grouped convs are skipped (nothing to factor).
    """

    rank: int | None = None
    energy: float | None = None
    ratio: float | None = None
    per_layer: PerLayer | None = None
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    budget_params: int | float | None = None
    budget_macs: int | float | None = None
    budget_latency: float | None = None
    mode: Literal["channel", "spatial"] = "channel"
    solver: Literal["greedy", "lagrangian"] = "greedy"
    score: Literal["spectral", "loss"] = "spectral"
    loss_points: int = 8
    latency_rounds: int = 10
    latency_retries: int = 2
    recalibrate_bn: bool = True
    calibration_batches: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        given = {k: getattr(self, k) for k in _KINDS if getattr(self, k) is not None}
        budgets = {k: getattr(self, k) for k in _BUDGETS if getattr(self, k) is not None}
        check(len(given) <= 1, "give one of rank=, energy=, ratio=, got " + " and ".join(f"{k}={v!r}" for k, v in given.items()))
        check(self.solver == "greedy" or len(budgets) <= 1,
              f"solver='lagrangian' takes one budget, got {', '.join(budgets)}; use solver='greedy' for several")
        check(not (given and budgets),
              f"give either a per-layer rule ({', '.join(f'{k}={v!r}' for k, v in given.items())}) or a budget "
              f"({', '.join(f'{k}={v!r}' for k, v in budgets.items())}), not both; per_layer= pins single layers "
              "under a budget")
        for k, v in given.items():
            _check_kind(k, v, "")
        for k, v in budgets.items():
            _check_budget(k, v)
        check_choice("mode", self.mode, ("channel", "spatial"))
        check_choice("solver", self.solver, ("greedy", "lagrangian"))
        check_choice("score", self.score, ("spectral", "loss"))
        check(self.score == "spectral" or bool(budgets),
              "score='loss' ranks layers against each other and needs budget_params=, budget_macs= or "
              "budget_latency=")
        check(self.loss_points >= 2, f"loss_points must be >= 2, got {self.loss_points}")
        check(self.latency_rounds >= 1, f"latency_rounds must be >= 1, got {self.latency_rounds}")
        check(self.latency_retries >= 0, f"latency_retries must be >= 0, got {self.latency_retries}")
        check(self.calibration_batches >= 1, f"calibration_batches must be >= 1, got {self.calibration_batches}")
        for pattern, value in (self.per_layer or {}).items():
            if isinstance(value, Mapping):
                check(len(value) == 1 and next(iter(value)) in _KINDS,
                      f"per_layer[{pattern!r}] must be a rank (int) or one of {{'rank': r}}, {{'energy': e}}, "
                      f"{{'ratio': q}}, got {value!r}")
            kind, v = _per_layer_spec(value)
            _check_kind(kind, v, f"per_layer[{pattern!r}] ")
        if not given and not budgets:
            object.__setattr__(self, "energy", 0.95)

    @classmethod
    def example(cls) -> SvdFactorization:
        """A typical instance that factorizes every eligible layer even of an untrained model
        (whose flat spectra make energy=0.95 keep nearly full rank, i.e. change nothing)."""
        return cls(budget_params=0.5)

    @property
    def budgets(self) -> list[tuple[str, int | float]]:
        """(kind, value) of every budget given: kind is "params", "macs" or "latency"."""
        return [(k.removeprefix("budget_"), getattr(self, k)) for k in _BUDGETS if getattr(self, k) is not None]


# ---------------------------------------------------------------------------------------------
# Rank rules


def _fixed_rank(kind: str, value: float, sp: LayerSpectrum) -> int | None:
    """The rank a per-layer rule gives, or None where the factor pair would not save."""
    module = sp.module
    if kind == "rank":
        r = int(value)
        if r > sp.max_rank:
            rows, cols = sp.u.shape[0], sp.vh.shape[1]
            raise ConfigError(
                f"rank {r} for layer {sp.name!r} is larger than min(m, n) = {sp.max_rank} (its weight matrix is "
                f"{rows} x {cols}); use rank <= {sp.max_rank}, pin the layer with per_layer=, or "
                f"ignore=[{sp.name!r}]"
            )
    elif kind == "energy":
        e = sp.s.double() ** 2
        cum = torch.cumsum(e, 0) / e.sum().clamp_min(1e-300)
        # tolerance so energy=1.0 gives full rank despite rounding in the cumulative sum
        r = int(torch.searchsorted(cum, torch.tensor(value - 1e-12, dtype=cum.dtype)).item()) + 1
        r = min(r, sp.max_rank)
    else:
        r = max(1, math.floor(value * dense_params(module) / factor_params_per_rank(module, sp.mode)))
    return r if r <= max_saving_rank(module, sp.mode) else None


def _example(model: nn.Module, ctx: Context) -> Any:
    if ctx.example is not None:
        return ctx.example
    from torchshrink.models import example_input

    if getattr(model, "input_shape", None) is None:
        raise ConfigError(
            f"budget_macs and budget_latency need an example input to count multiply-adds in {type(model).__name__}; "
            "pass example= to ts.factorize"
        )
    return example_input(model, 1)


def _measured_points(model: nn.Module, sp: LayerSpectrum, ranks: list[int], base: float,
                     evaluate: Any) -> dict[int, float]:
    """Metric drop when only this layer is truncated to each rank (the layer is put back)."""
    out: dict[int, float] = {}
    for r in ranks:
        set_module(model, sp.name, factorize_layer(sp, r))
        try:
            out[r] = base - float(evaluate(model))
        finally:
            set_module(model, sp.name, sp.module)
    return out


@dataclasses.dataclass
class _Problem:
    """The joint rank choice: one candidate per free layer, costs in each budgeted quantity."""

    kinds: list[str]
    cands: list[Candidate]
    fixed: np.ndarray
    budget: np.ndarray


_UNITS = {"params": "parameters", "macs": "multiply-adds per sample"}


def _limits(spectra: list[LayerSpectrum], linear: dict[str, tuple[dict[str, float], dict[str, float]]]) -> dict[str, int]:
    """Per layer, the largest rank worth considering: it must save parameters and, for each
    budgeted linear quantity, cost less than the dense layer."""
    out = {}
    for sp in spectra:
        big = min(max_saving_rank(sp.module, sp.mode), sp.max_rank)
        for dense, per_rank in linear.values():
            big = min(big, max(0, math.ceil(dense[sp.name] / per_rank[sp.name]) - 1))
        out[sp.name] = big
    return out


def _linear_costs(model: nn.Module, kind: str, spectra: list[LayerSpectrum], example: Any
                  ) -> tuple[float, dict[str, float], dict[str, float]]:
    """(model total, dense cost per layer, cost per unit of rank per layer) in params or MACs."""
    if kind == "params":
        return (float(count_params(model)), {sp.name: float(dense_params(sp.module)) for sp in spectra},
                {sp.name: float(factor_params_per_rank(sp.module, sp.mode)) for sp in spectra})
    shapes = record_shapes(model, example, LAYER_TYPES)
    all_mods = dict(model.named_modules())
    total = float(sum(dense_macs(all_mods[n], sh) for n, sh in shapes.items()))
    return (total, {sp.name: float(dense_macs(sp.module, shapes[sp.name])) for sp in spectra},
            {sp.name: float(macs_per_rank(sp.module, shapes[sp.name], sp.mode)) for sp in spectra})


def _unreachable(kind: str, value: float, budget: float, smallest: float, total: float) -> ConfigError:
    unit = _UNITS[kind]
    shown = f"budget_{kind}={value!r}" + (f" ({budget:,.0f} {unit})" if isinstance(value, float) else "")
    return ConfigError(
        f"{shown} cannot be met: the smallest reachable size is {smallest:,.0f} {unit} (every factorizable layer "
        f"at rank 1; the model has {total:,.0f}). Raise the budget to at least {smallest:,.0f}"
        + (f" ({smallest / total:.4f} of the model)" if total else "")
        + ", or leave fewer layers out with ignore=/targets="
    )


def _budget_problem(model: nn.Module, config: SvdFactorization, ctx: Context, spectra: list[LayerSpectrum],
                    pinned: dict[str, int | None]) -> _Problem:
    budgets = config.budgets
    example = _example(model, ctx) if any(k != "params" for k, _ in budgets) else None
    linear = {k: _linear_costs(model, k, spectra, example) for k, _ in budgets if k != "latency"}
    limits = _limits(spectra, {k: (d, p) for k, (_, d, p) in linear.items()})
    for name, r in pinned.items():
        if r is not None:
            limits[name] = max(limits[name], r)
    tables = None
    if any(k == "latency" for k, _ in budgets):
        was = model.training
        model.eval()
        bar = progress_bar(len(spectra), "layer latency", ctx.progress)
        try:
            tables = measure_tables(model, spectra, limits, example, rounds=config.latency_rounds, progress=bar)
        finally:
            model.train(was)
            if bar is not None:
                bar.close()

    free = [sp for sp in spectra if sp.name not in pinned]
    rows: dict[str, np.ndarray] = {sp.name: np.zeros((len(budgets), limits[sp.name] + 1)) for sp in free}
    fixed = np.zeros(len(budgets))
    budget = np.zeros(len(budgets))
    for k, (kind, value) in enumerate(budgets):
        if kind == "latency":
            assert tables is not None
            cost = {sp.name: tables.rank_ms[sp.name] for sp in spectra}
            total = tables.fixed_ms + sum(float(t[0]) for t in cost.values())
            fixed[k] = tables.fixed_ms
        else:
            total, dense, per_rank = linear[kind]
            cost = {}
            for sp in spectra:
                c = np.arange(limits[sp.name] + 1, dtype=np.float64) * per_rank[sp.name]
                c[0] = dense[sp.name]
                cost[sp.name] = c
            fixed[k] = total - sum(dense.values())
        for sp in spectra:
            if sp.name in pinned:
                r = pinned[sp.name]
                fixed[k] += float(cost[sp.name][0 if r is None else r])
            else:
                rows[sp.name][k] = cost[sp.name][: limits[sp.name] + 1]
        budget[k] = float(value) * total if isinstance(value, float) else float(value)
        smallest = fixed[k] + sum(float(rows[sp.name][k].min()) for sp in free)
        # The summed layer times only estimate the model's; a latency budget below their floor
        # is tried at the floor and judged by the whole model's measured time (_meet_latency).
        if kind != "latency" and budget[k] < smallest * (1 - 1e-12):
            raise _unreachable(kind, value, budget[k], smallest, total)

    if config.score == "loss":
        if ctx.evaluate is None:
            raise ConfigError("score='loss' measures each layer with evaluate(model) -> float (higher is better); "
                              "pass evaluate= to ts.factorize")
        base = float(ctx.evaluate(model))
        bar = progress_bar(len(free), "rank scores", ctx.progress)
        losses = {}
        for sp in free:
            spec = spectral_loss(sp.s.numpy(), limits[sp.name])
            pts = _measured_points(model, sp, measured_loss_points(limits[sp.name], config.loss_points), base,
                                   ctx.evaluate) if limits[sp.name] >= 1 else {0: 0.0}
            pts.setdefault(0, max(pts.values()))
            losses[sp.name] = interpolate_loss(pts, limits[sp.name], tiebreak=spec)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    else:
        losses = {sp.name: spectral_loss(sp.s.numpy(), limits[sp.name]) for sp in free}
    cands = [Candidate(sp.name, rows[sp.name], losses[sp.name]) for sp in free]
    return _Problem([k for k, _ in budgets], cands, fixed, budget)


def _solve(problem: _Problem, config: SvdFactorization, pinned: dict[str, int | None]) -> dict[str, int | None]:
    solver: Solver = config.solver
    sel = select_ranks(problem.cands, fixed=problem.fixed, budget=problem.budget, solver=solver)
    return {**pinned, **sel.ranks}


def _meet_latency(model: nn.Module, config: SvdFactorization, ctx: Context, spectra: list[LayerSpectrum],
                  problem: _Problem, pinned: dict[str, int | None]) -> dict[str, int | None]:
    """Solve under the summed per-layer times, then time the whole factorized model against the
    original. Layers timed alone misjudge the model (caches, allocator, the BatchNorms after
    them), so the latency budget is rescaled by target / measured and solved again, up to
    `latency_retries` times. Of the choices measured within the target the one with the most
    budget (least loss) is kept; where none is, the fastest, with a warning, or an error when
    even every layer at its fastest option misses."""
    k = problem.kinds.index("latency")
    target = float(config.budget_latency)  # type: ignore[arg-type]
    example = _example(model, ctx)
    mods = {sp.name: sp for sp in spectra}
    floor = float(min_total(problem.cands, problem.fixed)[k])
    problem.budget[k] = max(problem.budget[k], floor)
    tried: list[tuple[float, float, dict[str, int | None]]] = []  # (measured ratio, budget, ranks)
    was = model.training
    model.eval()
    try:
        for _ in range(config.latency_retries + 1):
            ranks = _solve(problem, config, pinned)
            if tried and ranks == tried[-1][2]:
                # another budget (or the floor) pins the choice; timing it again adds nothing
                tried.append((tried[-1][0], float(problem.budget[k]), ranks))
                break
            swaps = {n: (mods[n].module, factorize_layer(mods[n], r).eval()) for n, r in ranks.items() if r is not None}
            ratio = model_time_ratio(model, swaps, example, rounds=config.latency_rounds) if swaps else 1.0
            for n, (old, _) in swaps.items():
                set_module(model, n, old)
            tried.append((ratio, float(problem.budget[k]), ranks))
            if 0.95 * target <= ratio <= _TOL * target:
                break
            problem.budget[k] = max(floor, problem.budget[k] * target / ratio)
    finally:
        model.train(was)
    met = [t for t in tried if t[0] <= _TOL * target]
    if met:
        return max(met, key=lambda t: t[1])[2]
    ratio, budget, ranks = min(tried, key=lambda t: (t[0], t[1]))
    if min(t[1] for t in tried) <= floor * (1 + 1e-9):
        raise ConfigError(
            f"budget_latency={target} cannot be met on this machine: the smallest reachable time, every "
            f"factorizable layer at its fastest measured option, is {ratio:.3f} of the model's (measured at the "
            f"example batch of {_batch_of(example)}). Raise budget_latency to at least {ratio:.2f}, or leave fewer "
            "layers out with ignore=/targets="
        )
    warnings.warn(f"budget_latency={target}: the fastest choice measured runs at {ratio:.3f} of the original "
                  f"model's time after {len(tried)} tries; raise latency_retries, or measure on a quieter machine",
                  stacklevel=4)
    return ranks


_TOL = 1.02  # a measured ratio this close to the target counts as met: timing noise on a shared machine


def _batch_of(example: Any) -> int | str:
    x = example[0] if isinstance(example, tuple) else example
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else "?"


# ---------------------------------------------------------------------------------------------
# Handler


def _candidates(model: nn.Module, config: SvdFactorization) -> list[tuple[str, nn.Module]]:
    layers = select_layers(model, types=LAYER_TYPES, targets=config.targets, ignore=config.ignore)
    check_per_layer_patterns(model, config.per_layer, types=LAYER_TYPES)
    # Factors of an earlier factorization are not factored again: it cannot save.
    pairs = [n for n, m in model.named_modules() if isinstance(m, (FactorizedLinear, FactorizedConv2d))]
    out = []
    for name, m in layers:
        if any(name.startswith(p + ".") for p in pairs if p):
            continue
        why = supports(m)
        if why is not None:
            if config.per_layer and resolve_per_layer(name, config.per_layer, None) is not None:
                raise UnsupportedModelError(f"per_layer names layer {name!r}, which cannot be factorized: {why}")
            continue
        out.append((name, m))
    return out


def apply_svd_factorization(model: nn.Module, config: SvdFactorization, ctx: Context) -> nn.Module:
    layers = _candidates(model, config)
    spectra = [spectrum(name, m, config.mode) for name, m in layers]
    ranks: dict[str, int | None] = {}
    for sp in spectra:
        pin = resolve_per_layer(sp.name, config.per_layer, None)
        if pin is not None:
            kind, value = _per_layer_spec(pin)
            ranks[sp.name] = _fixed_rank(kind, value, sp)
    if config.budgets:
        problem = _budget_problem(model, config, ctx, spectra, ranks)
        pinned = dict(ranks)
        ranks = (_meet_latency(model, config, ctx, spectra, problem, pinned) if "latency" in problem.kinds
                 else _solve(problem, config, pinned))
    else:
        kind = next(k for k in _KINDS if getattr(config, k) is not None)
        for sp in spectra:
            if sp.name not in ranks:
                ranks[sp.name] = _fixed_rank(kind, getattr(config, kind), sp)
    for sp in spectra:
        r = ranks.get(sp.name)
        if r is not None:
            set_module(model, sp.name, factorize_layer(sp, r))
    if config.recalibrate_bn and ctx.calibration is not None and any(r is not None for r in ranks.values()):
        recalibrate_batchnorm(model, ctx.calibration, limit=config.calibration_batches)
    return model


def chosen_ranks(model: nn.Module) -> dict[str, int]:
    """The rank of every factor pair in `model`, by module name."""
    return {n: m.rank for n, m in model.named_modules() if isinstance(m, (FactorizedLinear, FactorizedConv2d))}

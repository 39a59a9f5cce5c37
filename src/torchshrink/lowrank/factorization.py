"""`SvdFactorization`: replace Linear and Conv2d layers by truncated-SVD factor pairs.

Ranks come from one of: a fixed `rank`, a kept spectral `energy`, a kept parameter `ratio`
(per layer), or a whole-model `budget_params` / `budget_macs` under which all ranks are chosen
jointly (see `rank.py`). `per_layer` pins individual layers and wins over everything else.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from torchshrink.config import Config, check, check_choice, check_range
from torchshrink.errors import ConfigError, UnsupportedModelError
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
    ConvMode,
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
from torchshrink.nn import check_per_layer_patterns, resolve_per_layer, select_layers, set_module
from torchshrink.registry import Context, register

__all__ = ["SvdFactorization", "apply_svd_factorization", "chosen_ranks", "layer_macs", "count_params"]

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
_KINDS = ("rank", "energy", "ratio")
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
    With none of them, energy=0.95.

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
    mode: Literal["channel", "spatial"] = "channel"
    solver: Literal["greedy", "lagrangian"] = "greedy"
    score: Literal["spectral", "loss"] = "spectral"
    loss_points: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        given = {k: getattr(self, k) for k in _KINDS if getattr(self, k) is not None}
        budgets = {k: getattr(self, k) for k in ("budget_params", "budget_macs") if getattr(self, k) is not None}
        check(len(given) <= 1, "give one of rank=, energy=, ratio=, got " + " and ".join(f"{k}={v!r}" for k, v in given.items()))
        check(len(budgets) <= 1, "give one of budget_params= or budget_macs=, got both")
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
              "score='loss' ranks layers against each other and needs budget_params= or budget_macs=")
        check(self.loss_points >= 2, f"loss_points must be >= 2, got {self.loss_points}")
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
    def budget(self) -> tuple[Literal["params", "macs"], int | float] | None:
        if self.budget_params is not None:
            return "params", self.budget_params
        if self.budget_macs is not None:
            return "macs", self.budget_macs
        return None


# ---------------------------------------------------------------------------------------------
# Counting


def count_params(model: nn.Module) -> int:
    """Parameters of the model, each shared tensor once (parametrized weights count their
    stored original, as the optimizer sees them)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


@dataclasses.dataclass
class _Shapes:
    inp: tuple[int, ...]
    out: tuple[int, ...]


def _record_shapes(model: nn.Module, example: Any, names: set[str] | None = None) -> dict[str, _Shapes]:
    shapes: dict[str, _Shapes] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, LAYER_TYPES) and (names is None or name in names):
            def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor, name: str = name) -> None:
                shapes[name] = _Shapes(tuple(args[0].shape), tuple(out.shape))
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example) if isinstance(example, tuple) else model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def _dense_macs(m: nn.Module, sh: _Shapes) -> int:
    """Multiply-adds of one Linear/Conv2d per sample (batch dimension divided out)."""
    batch = sh.out[0] if len(sh.out) > 1 else 1
    if isinstance(m, nn.Linear):
        return math.prod(sh.out) // batch * m.in_features
    assert isinstance(m, nn.Conv2d)
    cin_g = m.in_channels // m.groups
    return math.prod(sh.out) // batch * cin_g * m.kernel_size[0] * m.kernel_size[1]


def layer_macs(model: nn.Module, example: Any) -> dict[str, int]:
    """Per-sample multiply-adds of every Linear and Conv2d in `model` (factor pairs count as
    their two children), measured with forward hooks on `example`."""
    shapes = _record_shapes(model, example)
    mods = dict(model.named_modules())
    return {n: _dense_macs(mods[n], sh) for n, sh in shapes.items()}


def _macs_per_rank(m: nn.Module, sh: _Shapes, mode: ConvMode) -> int:
    batch = sh.out[0] if len(sh.out) > 1 else 1
    if isinstance(m, nn.Linear):
        positions = math.prod(sh.out) // batch // m.out_features
        return positions * (m.in_features + m.out_features)
    assert isinstance(m, nn.Conv2d)
    hw_out = sh.out[-2] * sh.out[-1]
    kh, kw = m.kernel_size
    if mode == "channel":
        return hw_out * (m.in_channels * kh * kw + m.out_channels)
    # first conv (kh x 1) runs at output height and input width; second (1 x kw) at output size
    return sh.out[-2] * sh.inp[-1] * m.in_channels * kh + hw_out * m.out_channels * kw


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
            f"budget_macs needs an example input to count multiply-adds in {type(model).__name__}; "
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


def _budget_ranks(model: nn.Module, config: SvdFactorization, ctx: Context, spectra: list[LayerSpectrum],
                  pinned: dict[str, int | None]) -> dict[str, int | None]:
    kind, value = config.budget  # type: ignore[misc]
    mods = {sp.name: sp.module for sp in spectra}
    if kind == "params":
        total = float(count_params(model))
        dense = {n: float(dense_params(m)) for n, m in mods.items()}
        per_rank = {sp.name: float(factor_params_per_rank(sp.module, sp.mode)) for sp in spectra}
        unit = "parameters"
    else:
        example = _example(model, ctx)
        shapes = _record_shapes(model, example)
        all_mods = dict(model.named_modules())
        total = float(sum(_dense_macs(all_mods[n], sh) for n, sh in shapes.items()))
        dense = {n: float(_dense_macs(m, shapes[n])) for n, m in mods.items()}
        per_rank = {sp.name: float(_macs_per_rank(sp.module, shapes[sp.name], sp.mode)) for sp in spectra}
        unit = "multiply-adds per sample"
    budget = float(value) * total if isinstance(value, float) else float(value)

    cands: list[Candidate] = []
    fixed = total - sum(dense.values())
    free = [sp for sp in spectra if sp.name not in pinned]
    for sp in spectra:
        if sp.name in pinned:
            r = pinned[sp.name]
            fixed += dense[sp.name] if r is None else r * per_rank[sp.name]
    limits: dict[str, int] = {}
    for sp in free:
        big = max_saving_rank(sp.module, sp.mode)
        big = min(big, sp.max_rank, max(0, math.ceil(dense[sp.name] / per_rank[sp.name]) - 1))
        limits[sp.name] = big
    smallest = min_total([Candidate(sp.name, dense[sp.name], per_rank[sp.name], np.zeros(limits[sp.name] + 1))
                          for sp in free], fixed)
    if budget < smallest:
        shown = f"budget_{kind}={value!r}" + (f" ({budget:,.0f} {unit})" if isinstance(value, float) else "")
        raise ConfigError(
            f"{shown} cannot be met: the smallest reachable size is {smallest:,.0f} {unit} "
            f"(every factorizable layer at rank 1; the model has {total:,.0f}). Raise the budget to at least "
            f"{smallest:,.0f}" + (f" ({smallest / total:.4f} of the model)" if total else "")
            + ", or leave fewer layers out with ignore=/targets="
        )

    if config.score == "loss":
        if ctx.evaluate is None:
            raise ConfigError("score='loss' measures each layer with evaluate(model) -> float (higher is better); "
                              "pass evaluate= to ts.factorize")
        base = float(ctx.evaluate(model))
        bar = _bar(len(free), ctx.progress)
        for sp in free:
            spec = spectral_loss(sp.s.numpy(), limits[sp.name])
            pts = _measured_points(model, sp, measured_loss_points(limits[sp.name], config.loss_points), base,
                                   ctx.evaluate) if limits[sp.name] >= 1 else {0: 0.0}
            pts.setdefault(0, max(pts.values()))
            cands.append(Candidate(sp.name, dense[sp.name], per_rank[sp.name],
                                   interpolate_loss(pts, limits[sp.name], tiebreak=spec)))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    else:
        for sp in free:
            cands.append(Candidate(sp.name, dense[sp.name], per_rank[sp.name],
                                   spectral_loss(sp.s.numpy(), limits[sp.name])))
    solver: Solver = config.solver
    sel = select_ranks(cands, fixed=fixed, budget=budget, solver=solver)
    return {**pinned, **sel.ranks}


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="rank scores", leave=False, dynamic_ncols=True)


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
    if config.budget is not None:
        ranks = _budget_ranks(model, config, ctx, spectra, ranks)
    else:
        kind = next(k for k in _KINDS if getattr(config, k) is not None)
        for sp in spectra:
            if sp.name not in ranks:
                ranks[sp.name] = _fixed_rank(kind, getattr(config, kind), sp)
    for sp in spectra:
        r = ranks.get(sp.name)
        if r is not None:
            set_module(model, sp.name, factorize_layer(sp, r))
    return model


def chosen_ranks(model: nn.Module) -> dict[str, int]:
    """The rank of every factor pair in `model`, by module name."""
    return {n: m.rank for n, m in model.named_modules() if isinstance(m, (FactorizedLinear, FactorizedConv2d))}

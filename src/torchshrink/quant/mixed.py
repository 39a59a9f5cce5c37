"""`MixedPrecision(budget_bits=4.5, candidates=(2, 3, 4, 8))`: per-layer bit widths under a
budget, from measured sensitivity.

Sensitivity of layer l at b bits is either
- `loss`: the loss increase when only layer l is quantized to b bits (the others float), or
- `hessian`: HAWQ-v2's estimate tr(H_l) / n_l * ||Q_b(w_l) - w_l||^2, with the Hessian trace
  from Hutchinson's method (E[v^T H v] over Rademacher v, Hessian-vector products by double
  back-propagation).
Both are computed and kept in the plan; `sensitivity=` picks the one that decides.

Selection is a greedy descent of a multiple-choice knapsack: start every layer at the widest
candidate, then repeatedly lower the layer whose next step down costs the least sensitivity
per bit saved, until the average bits per weight (or the total bytes) fits the budget.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from torchshrink.batches import call_model, logits_of, unwrap_batch
from torchshrink.config import Config, check, check_range
from torchshrink.errors import ConfigError
from torchshrink.nn import params, select_layers, set_module
from torchshrink.quant.fake import FakeQuant, check_bits, check_group, shares_values
from torchshrink.quant.layers import in_width, layer_op, weight_tensor
from torchshrink.quant.weight_only import quantize_layer_weight_only
from torchshrink.registry import Context, register
from torchshrink.train import classification_loss

__all__ = ["MixedPrecision", "PLAN_ATTR", "hutchinson_trace"]

PLAN_ATTR = "torchshrink_bit_plan"


def _loss_fn(model: nn.Module, batches: list[Any]) -> Callable[[], torch.Tensor]:
    """Mean task loss over the batches: cross-entropy when labeled, else the squared distance
    to the float model's outputs (captured now)."""
    labeled = all(unwrap_batch(b)[1] is not None for b in batches)
    refs: list[torch.Tensor] = []
    if not labeled:
        with torch.no_grad():
            refs = [logits_of(call_model(model, b)).detach() for b in batches]

    def loss() -> torch.Tensor:
        total = torch.zeros(())
        for i, b in enumerate(batches):
            _, y = unwrap_batch(b)
            out = logits_of(call_model(model, b))
            total = total + (classification_loss(out, y) if labeled and y is not None else F.mse_loss(out, refs[i]))
        return total / len(batches)

    return loss


def hutchinson_trace(loss: torch.Tensor, weights: list[torch.Tensor], samples: int, seed: int = 0
                     ) -> list[float]:
    """tr(H) of `loss` w.r.t. each tensor in `weights` (its own diagonal block)."""
    g = torch.Generator().manual_seed(seed)
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    traces = [0.0] * len(weights)
    for _ in range(samples):
        vs = [torch.randint(0, 2, w.shape, generator=g).float() * 2 - 1 for w in weights]
        hvs = torch.autograd.grad(grads, weights, grad_outputs=vs, retain_graph=True)
        for i, (hv, v) in enumerate(zip(hvs, vs)):
            traces[i] += float((hv * v).sum()) / samples
    return traces


def _cost_bits(n: int, groups: int, bits: int, per: Literal["bits", "bytes"]) -> float:
    if per == "bits":
        return float(n * bits)
    return math.ceil(n * bits / 8) + 4 * groups  # packed codes + one float32 scale per group


def apply_mixed(model: nn.Module, config: MixedPrecision, ctx: Context) -> nn.Module:
    data = ctx.calibration if ctx.calibration is not None else ctx.train
    if data is None:
        raise ConfigError("MixedPrecision measures per-layer sensitivity and needs data: "
                          "ts.quantize(model, ts.MixedPrecision(...), calibration=loader)")
    batches = [b for _, b in zip(range(config.calibration_batches), data)]
    if not batches:
        raise ConfigError("MixedPrecision got an empty calibration loader")
    layers = select_layers(model, targets=config.targets, ignore=config.ignore)
    for name, m in layers:
        if config.group_size is not None and not shares_values(params.chain(m)):
            check_group(name, in_width(layer_op(name, m)), config.group_size)
    cands = sorted(set(config.candidates))
    per: Literal["bits", "bytes"] = "bytes" if config.budget_bytes is not None else "bits"
    sizes: dict[str, tuple[int, int]] = {}
    for name, m in layers:
        w = weight_tensor(m)
        sizes[name] = (w.numel(), int(w.shape[0]) if not config.group_size else w.numel() // config.group_size)
    total_n = sum(n for n, _ in sizes.values())
    budget = float(config.budget_bytes) if config.budget_bytes is not None else \
        float(config.budget_bits or 0) * total_n

    def cost(choice: dict[str, int]) -> float:
        return float(sum(_cost_bits(*sizes[n], choice[n], per) for n in choice))

    choice = {name: cands[-1] for name, _ in layers}
    floor = {name: cands[0] for name, _ in layers}
    if cost(floor) > budget + 1e-9:
        given = f"budget_bytes={config.budget_bytes}" if per == "bytes" else f"budget_bits={config.budget_bits}"
        raise ConfigError(
            f"{given} is below what the narrowest candidate ({cands[0]} bits) reaches "
            f"({cost(floor):.0f} {per}); raise the budget or add a smaller candidate"
        )
    was_training = model.training
    model.eval()
    loss = _loss_fn(model, batches)
    with torch.no_grad():
        base = float(loss())
    granularity: Literal["group", "channel", "tensor"] = "group" if config.group_size else "channel"
    delta: dict[str, dict[int, float]] = {}
    err: dict[str, dict[int, float]] = {}
    for name, m in layers:
        delta[name], err[name] = {}, {}
        g, gs = (("tensor", None) if shares_values(params.chain(m)) else (granularity, config.group_size))
        for b in cands:
            with torch.no_grad():
                w = weight_tensor(m).detach()
                # The grid is fixed from w once (lsq=True holds it as a tensor), so the loss
                # passes below do not repeat the clipping search on every forward.
                fq = FakeQuant(tuple(w.shape), bits=b, symmetric=config.symmetric, granularity=g,
                               group_size=gs, method=config.clip, lsq=True, init=w)
                err[name][b] = float((fq(w) - w).pow(2).sum())
                params.add(m, fq)
                delta[name][b] = float(loss()) - base
                params.remove(m, FakeQuant)
    # Hessian traces (HAWQ-v2), one block per layer, w.r.t. the trainable tensors.
    weights = [params.original(m) for _, m in layers]
    # Hessian-vector products differentiate twice; the fused CPU attention kernels have no
    # double backward, the math kernel does (same function, so the traces are unchanged).
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        traces = hutchinson_trace(loss(), weights, config.hutchinson_samples)
    model.train(was_training)
    sens: dict[str, dict[int, float]] = {}
    for (name, m), tr in zip(layers, traces):
        n = weight_tensor(m).numel()
        if config.sensitivity == "hessian":
            raw = {b: max(tr, 0.0) / n * err[name][b] for b in cands}
        else:
            # Loss deltas are noisy near zero: keep them non-negative and break ties by the
            # weight error so a wider grid never looks worse than a narrower one.
            raw = {b: max(delta[name][b], 0.0) + 1e-12 * err[name][b] for b in cands}
        running = 0.0
        for b in reversed(cands):  # enforce: fewer bits is never less sensitive
            running = max(running, raw[b])
            raw[b] = running
        sens[name] = raw
    while cost(choice) > budget + 1e-9:
        best: tuple[float, str, int] | None = None
        for name in choice:
            i = cands.index(choice[name])
            if i == 0:
                continue
            lower = cands[i - 1]
            saved = _cost_bits(*sizes[name], choice[name], per) - _cost_bits(*sizes[name], lower, per)
            ratio = (sens[name][lower] - sens[name][choice[name]]) / max(saved, 1e-12)
            if best is None or ratio < best[0]:
                best = (ratio, name, lower)
        assert best is not None  # the floor fits, so some layer can still step down
        choice[best[1]] = best[2]
    for name, m in layers:
        set_module(model, name, quantize_layer_weight_only(
            name, m, bits=choice[name], symmetric=config.symmetric, group_size=config.group_size,
            method=config.clip))
    plan = {
        "bits": choice,
        "average_bits": sum(sizes[n][0] * choice[n] for n in choice) / max(1, total_n),
        "loss_delta": delta,
        "hessian_trace": {name: tr for (name, _), tr in zip(layers, traces)},
        "sensitivity": config.sensitivity,
    }
    object.__setattr__(model, PLAN_ATTR, plan)  # plain attribute: a report, not state
    return model


@register(family="quant", handler=apply_mixed)
@dataclasses.dataclass(frozen=True, kw_only=True)
class MixedPrecision(Config):
    """Weight bit widths per layer under a budget: `budget_bits` (average bits per weight) or
    `budget_bytes` (packed codes plus scales; takes precedence when set). The chosen layers are bit-packed
    (`WeightOnlyLayer`); the plan is left on the model as `model.torchshrink_bit_plan`."""

    budget_bits: float | None = 4.5
    budget_bytes: int | None = None
    candidates: tuple[int, ...] = (2, 3, 4, 8)
    sensitivity: Literal["loss", "hessian"] = "loss"
    group_size: int | None = None
    symmetric: bool = True
    clip: Literal["minmax", "mse"] = "mse"
    hutchinson_samples: int = 8
    calibration_batches: int = 4
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.candidates) > 0, "candidates must list at least one bit width, e.g. (2, 3, 4, 8)")
        for b in self.candidates:
            check_bits("candidates", b, 2, 8)
        check(self.budget_bits is not None or self.budget_bytes is not None,
              "give budget_bits (average bits per weight) or budget_bytes")
        check_range("budget_bits", self.budget_bits, 1, 16)
        check(self.budget_bytes is None or self.budget_bytes > 0,
              f"budget_bytes must be positive, got {self.budget_bytes}")
        check(self.hutchinson_samples >= 1, f"hutchinson_samples must be >= 1, got {self.hutchinson_samples}")
        check(self.calibration_batches >= 1, f"calibration_batches must be >= 1, got {self.calibration_batches}")

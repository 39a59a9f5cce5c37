"""`MagnitudePruning`: unstructured pruning to an exact sparsity, per layer or global.

The name follows the default criterion (weight magnitude, Han et al. 2015); every criterion of
`prune.criteria` can rank the weights instead (`criterion="taylor"`, `"wanda"`, `"obs"`, ...).
Pruned entries are held at zero by a `PruningMask` parametrization, so the model stays an
ordinary module that any training loop can fine-tune.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from torchshrink.config import Config, check, check_choice, check_range
from torchshrink.errors import ConfigError
from torchshrink.nn import check_per_layer_patterns, resolve_per_layer, select_layers
from torchshrink.nn.calib import InputStats, Propagate, calibrate_sequentially
from torchshrink.nn.select import expand
from torchshrink.prune.criteria import (
    CRITERIA,
    INPUT_CRITERIA,
    ROW_CRITERIA,
    Criterion,
    require_data,
    row_wise_mask,
    scores_from_stats,
    weight_scores,
)
from torchshrink.prune.mask import mask_of, set_mask, weight_of
from torchshrink.prune.obs import obs_prune
from torchshrink.registry import Context, register

__all__ = ["MagnitudePruning", "prune_unstructured", "lowest_k_mask"]


def lowest_k_mask(scores: torch.Tensor, k: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Bool keep-mask of `scores`' shape with exactly `k` False entries: the lowest scores,
    entries already pruned (`keep` False) first. A stable sort breaks ties by position, so the
    count is exact even when many scores are equal (e.g. many zero weights)."""
    flat = scores.detach().float().reshape(-1).clone()
    if keep is not None:
        flat[~keep.reshape(-1).to(torch.bool)] = -float("inf")
    out = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        out[torch.argsort(flat, stable=True)[:k]] = False
    return out.reshape(scores.shape)


def _check_sparsity(name: str, value: float) -> None:
    check_range(name, value, 0.0, 1.0, high_inclusive=False)


def prune_unstructured(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    *,
    sparsity: float,
    scope: Literal["layer", "global"] = "layer",
    per_layer: Mapping[str, float] | None = None,
    criterion: str = "l1",
    calibration: Iterable[Any] | None = None,
    calibration_batches: int | None = 8,
    blocks: Sequence[str] | None = None,
    propagate: Propagate = "compressed",
) -> dict[str, float]:
    """Mask `layers` so each reaches its sparsity exactly; returns {layer: achieved sparsity}.

    scope="global": layers without a per_layer entry share one threshold and together reach
    `sparsity` (counted over their weights); per_layer entries are always per layer.

    Input-driven criteria per layer (obs = SparseGPT, wanda, activation, apoz) run block by
    block (`nn.calib`): each block is measured on the outputs of the pruned blocks before it.
    """
    require_data(criterion, calibration)
    targets = {n: float(resolve_per_layer(n, per_layer, sparsity, layers)) for n, _ in layers}
    if criterion == "obs" and scope == "global":
        raise ConfigError("criterion 'obs' updates weights layer by layer; use scope='layer' with it")
    if criterion in INPUT_CRITERIA and scope == "layer":
        assert calibration is not None
        _prune_sequential(model, layers, targets, criterion, calibration, calibration_batches, blocks, propagate)
    else:
        scores = weight_scores(model, layers, criterion, calibration, limit=calibration_batches)
        fixed = {n for p in (per_layer or {}) for n in expand(p, layers)}
        pooled = [(n, m) for n, m in layers if scope == "global" and n not in fixed]
        for n, m in layers:
            if n in {p for p, _ in pooled}:
                continue
            k = round(targets[n] * weight_of(m).numel())
            set_mask(m, lowest_k_mask(scores[n], k, mask_of(m)))
        if pooled:
            flat = torch.cat([_with_old(scores[n], m).reshape(-1) for n, m in pooled])
            k = round(sparsity * flat.numel())
            keep = lowest_k_mask(flat, k)
            start = 0
            for _, m in pooled:
                size = weight_of(m).numel()
                set_mask(m, keep[start:start + size].reshape(weight_of(m).shape))
                start += size
    with torch.no_grad():
        return {n: float((weight_of(m) == 0).float().mean()) for n, m in layers}


def _with_old(score: torch.Tensor, module: nn.Module) -> torch.Tensor:
    old = mask_of(module)
    if old is None:
        return score.float()
    return torch.where(old, score.float(), torch.full_like(score.float(), -float("inf")))


def _prune_sequential(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], targets: Mapping[str, float],
                      criterion: str, calibration: Iterable[Any], limit: int | None, blocks: Sequence[str] | None,
                      propagate: Propagate) -> None:
    from torchshrink.nn import params

    by_name = dict(layers)

    def compress(stats: dict[str, InputStats]) -> None:
        for n, s in stats.items():
            m = by_name[n]  # not s.module: layers reading one input share one statistics object
            w = weight_of(m).detach()
            if criterion == "obs":
                assert s.hessian is not None
                new_w, keep = obs_prune(w.reshape(w.shape[0], -1), s.hessian / s.rows, targets[n], keep=mask_of(m))
                with torch.no_grad():
                    params.original(m).copy_(new_w.reshape(w.shape))
                set_mask(m, keep.reshape(w.shape))
            elif criterion in ROW_CRITERIA:
                set_mask(m, row_wise_mask(scores_from_stats(criterion, w.float(), s), targets[n], mask_of(m)))
            else:
                k = round(targets[n] * w.numel())
                set_mask(m, lowest_k_mask(scores_from_stats(criterion, w.float(), s), k, mask_of(m)))

    calibrate_sequentially(model, layers, calibration, compress, limit=limit, hessian=criterion == "obs",
                           blocks=blocks, propagate=propagate)


def _apply(model: nn.Module, config: MagnitudePruning, ctx: Context) -> nn.Module:
    layers = select_layers(model, targets=config.targets, ignore=config.ignore)
    check_per_layer_patterns(model, config.per_layer)
    if not layers:
        raise ConfigError(f"MagnitudePruning found no Linear/Conv layer to prune in {type(model).__name__} "
                          f"(targets={config.targets}, ignore={list(config.ignore)})")
    prune_unstructured(model, layers, sparsity=config.sparsity, scope=config.scope, per_layer=config.per_layer,
                       criterion=config.criterion, calibration=ctx.calibration,
                       calibration_batches=config.calibration_batches, blocks=config.blocks,
                       propagate=config.propagate)
    return model


@register(family="prune", handler=_apply)
@dataclasses.dataclass(frozen=True, kw_only=True)
class MagnitudePruning(Config):
    """Unstructured pruning: zero the least important weights of Linear/Conv layers.

    sparsity: fraction of weights set to zero, in [0, 1).
    scope: "layer" gives every layer the same sparsity; "global" ranks all weights together.
    per_layer: {pattern: sparsity} overrides (e.g. Deep Compression's {"fc1": 0.92, ...}).
    targets / ignore: glob (or `re:`) patterns on layer names.
    criterion: how weights are ranked; see `torchshrink.prune.criteria` ("l1" needs no data).
    calibration_batches: how many calibration batches data-driven criteria read.
    blocks: module names of the model's blocks in forward order, for the input-driven criteria
        (obs, wanda, activation, apoz), which prune block by block; None finds them (Hugging
        Face and torchshrink transformers) or, where none is known, goes group by group.
    propagate: "compressed" feeds each block the outputs of the pruned blocks before it (as
        SparseGPT does); "original" feeds it the unpruned model's activations.
    """

    sparsity: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    per_layer: dict[str, float] = dataclasses.field(default_factory=dict)
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    criterion: Criterion = "l1"
    calibration_batches: int = 8
    blocks: tuple[str, ...] | None = None
    propagate: Literal["compressed", "original"] = "compressed"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_sparsity("sparsity", self.sparsity)
        check_choice("scope", self.scope, ("layer", "global"))
        check_choice("criterion", self.criterion, CRITERIA)
        for pattern, value in self.per_layer.items():
            _check_sparsity(f"per_layer[{pattern!r}]", value)
        check(self.calibration_batches >= 1, f"calibration_batches must be >= 1, got {self.calibration_batches}")
        check_choice("propagate", self.propagate, ("compressed", "original"))

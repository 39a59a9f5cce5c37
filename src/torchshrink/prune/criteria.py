"""Importance criteria behind one interface, for unstructured and structured pruning.

`weight_scores(model, layers, criterion, calibration)` returns, per layer, a tensor of the
weight's shape where larger means more important. Structured pruning reduces these per output
channel (or uses the activation statistics directly, see `prune.graph`).

| criterion  | score of w_ij                                  | data          |
|------------|------------------------------------------------|---------------|
| l1         | abs(w)                                         | none          |
| l2         | w^2                                            | none          |
| activation | abs(w) * mean abs(x_j)   (input activation)     | inputs        |
| wanda      | abs(w) * ||x_j||_2       (Sun et al. 2023)     | inputs        |  per row
| apoz       | abs(w) * P(x_j != 0)     (1 - APoZ of input j) | inputs        |
| taylor     | abs(w * mean g)          first-order Taylor    | inputs+labels |
| fisher     | 0.5 * w^2 * mean(g^2)    OBD, diagonal Fisher  | inputs+labels |
| obs        | w^2 / [H^-1]_jj          OBS, H = X^T X        | inputs        |

Wanda's scores are compared within each output row, as in the paper (every row keeps the same
fraction: the input norms scale whole columns, so comparing across rows would favour rows with
large weights); `row_wise_mask` does that selection. The others rank a layer's weights together.

`obs` also *updates* the surviving weights of a layer (see `prune.obs`); as a score it is the
OBS saliency of removing one weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.batches import call_model, iter_calibration, to_device, unwrap_batch
from torchshrink.errors import ConfigError
from torchshrink.nn.calib import InputStats, input_features
from torchshrink.prune.mask import weight_of
from torchshrink.train import default_loss

__all__ = ["Criterion", "CRITERIA", "DATA_CRITERIA", "LABEL_CRITERIA", "weight_scores", "require_data",
           "input_features", "collect_inputs",
           "scores_from_stats", "INPUT_CRITERIA", "ROW_CRITERIA", "row_wise_mask"]

Criterion = Literal["l1", "l2", "activation", "wanda", "apoz", "taylor", "fisher", "obs"]
CRITERIA: tuple[str, ...] = ("l1", "l2", "activation", "wanda", "apoz", "taylor", "fisher", "obs")
DATA_CRITERIA = frozenset({"activation", "wanda", "apoz", "taylor", "fisher", "obs"})
LABEL_CRITERIA = frozenset({"taylor", "fisher"})
INPUT_CRITERIA = frozenset({"activation", "wanda", "apoz", "obs"})  # from input statistics alone
ROW_CRITERIA = frozenset({"wanda"})  # compared within each output row


def row_wise_mask(scores: torch.Tensor, sparsity: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Bool keep-mask pruning the round(sparsity * width) lowest scores of every output row
    (the 2-D view (rows, width)); entries already pruned (`keep` False) go first and stay pruned.
    Ties break by position (stable sort), so every row loses exactly that many."""
    rows = scores.shape[0]
    s = scores.detach().float().reshape(rows, -1).clone()
    if keep is not None:
        s[~keep.reshape(rows, -1).to(torch.bool)] = -float("inf")
    k = round(sparsity * s.shape[1])
    out = torch.ones_like(s, dtype=torch.bool)
    if k > 0:
        out.scatter_(1, torch.argsort(s, dim=1, stable=True)[:, :k], False)
    if keep is not None:
        out &= keep.reshape(rows, -1).to(torch.bool)
    return out.reshape(scores.shape)


def require_data(criterion: str, calibration: Iterable[Any] | None, *, method: str = "ts.prune") -> None:
    """A clear error when a data-driven criterion gets no calibration data."""
    if criterion in DATA_CRITERIA and calibration is None:
        need = "(input, target) batches" if criterion in LABEL_CRITERIA else "input batches"
        raise ConfigError(
            f"criterion {criterion!r} needs calibration data, but none was given: pass "
            f"calibration=loader to {method}(...) with a few {need}, or use criterion='l1' "
            "(weight magnitude), which needs no data"
        )


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def collect_inputs(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], calibration: Iterable[Any],
                   *, hessian: bool = False, limit: int | None = None) -> dict[str, InputStats]:
    """Run calibration batches and gather per-column input statistics for each layer."""
    stats = {n: InputStats(m, hessian) for n, m in layers}
    handles = [m.register_forward_pre_hook(stats[n]) for n, m in layers]
    dev = _device(model)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in iter_calibration(calibration, limit):
                call_model(model, to_device(batch, dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    empty = [n for n, s in stats.items() if s.rows == 0]
    if empty:
        raise ConfigError(f"calibration data never reached layers {empty}; check the loader is not empty")
    return stats


def labeled_batches(model: nn.Module, calibration: Iterable[Any], limit: int | None,
                    dev: torch.device) -> Iterator[Any]:
    """Labeled calibration batches on `dev`, with the model's gradients cleared before each, for
    the gradient criteria (Taylor/Fisher); an unlabeled batch is a ConfigError."""
    for batch in iter_calibration(calibration, limit):
        batch = to_device(batch, dev)
        if unwrap_batch(batch)[1] is None:
            raise ConfigError("criterion 'taylor'/'fisher' needs labeled calibration batches (input, target)")
        model.zero_grad(set_to_none=True)
        yield batch


def collect_grads(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], calibration: Iterable[Any],
                  *, limit: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Mean gradient and mean squared (per-batch) gradient of the loss w.r.t. each layer's
    effective weight, over labeled calibration batches."""
    dev = _device(model)
    g_sum = {n: torch.zeros_like(weight_of(m), dtype=torch.float32) for n, m in layers}
    g2_sum = {n: torch.zeros_like(weight_of(m), dtype=torch.float32) for n, m in layers}
    count = 0
    was = model.training
    model.eval()  # BatchNorm running stats must not move while we only score
    try:
        for batch in labeled_batches(model, calibration, limit, dev):
            with parametrize.cached():
                weights = {n: weight_of(m) for n, m in layers}
                for w in weights.values():
                    w.retain_grad()
                loss = default_loss(model, batch)
                loss.backward()
                for n, w in weights.items():
                    g = w.grad if w.grad is not None else torch.zeros_like(w)
                    g_sum[n] += g.float()
                    g2_sum[n] += g.float().pow(2)
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    if count == 0:
        raise ConfigError("calibration loader is empty")
    return {n: g / count for n, g in g_sum.items()}, {n: g / count for n, g in g2_sum.items()}


def _expand_cols(col_scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Broadcast per-input-column statistics to the weight's shape."""
    return col_scores.reshape(1, *weight.shape[1:]) if weight.dim() > 1 else col_scores


def weight_scores(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], criterion: str,
                  calibration: Iterable[Any] | None, *, limit: int | None = 8,
                  damping: float = 0.01) -> dict[str, torch.Tensor]:
    """Per-layer importance of every weight entry (larger = keep), same shape as the weight."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; choose one of {list(CRITERIA)}")
    require_data(criterion, calibration)
    with torch.no_grad():
        ws = {n: weight_of(m).detach().float() for n, m in layers}
    if criterion == "l1":
        return {n: w.abs() for n, w in ws.items()}
    if criterion == "l2":
        return {n: w.pow(2) for n, w in ws.items()}
    assert calibration is not None
    if criterion in ("taylor", "fisher"):
        g, g2 = collect_grads(model, layers, calibration, limit=limit)
        if criterion == "taylor":
            return {n: (w * g[n]).abs() for n, w in ws.items()}
        return {n: 0.5 * w.pow(2) * g2[n] for n, w in ws.items()}
    stats = collect_inputs(model, layers, calibration, hessian=criterion == "obs", limit=limit)
    return {n: scores_from_stats(criterion, w, stats[n], damping=damping) for n, w in ws.items()}


def scores_from_stats(criterion: str, weight: torch.Tensor, s: InputStats, *, damping: float = 0.01) -> torch.Tensor:
    """The importance of every entry of `weight` (float, detached) from its layer's input
    statistics, for the input-driven criteria (activation, wanda, apoz, obs)."""
    w = weight
    assert s.abs_sum is not None and s.sq_sum is not None and s.nonzero is not None
    if criterion == "activation":
        col = s.abs_sum / s.rows
    elif criterion == "wanda":
        col = s.sq_sum.sqrt()
    elif criterion == "apoz":
        col = s.nonzero / s.rows
    elif criterion == "obs":  # saliency w^2 / [H^-1]_jj of removing one weight, H = X^T X / rows + damping
        assert s.hessian is not None
        h = s.hessian / s.rows
        h = h + damping * h.diagonal().mean().clamp_min(1e-8) * torch.eye(h.shape[0], device=h.device)
        l_inv = torch.linalg.solve_triangular(torch.linalg.cholesky(h), torch.eye(h.shape[0], device=h.device),
                                              upper=False)
        hinv_diag = l_inv.pow(2).sum(0)  # diag(L^-T L^-1)
        return w.reshape(w.shape[0], -1).pow(2).div(hinv_diag).reshape(w.shape)
    else:
        raise ConfigError(f"criterion {criterion!r} is not computed from input statistics")
    return w.abs() * _expand_cols(col, w)

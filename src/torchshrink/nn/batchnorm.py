"""Re-estimating BatchNorm statistics after a model's layers were changed.

Factorizing, pruning or quantizing a conv changes the distribution of what reaches the
BatchNorm after it, while the BatchNorm still normalizes with the statistics of the old layer.
A few forward passes in train mode (for the BatchNorms only) give it statistics that match again;
nothing is trained, so it is cheap, and it often recovers most of the accuracy lost before any
fine-tuning (Li et al. 2020, "EagleEye", call this adaptive BN).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchshrink.batches import call_model, iter_calibration, to_device
from torchshrink.errors import ConfigError

__all__ = ["batchnorms", "recalibrate_batchnorm", "recalibrate_or_warn", "batchnorm_stats_restored"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of `model` that keep running statistics (the ones to re-estimate)."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


def _snapshot(bns: list[_BatchNorm]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())  # type: ignore[union-attr]
            for m in bns]


def _restore(bns: list[_BatchNorm], saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    for m, (mean, var, n) in zip(bns, saved):
        m.running_mean.copy_(mean)  # type: ignore[union-attr]
        m.running_var.copy_(var)  # type: ignore[union-attr]
        m.num_batches_tracked.copy_(n)  # type: ignore[union-attr]


@contextlib.contextmanager
def batchnorm_stats_restored(model: nn.Module) -> Iterator[None]:
    """Inside the block the BatchNorm statistics may be re-estimated; on exit they are what they
    were (for measuring one candidate change at a time on a shared model)."""
    bns = batchnorms(model)
    saved = _snapshot(bns)
    try:
        yield
    finally:
        _restore(bns, saved)


def recalibrate_or_warn(model: nn.Module, batches: Iterable[Any] | None, *, limit: int | None = 32,
                        where: str = "") -> int:
    """`recalibrate_batchnorm` where the model has BatchNorms and batches are given; a batch the
    model cannot take in train mode (e.g. one sample into BatchNorm1d) leaves the statistics as
    they were, with a warning that says so, instead of failing a long run."""
    if batches is None or not batchnorms(model):
        return 0
    try:
        return recalibrate_batchnorm(model, batches, limit=limit)
    except (ValueError, RuntimeError, ConfigError) as e:
        warnings.warn(f"{where or 'compress'}: BatchNorm statistics were not re-estimated "
                      f"({str(e).splitlines()[0][:160]}); the model keeps the statistics of its old layers. "
                      "Pass calibration= batches of several samples to re-estimate them.", stacklevel=2)
        return 0


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any], *, limit: int | None = 32) -> int:
    """Recompute every BatchNorm's running mean and variance as the plain average over
    `batches` (at most `limit` of them; inputs only, labels are ignored). Dropout and every
    other module stay in eval mode. Returns the number of BatchNorm layers updated (0 when the
    model has none, in which case no batch is read)."""
    bns = batchnorms(model)
    if not bns:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    saved = _snapshot(bns)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = 0
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches, not an exponential one
            m.train()
        with torch.no_grad():
            for batch in iter_calibration(batches, limit):
                call_model(model, to_device(batch, dev))
                seen += 1
        if seen == 0:
            raise ConfigError("recalibrate_batchnorm got no batches; pass a non-empty loader of inputs")
    except BaseException:
        _restore(bns, saved)  # nothing half-updated on failure
        raise
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(bns)

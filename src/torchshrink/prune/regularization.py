"""Sparsity-inducing regularization as a `fit()` loss term (`Callback.extra_loss`).

L1 (lasso) drives individual weights toward zero, so a later magnitude pruning removes less
information; group lasso (Yuan & Lin 2006; Wen et al. 2016) penalizes the L2 norm of each
output channel/neuron, sqrt(group size) * ||w_g||_2, driving whole channels to zero so
ChannelPruning can remove them almost for free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.nn import select_layers
from torchshrink.prune.mask import weight_of
from torchshrink.train import Callback, FitState

__all__ = ["SparsityRegularization", "l1_penalty", "group_lasso_penalty"]


def l1_penalty(layers: Iterable[nn.Module]) -> torch.Tensor:
    terms = [weight_of(m).abs().sum() for m in layers]
    return torch.stack(terms).sum()


def group_lasso_penalty(layers: Iterable[nn.Module]) -> torch.Tensor:
    """Sum over layers and output channels of sqrt(group size) * ||w_channel||_2."""
    terms = []
    for m in layers:
        w = weight_of(m).reshape(weight_of(m).shape[0], -1)
        # eps inside the sqrt keeps the gradient finite for channels that reached zero
        terms.append(math.sqrt(w.shape[1]) * (w.pow(2).sum(1) + 1e-12).sqrt().sum())
    return torch.stack(terms).sum()


class SparsityRegularization(Callback):
    """Adds `strength * penalty` to the training loss.

    kind: "l1" (per weight) or "group_lasso" (per output channel).
    targets / ignore: layer patterns, as in the pruning configs (default: all Linear/Conv).
    """

    def __init__(self, kind: Literal["l1", "group_lasso"] = "l1", *, strength: float = 1e-5,
                 targets: Iterable[str] | None = None, ignore: Iterable[str] = ()) -> None:
        if kind not in ("l1", "group_lasso"):
            raise ConfigError(f"kind must be 'l1' or 'group_lasso', got {kind!r}")
        if strength < 0:
            raise ConfigError(f"strength must be >= 0, got {strength}")
        self.kind, self.strength = kind, strength
        self.targets = list(targets) if targets is not None else None
        self.ignore = list(ignore)
        self.layers: list[nn.Module] = []

    def on_fit_start(self, model: nn.Module, state: FitState) -> None:
        self.layers = [m for _, m in select_layers(model, targets=self.targets, ignore=self.ignore)]

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if not self.layers:
            self.on_fit_start(model, FitState())
        return l1_penalty(self.layers) if self.kind == "l1" else group_lasso_penalty(self.layers)

    def extra_loss(self, model: nn.Module, state: FitState) -> torch.Tensor | None:
        if self.strength == 0:
            return None
        return self.strength * self.penalty(model)

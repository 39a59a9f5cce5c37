"""When to prune: one-shot (`ts.prune` once), iterative prune-and-retrain, and gradual
polynomial sparsity during training (Zhu & Gupta 2017, "To prune, or not to prune").

Gradual pruning raises sparsity from s_i to s_f over n pruning steps as
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3,
pruning fast while many weights are redundant and slowly near the end, and never regrows a
weight (masks only shrink), so the final sparsity is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from torchshrink.api import apply
from torchshrink.config import check_range
from torchshrink.errors import ConfigError
from torchshrink.nn import check_per_layer_patterns, select_layers
from torchshrink.prune.magnitude import MagnitudePruning, prune_unstructured
from torchshrink.train import Callback, FitState, evaluate, fit

__all__ = ["polynomial_sparsity", "GradualPruning", "iterative_pruning"]


def polynomial_sparsity(step: int, *, initial: float, final: float, begin: int, end: int,
                        power: float = 3.0) -> float:
    """Zhu & Gupta's schedule: `initial` before `begin`, `final` from `end` on."""
    if step <= begin:
        return initial
    if step >= end:
        return final
    progress = (step - begin) / max(1, end - begin)
    return final + (initial - final) * (1.0 - progress) ** power


def _scaled(per_layer: Mapping[str, float], fraction: float, initial: float) -> dict[str, float]:
    """Per-layer targets moved the same fraction of the way from `initial` to their final value."""
    return {p: initial + (v - initial) * fraction for p, v in per_layer.items()}


class GradualPruning(Callback):
    """A `fit()` callback that prunes toward `config` (a MagnitudePruning) on a cubic schedule.

    begin_step / end_step: the schedule's window in optimizer steps (end defaults to
    `end_fraction` of the run, 75%, leaving the rest to recover at the final sparsity);
    frequency: prune every this many steps. On fit end the final sparsity is applied exactly
    (also after an early stop).
    """

    def __init__(self, config: MagnitudePruning, *, initial_sparsity: float = 0.0, begin_step: int = 0,
                 end_step: int | None = None, frequency: int = 10,
                 calibration: Iterable[Any] | None = None, end_fraction: float = 0.75) -> None:
        if not isinstance(config, MagnitudePruning):
            raise ConfigError(f"GradualPruning schedules a MagnitudePruning config, got {type(config).__name__}")
        check_range("initial_sparsity", initial_sparsity, 0.0, config.sparsity)
        if not 0 < end_fraction <= 1:
            raise ConfigError(f"end_fraction must be in (0, 1] (the share of the run that prunes), got {end_fraction}")
        if frequency < 1:
            raise ConfigError(f"frequency must be >= 1 step, got {frequency}")
        self.end_fraction = end_fraction
        self.config, self.initial, self.begin, self.end = config, initial_sparsity, begin_step, end_step
        self.frequency, self.calibration = frequency, calibration
        self.layers: list[tuple[str, nn.Module]] = []
        self.history: list[tuple[int, float]] = []

    def _prune_to(self, model: nn.Module, sparsity: float) -> None:
        c = self.config
        fraction = 1.0 if c.sparsity == self.initial else (sparsity - self.initial) / (c.sparsity - self.initial)
        prune_unstructured(model, self.layers, sparsity=sparsity, scope=c.scope,
                           per_layer=_scaled(c.per_layer, fraction, self.initial), criterion=c.criterion,
                           calibration=self.calibration, calibration_batches=c.calibration_batches)

    def install(self, model: nn.Module) -> nn.Module:
        """Put the masks on the selected layers at the initial sparsity (what fit start does;
        called first by `compress`, so the stage's coverage is taken before any training)."""
        c = self.config
        self.layers = select_layers(model, targets=c.targets, ignore=c.ignore)
        check_per_layer_patterns(model, c.per_layer)
        self._prune_to(model, self.initial)
        self.history.append((0, self.initial))
        return model

    def on_fit_start(self, model: nn.Module, state: FitState) -> None:
        if self.end is None:
            self.end = max(self.begin + 1, int(self.end_fraction * state.total_steps))
        if not self.layers:
            self.install(model)

    def on_step_end(self, model: nn.Module, state: FitState) -> None:
        assert self.end is not None
        t = state.step
        if t < self.begin or t > self.end or (t - self.begin) % self.frequency:
            return
        s = polynomial_sparsity(t, initial=self.initial, final=self.config.sparsity, begin=self.begin,
                                end=self.end)
        self._prune_to(model, s)
        self.history.append((t, s))

    def on_fit_end(self, model: nn.Module, state: FitState) -> None:
        self._prune_to(model, self.config.sparsity)
        self.history.append((state.step, self.config.sparsity))


def iterative_pruning(model: nn.Module, config: MagnitudePruning, train: Iterable[Any], *, rounds: int = 3,
                      epochs_per_round: int = 1, val: Iterable[Any] | None = None,
                      calibration: Iterable[Any] | None = None, **fit_kwargs: Any) -> list[dict[str, float]]:
    """Prune, retrain, repeat (Han et al. 2015): `rounds` rounds on the cubic schedule up to
    `config`'s sparsity, each followed by `epochs_per_round` of `fit()`. Returns per-round
    records (sparsity and, with `val`, accuracy)."""
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    records = []
    for r in range(1, rounds + 1):
        s = polynomial_sparsity(r, initial=0.0, final=config.sparsity, begin=0, end=rounds)
        fraction = r / rounds
        step_cfg = config.replace(sparsity=s, per_layer=_scaled(config.per_layer,
                                                                1 - (1 - fraction) ** 3, 0.0))
        apply(model, step_cfg, calibration=calibration, family="prune")
        fit(model, train, epochs=epochs_per_round, progress=False, **fit_kwargs)
        rec = {"round": float(r), "sparsity": s}
        if val is not None:
            rec["accuracy"] = evaluate(model, val)["accuracy"]
        records.append(rec)
    return records

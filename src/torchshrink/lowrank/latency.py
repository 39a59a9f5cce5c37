"""Measured latency of each factorizable layer, dense and as a factor pair over a grid of ranks.

MAC counts mislead on a CPU: a conv whose output has 13 channels runs as slowly as one with 16,
because the kernel pads channels to its vector width, and a thin factor pair pays memory traffic
and call overhead that MACs do not count. So for a latency budget each layer is timed on this
machine, on the input it really sees (captured from the example batch), dense and at ranks
8, 16, 24, ... (and the layer's largest useful rank). A rank costs what the fastest grid rank at
or above it costs: a smaller rank can always run as that one (zero-padded factors), and below
the vector width a rank is no faster (measured: ranks 1 to 16 of a 32-channel 3x3 conv at 28x28
all run in the same time on AVX-512), so ranks 1..7 share rank 8's cost and the solver, seeing
no saving, keeps the better-approximating top of each step. The rest of the model (BatchNorm,
activations, adds, layers left alone) is the whole model's time minus the dense layers'.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from torchshrink.lowrank.svd import LayerSpectrum, factorize_layer
from torchshrink.measure.latency import interleaved_times
from torchshrink.measure.macs import call
from torchshrink.nn import set_module

__all__ = ["GRID_STEP", "LatencyTables", "rank_grid", "measure_tables", "model_time_ratio"]

GRID_STEP = 8  # covers both AVX2 (8 floats) and AVX-512 (16 floats) channel blocking


@dataclasses.dataclass
class LatencyTables:
    """Milliseconds per call at the example batch: `rank_ms[name][r]` for r = 0..limit, where
    index 0 is the dense layer; `fixed_ms` is everything else in the model."""

    model_ms: float
    fixed_ms: float
    rank_ms: dict[str, np.ndarray]


def rank_grid(limit: int, step: int = GRID_STEP) -> list[int]:
    """Ranks to time for a layer whose largest useful rank is `limit`."""
    if limit < 1:
        return []
    return sorted({limit, *range(step, limit + 1, step)})


def _call(module: nn.Module, x: Any) -> Callable[[], Any]:
    """A no-argument, no-grad call of `module` on `x`, for the interleaved timer."""
    def run() -> Any:
        with torch.no_grad():
            return call(module, x)
    return run


def _median(rounds: list[list[float]]) -> float:
    return statistics.median(t for r in rounds for t in r)


def _layer_inputs(model: nn.Module, spectra: Sequence[LayerSpectrum], example: Any) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    hooks = [sp.module.register_forward_pre_hook(
        lambda _m, args, name=sp.name: inputs.setdefault(name, args[0].detach().clone())) for sp in spectra]
    try:
        _call(model, example)()
    finally:
        for h in hooks:
            h.remove()
    return inputs


def measure_tables(model: nn.Module, spectra: Sequence[LayerSpectrum], limits: dict[str, int], example: Any, *,
                   rounds: int = 10, step: int = GRID_STEP, progress: Any = None) -> LatencyTables:
    """Time the model and every layer in `spectra` (dense and at `rank_grid(limits[name])`).
    The model must be in eval mode; `progress` is a tqdm bar updated once per layer."""
    whole = interleaved_times({"model": _call(model, example)}, rounds=rounds, warmup=2)
    model_ms = _median(whole["model"])
    inputs = _layer_inputs(model, spectra, example)
    dense_total = 0.0
    rank_ms: dict[str, np.ndarray] = {}
    for sp in spectra:
        x = inputs[sp.name]
        grid = rank_grid(limits[sp.name], step)
        fns: dict[str, Callable[[], Any]] = {"dense": _call(sp.module, x)}
        for r in grid:
            fns[str(r)] = _call(factorize_layer(sp, r).eval(), x)
        times = {k: _median(v) for k, v in interleaved_times(fns, rounds=rounds, warmup=2).items()}
        table = np.empty(limits[sp.name] + 1)
        table[0] = times["dense"]
        dense_total += times["dense"]
        for r in range(1, limits[sp.name] + 1):
            table[r] = min(times[str(g)] for g in grid if g >= r)
        rank_ms[sp.name] = table
        if progress is not None:
            progress.update(1)
    return LatencyTables(model_ms, max(model_ms - dense_total, 0.0), rank_ms)


def model_time_ratio(model: nn.Module, swaps: Mapping[str, tuple[nn.Module, nn.Module]], example: Any, *,
                     rounds: int = 10) -> float:
    """Measured time of `model` with every layer swapped to its new module, over its time with
    the old ones: both timed in one interleaved loop, swapping the modules in before each call
    (a swap is an attribute assignment, far below the noise). `swaps[name] = (old, new)`; the
    model is left with the new modules."""
    def with_(which: int) -> Callable[[], Any]:
        run = _call(model, example)

        def go() -> Any:
            for name, pair in swaps.items():
                set_module(model, name, pair[which])
            return run()
        return go

    t = interleaved_times({"old": with_(0), "new": with_(1)}, rounds=rounds, warmup=2)
    for name, (_, new) in swaps.items():
        set_module(model, name, new)
    return _median(t["new"]) / _median(t["old"])

"""Forward latency: warm-up, then repeated timed runs at a fixed thread count.

One number from one run is noise on a shared CPU. We report the median of many runs and
their spread (interquartile range and the min-max band), together with how many runs and
threads produced them, so a reader can judge whether two numbers really differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.measure.macs import call

__all__ = ["LatencyStats", "time_forward", "num_threads", "interleaved_times"]


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per forward call of one batch."""

    batch: int
    threads: int
    runs: int
    warmup: int
    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    stdev_ms: float
    # Minor page faults per timed call (Unix; None elsewhere). Thousands mean the allocator
    # hands activation memory back to the OS after every call and faults it in again: the
    # time that costs is the same for every model and hides speed-ups (see README, "CPU
    # latency and the memory allocator").
    page_faults: float | None = None

    @property
    def iqr_ms(self) -> float:
        return self.p75_ms - self.p25_ms

    @property
    def per_sample_ms(self) -> float:
        return self.median_ms / self.batch

    def to_dict(self) -> dict[str, float | int]:
        d: dict[str, float | int] = dataclasses.asdict(self)
        d["iqr_ms"] = self.iqr_ms
        return d

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms (IQR {self.iqr_ms:.3f}, {self.runs} runs, {self.threads} threads)"


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[int]:
    """Set torch's intra-op thread count for the block and put the old one back."""
    old = torch.get_num_threads()
    if n is None:
        yield old
        return
    if n < 1:
        raise ConfigError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)


def _quantile(sorted_values: list[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default), without needing numpy here.
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def stats_from(times_ms: list[float], *, batch: int, threads: int, warmup: int,
               page_faults: float | None = None) -> LatencyStats:
    s = sorted(times_ms)
    return LatencyStats(
        batch=batch, threads=threads, runs=len(s), warmup=warmup,
        median_ms=statistics.median(s), p25_ms=_quantile(s, 0.25), p75_ms=_quantile(s, 0.75),
        min_ms=s[0], max_ms=s[-1], mean_ms=statistics.fmean(s),
        stdev_ms=statistics.stdev(s) if len(s) > 1 else 0.0, page_faults=page_faults,
    )


def _minor_faults() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def _synchronizer(model: nn.Module) -> Callable[[], None]:
    for t in model.parameters():
        if t.device.type == "cuda":
            return torch.cuda.synchronize
        break
    return lambda: None


def time_forward(model: nn.Module, example: Any, *, runs: int = 50, warmup: int = 10,
                 threads: int | None = None, batch: int | None = None) -> LatencyStats:
    """Time `model(example)` under inference_mode: `warmup` untimed calls, then `runs` timed ones."""
    if runs < 1:
        raise ConfigError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    if batch is None:
        batch = int(example.shape[0]) if isinstance(example, torch.Tensor) and example.dim() else 1
    sync = _synchronizer(model)
    was_training = model.training
    model.eval()
    try:
        with num_threads(threads) as used, torch.inference_mode():
            f0 = _minor_faults()
            times = [t for r in interleaved_times({"model": lambda: call(model, example)}, rounds=runs,
                                                  warmup=warmup, sync=sync)["model"] for t in r]
            f1 = _minor_faults()
    finally:
        model.train(was_training)
    # the warm-up calls fault in their first buffers too; count them out as one more call each
    faults = None if f0 is None or f1 is None else (f1 - f0) / (runs + warmup)
    return stats_from(times, batch=batch, threads=used, warmup=warmup, page_faults=faults)


def interleaved_times(fns: Mapping[str, Callable[[], Any]], *, rounds: int, per_round: int = 1,
                      warmup: int = 1, sync: Callable[[], None] | None = None) -> dict[str, list[list[float]]]:
    """Milliseconds per call of each function, timed side by side: `warmup` untimed calls of
    each, then `rounds` rounds in which every function runs `per_round` times back to back
    (A A B B, A A B B, ...), so drifts in a shared machine's load hit every function alike.

    Returns, per name, one list of timings per round; callers pick their statistic (all
    timings pooled, or the fastest of each round against preemption spikes). `sync` runs after
    every call, inside the timing: GPU kernels are asynchronous, so without a wait we would
    time only their launch.
    """
    if rounds < 1 or per_round < 1:
        raise ConfigError(f"rounds and per_round must be >= 1, got {rounds} and {per_round}")
    wait = sync or (lambda: None)
    for f in fns.values():
        for _ in range(warmup):
            f()
    wait()
    out: dict[str, list[list[float]]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            times = []
            for _ in range(per_round):
                t0 = time.perf_counter_ns()
                f()
                wait()
                times.append((time.perf_counter_ns() - t0) / 1e6)
            out[k].append(times)
    return out

"""Side-by-side latency: PyTorch and ONNX Runtime (and any other runner), interleaved.

On a shared CPU a number measured alone is noise, so every target (runtime x batch size) is
timed in rounds: each round runs every target a few times back to back, and the statistics
(median, interquartile range, min-max: ts.measure's LatencyStats) are taken over all timed
calls. Drifts in machine load hit every target alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from torchshrink.measure.latency import LatencyStats, interleaved_times, num_threads, stats_from

__all__ = ["Target", "interleaved", "torch_target", "ort_target", "RUNTIMES"]

RUNTIMES = ("torch", "onnxruntime")


@dataclasses.dataclass
class Target:
    """One thing to time: `fn()` runs one forward of `batch` samples."""

    label: str
    runtime: str
    batch: int
    fn: Callable[[], Any]


def torch_target(model: nn.Module, inputs: tuple[torch.Tensor, ...], *, label: str = "torch") -> Target:
    model = model.eval()

    def run() -> Any:
        with torch.inference_mode():
            return model(*inputs)

    return Target(label, "torch", int(inputs[0].shape[0]), run)


def ort_target(path: str, inputs: tuple[torch.Tensor, ...], *, threads: int | None,
               label: str = "onnxruntime") -> Target:
    from torchshrink.export.onnx import OrtRunner

    runner = OrtRunner(path, threads=threads)
    feeds = runner.feeds(inputs)  # convert once: we time the runtime, not numpy conversion
    return Target(label, "onnxruntime", int(inputs[0].shape[0]), lambda: runner.run_numpy(feeds))


def interleaved(targets: Sequence[Target], *, rounds: int = 15, per_round: int = 3, warmup: int = 3,
                threads: int | None = 1) -> dict[str, LatencyStats]:
    """Time every target in interleaved rounds; milliseconds per call, keyed by label."""
    with num_threads(threads) as used:
        per = interleaved_times({t.label: t.fn for t in targets}, rounds=rounds, per_round=per_round,
                                warmup=warmup)
    return {t.label: stats_from([ms for r in per[t.label] for ms in r], batch=t.batch, threads=used,
                                warmup=warmup) for t in targets}

def table(rows: Sequence[tuple[str, LatencyStats]], *, baseline: str | None = None) -> str:
    """A plain-text table: median, IQR, min-max, per sample, and speed-up over `baseline`."""
    base = dict(rows).get(baseline) if baseline else None
    head = f"{'target':<34} {'batch':>5} {'median ms':>10} {'IQR ms':>8} {'min-max ms':>17} {'ms/sample':>10}"
    head += f" {'speed-up':>8}" if base else ""
    lines = [head, "-" * len(head)]
    for label, s in rows:
        line = (f"{label:<34} {s.batch:>5} {s.median_ms:>10.3f} {s.iqr_ms:>8.3f} "
                f"{f'{s.min_ms:.3f}-{s.max_ms:.3f}':>17} {s.per_sample_ms:>10.4f}")
        if base:
            line += f" {base.median_ms / s.median_ms if s.batch == base.batch else float('nan'):>7.2f}x"
        lines.append(line)
    return "\n".join(lines)

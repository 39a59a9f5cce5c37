"""Range observers for activations, and the calibration loop that feeds them.

- `minmax`: running min and max (no clipping; outliers set the scale).
- `moving_average`: exponential moving average of per-batch min and max (PyTorch's default
  for QAT), which damps single-batch outliers.
- `percentile`: the p-th and (100 - p)-th percentiles of everything seen.
- `mse`: the clipping range that minimises the expected squared quantization error.
- `entropy`: the clipping threshold that minimises the KL divergence between the float and
  quantized histograms (TensorRT's entropy calibration, Migacz 2017).

The last three work on a histogram with a symmetric range [-R, R] that doubles when new data
falls outside it (adjacent bins merge pairwise, which is exact), so memory stays fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized
from typing import Any, Literal

import torch
from torch import nn

from torchshrink.batches import call_model, unwrap_batch
from torchshrink.errors import DataError
from torchshrink.progress import progress_bar
from torchshrink.quant.fake import _scale_zero, qrange

__all__ = ["ObserverName", "Observer", "MinMaxObserver", "MovingAverageObserver", "PercentileObserver",
           "MseObserver", "EntropyObserver", "make_observer", "calibrate", "OBSERVERS"]

ObserverName = Literal["minmax", "moving_average", "percentile", "mse", "entropy"]
OBSERVERS: tuple[str, ...] = ("minmax", "moving_average", "percentile", "mse", "entropy")


class Observer:
    """Collects statistics of the tensors it sees; `qparams` turns them into a grid."""

    def observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        raise NotImplementedError

    def qparams(self, bits: int = 8, symmetric: bool = False, *, reduce_range: bool = False
                ) -> tuple[float, int]:
        """(scale, zero_point) with 0 exactly representable. `reduce_range` uses one bit less
        (needed by fbgemm kernels on CPUs without VNNI, whose 16-bit accumulation can saturate)."""
        eff = bits - 1 if reduce_range else bits
        lo, hi = self.range(eff, symmetric)
        s, z = _scale_zero(torch.tensor([lo]), torch.tensor([hi]), eff, symmetric)
        return float(s), int(z)


class MinMaxObserver(Observer):
    def __init__(self) -> None:
        self.lo, self.hi = float("inf"), float("-inf")

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        if self.lo > self.hi:
            raise DataError("an observer saw no data; the calibration loader was empty")
        return self.lo, self.hi


class MovingAverageObserver(MinMaxObserver):
    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.seen = False

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        lo, hi = float(x.min()), float(x.max())
        if not self.seen:
            self.lo, self.hi, self.seen = lo, hi, True
            return
        c = self.momentum
        self.lo += c * (lo - self.lo)
        self.hi += c * (hi - self.hi)


class HistogramObserver(Observer):
    """A fixed-size histogram over [-R, R]; R doubles (bins merge pairwise) as needed."""

    def __init__(self, bins: int = 2048) -> None:
        self.bins = bins
        self.radius = 0.0
        self.hist = torch.zeros(bins, dtype=torch.float64)
        self.lo, self.hi = float("inf"), float("-inf")

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        need = max(abs(self.lo), abs(self.hi), 1e-8)
        if self.radius == 0.0:
            self.radius = need
        while need > self.radius:
            # Doubling the range: the middle half of the new bins covers the old bins in pairs.
            merged = self.hist.reshape(-1, 2).sum(1)
            quarter = self.bins // 4
            self.hist = torch.cat([torch.zeros(quarter, dtype=torch.float64), merged,
                                   torch.zeros(quarter, dtype=torch.float64)])
            self.radius *= 2
        self.hist += torch.histc(x, self.bins, -self.radius, self.radius).double()

    def centers(self) -> torch.Tensor:
        width = 2 * self.radius / self.bins
        return -self.radius + width * (torch.arange(self.bins, dtype=torch.float64) + 0.5)

    def _check(self) -> None:
        if self.hist.sum() == 0:
            raise DataError("an observer saw no data; the calibration loader was empty")


class PercentileObserver(HistogramObserver):
    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        super().__init__(bins)
        self.percentile = percentile

    def range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        self._check()
        cdf = self.hist.cumsum(0) / self.hist.sum()
        edges = torch.linspace(-self.radius, self.radius, self.bins + 1, dtype=torch.float64)
        p = self.percentile / 100
        hi_i = int(torch.searchsorted(cdf, torch.tensor([p], dtype=torch.float64)))
        lo_i = int(torch.searchsorted(cdf, torch.tensor([1 - p], dtype=torch.float64)))
        lo = max(self.lo, float(edges[lo_i]))
        hi = min(self.hi, float(edges[min(hi_i + 1, self.bins)]))
        return min(lo, hi), hi


class MseObserver(HistogramObserver):
    def range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        self._check()
        c, w = self.centers(), self.hist
        best, best_range = float("inf"), (self.lo, self.hi)
        for i in range(60):
            ratio = 1.0 - 0.9 * i / 60
            lo, hi = self.lo * ratio, self.hi * ratio
            s, z = _scale_zero(torch.tensor([lo]), torch.tensor([hi]), bits, symmetric)
            qmin, qmax = qrange(bits, symmetric)
            q = (torch.clamp((c / s.double()).round() + z.double(), qmin, qmax) - z.double()) * s.double()
            err = float(((q - c) ** 2 * w).sum())
            if err < best:
                best, best_range = err, (lo, hi)
        return best_range


class EntropyObserver(HistogramObserver):
    def range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        self._check()
        half = self.bins // 2
        # KL on magnitudes: fold the symmetric histogram onto [0, R].
        mag = self.hist[half:] + self.hist[:half].flip(0)
        # Exact zeros (ReLU outputs, padding) sit on the grid whatever the threshold; their
        # spike would otherwise dominate the divergence and pull the threshold far in.
        mag[0] = 0.0
        nonneg = self.lo >= 0
        levels = 2**bits if nonneg else 2 ** (bits - 1)
        best, best_i = float("inf"), half
        start = min(levels, half)
        for i in range(start, half + 1, max(1, (half - start) // 128)):
            p = mag[:i].clone()
            p[-1] += mag[i:].sum()  # outliers clip into the last kept bin
            # Q: p merged into `levels` buckets and spread uniformly over the nonzero bins.
            idx = torch.arange(i) * levels // i
            nz = (p > 0).double()
            # Q is built from the unclipped slice, so mass clipped into the last bin of P
            # counts against short thresholds (as in TensorRT's calibrator).
            bucket_sum = torch.zeros(levels, dtype=torch.float64).index_add_(0, idx, mag[:i])
            bucket_cnt = torch.zeros(levels, dtype=torch.float64).index_add_(0, idx, nz)
            q = torch.where(nz > 0, bucket_sum[idx] / bucket_cnt[idx].clamp_min(1), torch.zeros_like(p))
            ps, qs = p / p.sum(), q / q.sum().clamp_min(1e-12)
            mask = ps > 0
            kl = float((ps[mask] * torch.log(ps[mask] / qs[mask].clamp_min(1e-12))).sum())
            if kl < best:
                best, best_i = kl, i
        threshold = self.radius * best_i / half
        return max(self.lo, -threshold), min(self.hi, threshold)


def make_observer(name: str, **kw: Any) -> Observer:
    table: dict[str, type[Observer]] = {"minmax": MinMaxObserver, "moving_average": MovingAverageObserver,
                                        "percentile": PercentileObserver, "mse": MseObserver,
                                        "entropy": EntropyObserver}
    if name not in table:
        from torchshrink.errors import ConfigError

        raise ConfigError(f"observer must be one of {list(table)}, got {name!r}")
    return table[name](**kw)


def _shape_of(x: Any) -> tuple[int, ...] | None:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else None


def expected_input_shape(model: nn.Module, example: Any) -> tuple[int, ...] | None:
    """Per-sample input shape from an example batch or a reference model's `input_shape`."""
    if isinstance(example, torch.Tensor):
        return tuple(example.shape[1:])
    shape = getattr(model, "input_shape", None)
    return tuple(shape) if shape is not None else None


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], *, expected: Sequence[int] | None = None,
              limit: int | None = None, progress: bool = False, desc: str = "calibrate") -> int:
    """Run `model` over calibration batches (inputs only) so its hooks and observers see data.

    Raises DataError naming the shape when a batch does not fit the model. Returns the number
    of batches seen.
    """
    was_training = model.training
    model.eval()
    total = len(batches) if isinstance(batches, Sized) else None
    if limit is not None and total is not None:
        total = min(total, limit)
    bar = progress_bar(total, desc, progress)
    seen = 0
    try:
        for i, batch in enumerate(batches):
            if limit is not None and i >= limit:
                break
            x, _ = unwrap_batch(batch)
            shape = _shape_of(x)
            if expected is not None and shape is not None and tuple(shape[1:]) != tuple(expected):
                raise DataError(
                    f"calibration batch {i} has shape {shape}, but the model expects (N, "
                    f"{', '.join(map(str, expected))}); pass batches shaped like the model's input "
                    "(a DataLoader of (x, y) or of x)"
                )
            try:
                call_model(model, batch)
            except RuntimeError as e:
                raise DataError(
                    f"calibration batch {i} of shape {shape} does not fit {type(model).__name__}: {e}; "
                    "pass batches shaped like the model's input"
                ) from e
            seen += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    if seen == 0:
        raise DataError("the calibration data is empty; pass a loader with at least one batch")
    return seen

"""HTML reports: one self-contained page per compression, with tables, plots and an energy
estimate.

    ts.report("lenet300_dc.tsz", before="lenet300.tsz", data="mnist5k", out="report.html")

`ts.report` is this subpackage, callable (see torchshrink._verb_module), so
`torchshrink.report.estimate_energy` and friends stay importable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from torchshrink.report.build import ReportData, collect
from torchshrink.report.energy import (
    HOROWITZ_45NM,
    EnergyEstimate,
    LayerEnergy,
    estimate_energy,
    layer_precision,
)
from torchshrink.report.streams import STREAMS, FileStreams, LayerStreams, file_streams

__all__ = ["HOROWITZ_45NM", "STREAMS", "EnergyEstimate", "FileStreams", "LayerEnergy", "LayerStreams", "ReportData",
           "collect", "estimate_energy", "file_streams", "layer_precision", "render_report", "report", "write_page"]


def render_report(data: ReportData, *, seconds: float = 0.0) -> str:
    """The page's HTML for collected report data."""
    from torchshrink.codec.fileformat import version
    from torchshrink.report.html import render
    from torchshrink.report.sections import SECTIONS

    return render(title=data.title, sections=[(sid, head, fn(data)) for sid, head, fn in SECTIONS],
                  version=version(), seconds=seconds)


def report(after: str | os.PathLike[str] | nn.Module, before: str | os.PathLike[str] | nn.Module | None = None, *,
           out: str | os.PathLike[str] = "report.html", data: Any = None, example: Any = None,
           evaluate: Callable[[nn.Module], float] | None = None, stages: Any = None, plan: Any = None,
           recipe: Any = None, like: Any = None, batch_sizes: Sequence[int] = (1, 64), threads: int | None = 1,
           runs: int = 20, latency: bool = True, energy_batches: Sequence[int] = (1, 64), sram_bytes: int = 0,
           energy_table: Mapping[str, float] | None = None, title: str | None = None) -> Path:
    """Write one HTML page comparing `after` with `before`; returns the page's path.

    after, before: artifact paths (.tsz) or models (saved to a temporary file to count bytes).
        Without `before` the energy is compared with the dense fp32 equivalent of `after`.
    data: a data set name (its test split, seeded as the file records) or a loader of
        (input, target) batches: gives the example input and accuracy; or pass `example=` and
        `evaluate=` (model -> float) yourself.
    stages: a `CompressResult` (ts.compress's result) or rows (dicts) for the stage table.
    plan: a `PlanResult` for the candidate table and Pareto front.
    recipe: the recipe (a Recipe, name or path) shown; default the methods the file records.
    batch_sizes, threads, runs, latency: as in `ts.measure`.
    energy_batches, sram_bytes, energy_table: the energy estimate's batch sizes, on-chip weight
        memory in bytes (0: weights always come from DRAM) and pJ table (default HOROWITZ_45NM).
    The output path is checked before any measuring; the page is written atomically.
    """
    from torchshrink.errors import ConfigError
    from torchshrink.report.html import check_writable, write_atomic

    t0 = time.perf_counter()
    path = check_writable(out)
    for name, vals in (("batch_sizes", batch_sizes), ("energy_batches", energy_batches)):
        if not vals or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in vals):
            raise ConfigError(f"{name} must be positive integers like (1, 64), got {vals!r}")
    if not isinstance(sram_bytes, int) or isinstance(sram_bytes, bool) or sram_bytes < 0:
        raise ConfigError(f"sram_bytes must be a non-negative integer (bytes), got {sram_bytes!r}")
    if energy_table is not None:
        from torchshrink.report.energy import check_table

        check_table(energy_table)
    data_ = collect(after, before, data=data, example=example, evaluate=evaluate, stages=stages, plan=plan,
                        recipe=recipe, like=like, batch_sizes=batch_sizes, threads=threads, runs=runs,
                        latency=latency, energy_batches=energy_batches, sram_bytes=sram_bytes,
                        energy_table=energy_table, title=title)
    write_atomic(path, render_report(data_, seconds=time.perf_counter() - t0))
    return path


def write_page(data: ReportData, out: str | os.PathLike[str], *, seconds: float = 0.0) -> Path:
    """Render collected data (`collect`) to `out`, atomically; for callers that also want the numbers."""
    from torchshrink.report.html import check_writable, write_atomic

    path = check_writable(out)
    write_atomic(path, render_report(data, seconds=seconds))
    return path


# `ts.report(after, ...)`: this subpackage is also the verb (see torchshrink._verb_module).
from torchshrink._verb_module import make_callable  # noqa: E402

make_callable(__name__, report)

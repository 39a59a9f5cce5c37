"""The Report: every number `ts.measure` took, as a text table and as JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from torchshrink.measure.latency import LatencyStats
from torchshrink.measure.weights import LayerRow

__all__ = ["Report", "compare", "format_table"]


@dataclasses.dataclass
class Report:
    """What a model costs and how well it does.

    params: weight elements as the model computes with them (see `measure.weights`).
    nonzero_params: how many of those are not zero.
    dense_bytes: what the weights take as dense fp32 (4 * params): the uncompressed baseline.
    artifact_bytes: size on disk of the saved file, when one was given.
    macs: multiply-accumulates of one forward on a single sample (`macs_batch` = 1).
    latency: batch size -> timing at the first thread count measured; `latency_runs` has
        every (batch, threads) combination.
    metric: the task metric `evaluate(model)` returned (accuracy in percent for classifiers).
    layers: one row per module that holds weights.
    coverage: per applied method, which layers it changed and which it skipped, with the
        reason (`ts.coverage(model)` as plain data).
    resident_bytes: bytes of every tensor the model holds in memory (parameters and buffers,
        shared storage counted once): what it costs to keep loaded, beside `dense_bytes`.
    """

    model: str
    params: int
    nonzero_params: int
    dense_bytes: int
    macs: int | None
    example_shape: list[int] | None = None
    macs_batch: int = 1
    artifact_bytes: int | None = None
    artifact: str | None = None
    latency: dict[int, LatencyStats] = dataclasses.field(default_factory=dict)
    latency_runs: list[LatencyStats] = dataclasses.field(default_factory=list)
    metric: float | None = None
    metric_name: str = "metric"
    layers: list[LayerRow] = dataclasses.field(default_factory=list)
    coverage: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    resident_bytes: int | None = None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_params / self.params if self.params else 0.0

    @property
    def compression_ratio(self) -> float | None:
        """Dense fp32 bytes over bytes on disk (Deep Compression's headline number)."""
        if not self.artifact_bytes:
            return None
        return self.dense_bytes / self.artifact_bytes

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model,
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "sparsity": self.sparsity,
            "dense_bytes": self.dense_bytes,
            "resident_bytes": self.resident_bytes,
            "artifact_bytes": self.artifact_bytes,
            "artifact": self.artifact,
            "compression_ratio": self.compression_ratio,
            "macs": self.macs,
            "macs_batch": self.macs_batch,
            "example_shape": self.example_shape,
            # JSON object keys are strings; the batch size is repeated inside each entry.
            "latency": {str(b): s.to_dict() for b, s in self.latency.items()},
            "latency_runs": [s.to_dict() for s in self.latency_runs],
            "metric": self.metric,
            "metric_name": self.metric_name,
            "layers": [row.to_dict() for row in self.layers],
            "coverage": self.coverage,
        }
        if self.metric is not None and self.metric_name not in d:
            d[self.metric_name] = self.metric
        return d

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary_rows(self) -> list[tuple[str, str]]:
        rows = [
            ("params", _int(self.params)),
            ("nonzero params", f"{_int(self.nonzero_params)} ({100 * self.sparsity:.1f}% sparse)"),
            ("dense fp32 bytes", _int(self.dense_bytes)),
        ]
        if self.resident_bytes is not None:
            rows.append(("resident bytes", _int(self.resident_bytes)))
        if self.artifact_bytes is not None:
            ratio = self.compression_ratio
            rows.append(("bytes on disk", _int(self.artifact_bytes) + (f" ({ratio:.2f}x vs fp32)" if ratio else "")))
        rows.append(("MACs per sample", _int(self.macs)))
        for s in self.latency_runs:
            rows.append((f"latency batch {s.batch}, {s.threads} thr",
                         f"{s.median_ms:.4f} ms median, IQR {s.iqr_ms:.4f}, range {s.min_ms:.4f}-{s.max_ms:.4f}"
                         f" ({s.runs} runs after {s.warmup} warm-up"
                         + (f", {s.page_faults:,.0f} page faults per call" if s.page_faults is not None else "")
                         + ")"))
        if self.metric is not None:
            rows.append((self.metric_name, f"{self.metric:.4g}"))
        return rows

    def table(self, *, layers: bool = True) -> str:
        """A readable text table: the summary, then one line per layer."""
        out = [f"{self.model}"]
        width = max(len(k) for k, _ in self.summary_rows())
        out += [f"  {k.ljust(width)}  {v}" for k, v in self.summary_rows()]
        if layers and self.layers:
            header = ("layer", "type", "params", "nonzeros", "sparsity", "MACs", "execution")
            body = [(r.name, r.type, _int(r.params), _int(r.nonzeros), f"{100 * r.sparsity:.1f}%",
                     _int(r.macs), r.execution) for r in self.layers]
            out.append("")
            out.append(format_table(header, body, right=(2, 3, 4, 5)))
        for c in self.coverage if layers else []:
            out.append(f"\n{c['method']}: changed {len(c['changed'])} layers ({100 * c['share']:.1f}% of weights)")
            out += [f"  skipped {n}: {why}" for n, why in c["skipped"].items()]
            out += [f"  {n}: {text}" for n, text in c["notes"].items()]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _int(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], *,
                 right: tuple[int, ...] = ()) -> str:
    """Columns padded to their widest cell; `right` columns are right-aligned (numbers)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *[line(r) for r in rows]])


def _size_change(before: float | None, after: float | None, *, smaller: str = "smaller",
                 larger: str = "larger") -> str:
    if before is None or after is None:
        return "-"
    if before == after:
        return "same"
    if after == 0:
        return f"{larger if before < after else smaller} (to 0)"
    r = before / after
    return f"{r:.2f}x {smaller}" if r > 1 else f"{1 / r:.2f}x {larger}"


def compare(before: Report, after: Report, *, labels: tuple[str, str] = ("before", "after")) -> str:
    """A before/after table with ratios: metric, params, nonzeros, bytes, MACs and latency."""
    rows: list[tuple[str, str, str, str]] = []
    if before.metric is not None or after.metric is not None:
        delta = ("-" if before.metric is None or after.metric is None
                 else f"{after.metric - before.metric:+.2f}")
        rows.append((after.metric_name if after.metric is not None else before.metric_name,
                     _fmt(before.metric), _fmt(after.metric), delta))
    rows.append(("params", _int(before.params), _int(after.params), _size_change(before.params, after.params)))
    rows.append(("nonzero params", _int(before.nonzero_params), _int(after.nonzero_params),
                 _size_change(before.nonzero_params, after.nonzero_params)))
    rows.append(("dense fp32 bytes", _int(before.dense_bytes), _int(after.dense_bytes),
                 _size_change(before.dense_bytes, after.dense_bytes)))
    if before.resident_bytes is not None and after.resident_bytes is not None:
        rows.append(("resident bytes", _int(before.resident_bytes), _int(after.resident_bytes),
                     _size_change(before.resident_bytes, after.resident_bytes)))
    if before.artifact_bytes is not None or after.artifact_bytes is not None:
        rows.append(("bytes on disk", _int(before.artifact_bytes), _int(after.artifact_bytes),
                     _size_change(before.artifact_bytes, after.artifact_bytes)))
    if after.artifact_bytes:
        rows.append(("fp32 dense -> disk", _int(before.dense_bytes), _int(after.artifact_bytes),
                     _size_change(before.dense_bytes, after.artifact_bytes)))
    rows.append(("MACs per sample", _int(before.macs), _int(after.macs), _size_change(before.macs, after.macs,
                                                                                    smaller="fewer",
                                                                                    larger="more")))
    after_lat = {(s.batch, s.threads): s for s in after.latency_runs}
    for s in before.latency_runs:
        a = after_lat.get((s.batch, s.threads))
        rows.append((f"latency ms (batch {s.batch}, {s.threads} thr)", f"{s.median_ms:.4f}",
                     "-" if a is None else f"{a.median_ms:.4f}",
                     _size_change(s.median_ms, None if a is None else a.median_ms,
                                  smaller="faster", larger="slower")))
    header = ("", labels[0], labels[1], "change")
    text = format_table(header, rows, right=(1, 2))
    notes = sorted({r.execution for r in after.layers if r.execution != "dense"})
    if notes:
        text += "\nexecution of compressed layers: " + "; ".join(notes)
    if before.latency_runs:
        s = before.latency_runs[0]
        text += (f"\nlatency: median of {s.runs} runs after {s.warmup} warm-up; "
                 "compare only numbers from the same run on the same machine")
    return text


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"

"""Collect what a report shows: `ts.measure` of both models, the files' streams, the
per-layer table, stages, plan, recipe, energy and the machine, as plain data for the page."""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchshrink.errors import ArtifactError, ConfigError
from torchshrink.measure import Report
from torchshrink.report.energy import EnergyEstimate, estimate_energy
from torchshrink.report.streams import FileStreams, file_streams

__all__ = ["ReportData", "Side", "collect"]

Source = str | os.PathLike[str] | nn.Module


@dataclasses.dataclass
class Side:
    """One model of the comparison: where it came from, its measurements and its file."""

    label: str
    source: str  # the file given, or a note that a temporary file was written
    model: nn.Module
    measured: Report
    streams: FileStreams
    history: list[Any]
    layers: list[dict[str, Any]]


@dataclasses.dataclass
class ReportData:
    title: str
    after: Side
    before: Side | None
    energy: list[dict[str, Any]]
    stages: list[dict[str, Any]] | None = None
    plan: Any = None  # a PlanResult
    sensitivity: list[dict[str, Any]] | None = None
    recipe_text: str | None = None
    environment: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    metric_name: str = "metric"


def _load_side(source: Source, label: str, tmp: Path, like: Any) -> tuple[str, nn.Module, Path, list[Any]]:
    from torchshrink.codec import load, read_info, save

    if isinstance(source, nn.Module):
        path = tmp / f"{label.replace(' ', '_')}.tsz"
        save(source, path, history=True)  # the page shows the methods recorded
        return "in memory (saved to a temporary file to count its bytes)", source, path, read_info(path).history
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"{label}: expected an artifact path or an nn.Module, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise ArtifactError(f"{label} artifact {str(path)!r} does not exist; pass the .tsz file ts.save wrote")
    info = read_info(path)
    return str(path), load(path, like=like), path, info.history


def layer_table(model: nn.Module, streams: FileStreams) -> list[dict[str, Any]]:
    """Deep Compression's Table 2 from the file's real bytes: per weight-holding layer (as
    `ts.measure` sees them, swapped quantized modules included), weights, % kept, bits per kept
    weight for values and for positions, bytes and share of dense fp32."""
    from torchshrink.cluster.codebook import Codebook
    from torchshrink.measure.weights import effective_tensors, layer_rows
    from torchshrink.nn import params

    by_layer = {r.layer: r for r in streams.layers}
    modules = dict(model.named_modules())
    rows: list[dict[str, Any]] = []
    for lr in layer_rows(model):
        m = modules.get("" if lr.name == "(root)" else lr.name)
        if m is None:
            continue
        tensors = effective_tensors(m)
        w = tensors.get("weight")
        if w is None or w.dim() < 2:
            continue  # norms and biases only: not a weight layer of the table
        n, nz = w.numel(), int(torch.count_nonzero(w))
        dense = 4 * sum(t.numel() for t in tensors.values())
        s = by_layer.get(lr.name)
        b = dict(s.bytes) if s is not None else {}
        stored = s.total if s is not None else 0
        cb = params.find(m, Codebook)
        rows.append({"layer": lr.name, "weights": n, "kept_percent": 100 * nz / max(1, n),
                     "shared_values": cb.k if cb is not None else None,
                     "weight_bits": 8 * (b.get("values", 0) - (s.bias_bytes if s is not None else 0)) / max(1, nz),
                     "index_bits": 8 * b.get("positions", 0) / max(1, nz),
                     "table_bytes": b.get("codebooks", 0) + b.get("scales", 0), "bytes": stored,
                     "dense_bytes": dense, "share_percent": 100 * stored / max(1, dense),
                     "estimated": bool(s is not None and s.estimated), "execution": lr.execution})
    return rows


def _stage_rows(stages: Any) -> list[dict[str, Any]] | None:
    """Rows of the stage table from a CompressResult, or rows given as mappings."""
    if stages is None:
        return None
    results = getattr(stages, "stages", None)
    if results is not None:  # a CompressResult
        rows = [{"stage": "baseline", "metric": getattr(stages, "baseline_metric", None)}]
        for i, r in enumerate(results, 1):
            rows.append({"stage": f"{i}. {r.name}", "metric before fine-tune": r.metric_before_finetune,
                         "metric": r.metric, "kept weights": f"{r.nonzero_weights:,} / {r.total_weights:,}",
                         "file bytes": r.file_bytes or None, "seconds": r.seconds})
        return rows
    if isinstance(stages, Iterable):
        return [dict(r) for r in stages]
    raise ConfigError(f"stages must be a CompressResult or a list of dicts, got {type(stages).__name__}")


def _recipe_text(recipe: Any, history: list[Any]) -> str | None:
    import yaml

    if recipe is not None:
        from torchshrink.recipe import Recipe, load_recipe

        rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        return rec.to_yaml()
    if history:
        return "# the methods recorded in the file, in order\n" + yaml.safe_dump(history, sort_keys=False)
    return None


def environment(threads: int | None) -> list[tuple[str, str]]:
    from importlib import metadata

    from torchshrink.codec.fileformat import version

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    rows = [("torchshrink", version()), ("python", platform.python_version()), ("torch", torch.__version__),
            ("platform", platform.platform()), ("cpu", f"{cpu}, {os.cpu_count()} logical cores"),
            ("threads (latency)", str(threads if threads is not None else torch.get_num_threads()))]
    for pkg in ("numpy", "safetensors", "matplotlib", "onnxruntime"):
        try:
            rows.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    return rows


def _data(data: Any, metadata: Mapping[str, Any]) -> tuple[Any, Callable[[nn.Module], float] | None]:
    """(example batch, accuracy function) from a data set name or a labeled loader."""
    from torchshrink.train import evaluate as run_eval

    if data is None:
        return None, None
    if isinstance(data, str):
        from torch.utils.data import DataLoader

        from torchshrink import data as datasets

        seed = metadata.get("data_seed", 0)
        splits = datasets.load(data, seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0)
        loader: Any = DataLoader(splits.test, batch_size=1000)
    else:
        loader = data
    first = next(iter(loader), None)
    if first is None:
        raise ConfigError("data= is empty; pass a data set name or a loader of (input, target) batches")
    x = first[0] if isinstance(first, (tuple, list)) else first

    def accuracy(m: nn.Module) -> float:
        return float(run_eval(m, loader)["accuracy"])

    return x[:1], accuracy


def sensitivity(before: nn.Module, after: nn.Module, evaluate: Callable[[nn.Module], float],
                base_metric: float) -> list[dict[str, Any]] | None:
    """Per layer, the metric when only that layer takes its compressed weight (the rest fp32),
    where both models have the same layers and weight shapes; None otherwise."""
    import copy

    from torchshrink.nn import select_layers
    from torchshrink.nn.params import materialize

    a_layers = dict(select_layers(after))
    b_layers = select_layers(before)
    if [n for n, _ in b_layers] != list(a_layers):
        return None
    rows = []
    for name, bm in b_layers:
        wa, wb = getattr(a_layers[name], "weight", None), getattr(bm, "weight", None)
        if not (isinstance(wa, torch.Tensor) and isinstance(wb, torch.Tensor) and wa.shape == wb.shape):
            return None
        probe = materialize(copy.deepcopy(before))
        with torch.no_grad():
            target = dict(probe.named_modules())[name]
            w = getattr(target, "weight", None)
            if not isinstance(w, torch.Tensor):
                return None
            w.copy_(wa.detach().to(w.dtype))
        m = float(evaluate(probe))
        rows.append({"layer": name, "metric": m, "change": m - base_metric})
    return rows


def collect(after: Source, before: Source | None = None, *, data: Any = None, example: Any = None,
            evaluate: Callable[[nn.Module], float] | None = None, stages: Any = None, plan: Any = None,
            recipe: Any = None, like: Any = None, batch_sizes: Sequence[int] = (1, 64), threads: int | None = 1,
            runs: int = 20, latency: bool = True, energy_batches: Sequence[int] = (1, 64), sram_bytes: int = 0,
            energy_table: Mapping[str, float] | None = None, title: str | None = None) -> ReportData:
    from torchshrink.measure import measure

    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ts_report_") as tmpdir:
        tmp = Path(tmpdir)
        a_src, a_model, a_path, a_hist = _load_side(after, "after", tmp, like)
        b_loaded = _load_side(before, "before", tmp, like) if before is not None else None
        from torchshrink.codec import read_info

        meta = read_info(a_path).metadata or {}
        x, acc = _data(data, meta if isinstance(meta, dict) else {})
        example = example if example is not None else x
        evaluate = evaluate if evaluate is not None else acc
        if example is None:
            from torchshrink import models

            try:
                example = models.example_input(a_model, 1)
            except ConfigError as e:
                raise ConfigError(f"the report needs example= (one input batch) or data= for "
                                  f"{type(a_model).__name__}") from e

        def side(label: str, src: str, model: nn.Module, path: Path, hist: list[Any]) -> Side:
            rep = measure(model, example=example, evaluate=evaluate, batch_sizes=batch_sizes, threads=threads,
                          runs=runs, latency=latency, artifact=path)
            fs = file_streams(path)
            return Side(label, src, model, rep, fs, hist, layer_table(model, fs))

        a = side("after", a_src, a_model, a_path, a_hist)
        b = side("before", *b_loaded) if b_loaded is not None else None

    energy: list[dict[str, Any]] = []
    for batch in energy_batches:
        kw: dict[str, Any] = {"batch": batch, "sram_bytes": sram_bytes, "table": energy_table}
        e_after = estimate_energy(a.model, example, stored_bytes=a.streams.layer_bytes(), **kw)
        if b is not None:
            e_before: EnergyEstimate = estimate_energy(b.model, example, stored_bytes=b.streams.layer_bytes(), **kw)
            label = "before"
        else:
            e_before, label = estimate_energy(a.model, example, dense_fp32=True, **kw), "dense fp32 equivalent"
        energy.append({"batch": batch, "before": e_before, "after": e_after, "before_label": label})
    if b is None:
        notes.append("no baseline given: energy is compared with the dense fp32 equivalent of the same layers")

    sens = None
    if b is not None and evaluate is not None and b.measured.metric is not None:
        sens = sensitivity(b.model, a.model, evaluate, b.measured.metric)
    return ReportData(
        title=title or f"{a.measured.model}: compression report", after=a, before=b, energy=energy,
        stages=_stage_rows(stages), plan=plan, sensitivity=sens, recipe_text=_recipe_text(recipe, a.history),
        environment=environment(threads), notes=notes, metric_name=a.measured.metric_name)

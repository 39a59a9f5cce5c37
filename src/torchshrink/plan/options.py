"""The per-layer option database: every compressible layer, compressed each way, measured.

For each layer (the same selection the methods use) and each option (unstructured sparsity
levels, weight-only bit widths with group sizes, k-means sharing bits, SVD ranks, and stacks of
pruning with sharing or quantization), the option is applied by the family's own method config
to a copy of that layer alone (`nn.isolate`), then measured:
- error: the layer's relative output error ||f'(X) - f(X)||^2 / ||f(X)||^2 on inputs X
  recorded from the calibration data ("output"); with `model_error=True` also the KL divergence
  of the whole model's outputs from fp32 when only this layer is compressed ("model");
- bytes: what the artifact spends on the layer (`codec.estimate.layer_bytes`: the codec's own
  encoders, entropy coding included);
- MACs of one sample through the layer, and, with `latency=True`, the median time of the
  layer's inference form (`ts.for_inference`) at the example batch.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from torchshrink.batches import call_model, iter_calibration, logits_of
from torchshrink.config import Config
from torchshrink.errors import ConfigError, ShrinkError
from torchshrink.nn import select_layers, set_module
from torchshrink.nn.batchnorm import batchnorm_stats_restored, recalibrate_or_warn
from torchshrink.nn.shapes import record_inputs
from torchshrink.nn.surgery import isolate
from torchshrink.plan.workers import Job as _Job
from torchshrink.plan.workers import Shared as _Shared
from torchshrink.plan.workers import check_workers, run_jobs
from torchshrink.progress import progress_bar

__all__ = ["LayerOption", "OptionRow", "OptionDatabase", "default_options", "build_database"]

# up to 0.99: on a conv net whose BatchNorms and biases are a third of a 1/60 budget, the
# layers themselves must go below 3% of their weights for any plan to fit
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
BITS = (8, 6, 4, 3, 2)
GROUPS = (None, 64)
KMEANS_BITS = (6, 5, 4, 3, 2)
SVD_FRACTIONS = (0.5, 0.25, 0.125)
STACK_KMEANS_BITS = (5, 4, 3, 2)
STACK_BITS = (8, 4)


@dataclasses.dataclass(frozen=True)
class LayerOption:
    """One way to compress one layer: any of an SVD rank, a sparsity, then k-means bits or
    weight-only bits (a stack applies them in that order). All None: the layer as it is."""

    rank: int | None = None
    sparsity: float | None = None
    kmeans_bits: int | None = None
    bits: int | None = None
    group_size: int | None = None

    @property
    def name(self) -> str:
        parts = []
        if self.rank is not None:
            parts.append(f"svd r={self.rank}")
        if self.sparsity is not None:
            parts.append(f"prune {self.sparsity:g}")
        if self.kmeans_bits is not None:
            parts.append(f"kmeans {self.kmeans_bits}b")
        if self.bits is not None:
            parts.append(f"int{self.bits}" + (f" g{self.group_size}" if self.group_size else ""))
        return " + ".join(parts) or "as is"

    @property
    def family(self) -> str:
        kinds = [k for k, v in (("lowrank", self.rank), ("prune", self.sparsity), ("cluster", self.kmeans_bits),
                                ("quant", self.bits)) if v is not None]
        return "+".join(kinds) or "none"

    def configs(self, layer: str) -> list[Config]:
        """The method configs that apply this option to `layer` alone, in order."""
        return stage_configs({layer: self})


def stage_configs(choice: dict[str, LayerOption]) -> list[Config]:
    """One config per family (one per bit width and group size for weight-only) applying every
    layer's option: per_layer settings where the method has them, targets= where it does not."""
    from torchshrink.cluster import KMeansSharing
    from torchshrink.lowrank import SvdFactorization
    from torchshrink.prune import MagnitudePruning
    from torchshrink.quant import WeightOnly

    out: list[Config] = []
    ranks: dict[str, int | dict[str, float]] = {n: o.rank for n, o in choice.items() if o.rank is not None}
    if ranks:
        out.append(SvdFactorization(per_layer=ranks, targets=tuple(ranks), recalibrate_bn=False))
    sparse = {n: o.sparsity for n, o in choice.items() if o.sparsity is not None}
    if sparse:
        out.append(MagnitudePruning(per_layer=sparse, targets=tuple(sparse)))
    shared = {n: o.kmeans_bits for n, o in choice.items() if o.kmeans_bits is not None}
    if shared:
        out.append(KMeansSharing(per_layer=shared, targets=tuple(shared)))
    grids: dict[tuple[int, int | None], list[str]] = {}
    for n, o in choice.items():
        if o.bits is not None:
            grids.setdefault((o.bits, o.group_size), []).append(n)
    for (bits, group), names in sorted(grids.items(), key=lambda kv: (-kv[0][0], kv[0][1] or 0)):
        out.append(WeightOnly(bits=bits, group_size=group, targets=tuple(names), strict=True))
    return out


def _matrix(m: nn.Module) -> tuple[int, int]:
    w = m.weight
    assert isinstance(w, torch.Tensor)
    return int(w.shape[0]), int(w[0].numel())


def default_options(m: nn.Module) -> list[LayerOption]:
    """The options tried on a layer: every family at a few strengths, and pruning stacked with
    sharing or quantization (Deep Compression's pipeline, per layer)."""
    rows, cols = _matrix(m)
    out = [LayerOption()]
    out += [LayerOption(sparsity=s) for s in SPARSITIES]
    for b in BITS:
        for g in GROUPS:
            if g is None or (cols % g == 0 and cols > g):
                out.append(LayerOption(bits=b, group_size=g))
    out += [LayerOption(kmeans_bits=b) for b in KMEANS_BITS]
    full = rows * cols / (rows + cols)
    for f in SVD_FRACTIONS:
        r = int(f * full)
        if r >= 1 and isinstance(m, (nn.Linear, nn.Conv2d)):
            out.append(LayerOption(rank=r))
    out += [LayerOption(sparsity=s, kmeans_bits=b) for s in SPARSITIES for b in STACK_KMEANS_BITS]
    out += [LayerOption(sparsity=s, bits=b) for s in SPARSITIES[:4] for b in STACK_BITS]
    return out


@dataclasses.dataclass
class OptionRow:
    option: LayerOption
    bytes: int
    error: float
    macs: int
    model_error: float | None = None
    latency_ms: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"option": self.option.name, **dataclasses.asdict(self.option), "bytes": self.bytes,
                "error": self.error, "model_error": self.model_error, "macs": self.macs,
                "latency_ms": self.latency_ms, "seconds": self.seconds}


@dataclasses.dataclass
class OptionDatabase:
    """Per layer, its measured options (row 0 is the layer as it is). `fixed_bytes` is what the
    file spends outside these layers (header, manifest, other tensors), so a plan's file is
    about fixed_bytes + the sum of its options' bytes; the same for MACs and latency."""

    layers: list[str]
    rows: dict[str, list[OptionRow]]
    base_file_bytes: int
    fixed_bytes: int
    fixed_macs: int
    fixed_latency_ms: float | None
    skipped: dict[str, list[str]]
    seconds: float

    def errors(self, kind: str = "output") -> list[list[float]]:
        key = "error" if kind == "output" else "model_error"
        out = []
        for n in self.layers:
            vals = [getattr(r, key) for r in self.rows[n]]
            if any(v is None for v in vals):
                raise ConfigError(f"error={kind!r} needs the database built with model_error=True")
            out.append([float(v) for v in vals])
        return out

    def costs(self, what: str) -> list[list[float]]:
        if what == "latency_ms" and any(r.latency_ms is None for n in self.layers for r in self.rows[n]):
            raise ConfigError("a latency budget needs the database built with latency=True")
        return [[float(getattr(r, what)) for r in self.rows[n]] for n in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": {n: [r.to_dict() for r in self.rows[n]] for n in self.layers},
                "base_file_bytes": self.base_file_bytes, "fixed_bytes": self.fixed_bytes,
                "fixed_macs": self.fixed_macs, "fixed_latency_ms": self.fixed_latency_ms,
                "skipped": self.skipped, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OptionDatabase:
        """The database `to_dict` wrote (plain data: a cached database is read as JSON, never
        unpickled)."""
        fields = [f.name for f in dataclasses.fields(LayerOption)]
        rows = {n: [OptionRow(LayerOption(**{k: r[k] for k in fields}), bytes=r["bytes"], error=r["error"],
                              macs=r["macs"], model_error=r["model_error"], latency_ms=r["latency_ms"],
                              seconds=r["seconds"]) for r in rs] for n, rs in d["layers"].items()}
        return cls(list(d["layers"]), rows, d["base_file_bytes"], d["fixed_bytes"], d["fixed_macs"],
                   d["fixed_latency_ms"], d["skipped"], d["seconds"])


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))


def _kl(logits: torch.Tensor, ref_logp: torch.Tensor) -> float:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean())


def _layer_macs(m: nn.Module, x: torch.Tensor) -> int:
    from torchshrink.measure.macs import count_macs

    return count_macs(nn.Sequential(m), x[:1])[0]


def _layer_latency(m: nn.Module, x: torch.Tensor, runs: int, threads: int | None) -> float:
    from torchshrink.infer import for_inference
    from torchshrink.measure.latency import time_forward

    wrapped = nn.Sequential(m)
    fast = for_inference(wrapped, example=x)
    return time_forward(fast, x, runs=runs, warmup=3, threads=threads).median_ms


def build_database(
    model: nn.Module,
    calibration: Iterable[Any],
    *,
    example: Any = None,
    options: Callable[[str, nn.Module], Sequence[LayerOption]] | None = None,
    targets: Iterable[str] | None = None,
    ignore: Iterable[str] = (),
    calibration_batches: int = 4,
    model_error: bool = False,
    latency: bool = False,
    latency_runs: int = 10,
    threads: int | None = 1,
    progress: bool = True,
    workers: int = 1,
    threads_per_worker: int = 1,
    ray_address: str | None = None,
    recalibrate_bn: bool = True,
) -> OptionDatabase:
    """Measure every option of every selected layer of `model` (left unchanged).

    calibration: batches as the model takes them; the first `calibration_batches` give each
    layer's recorded inputs (and, with model_error=True, the fp32 outputs to compare against).
    options: `(layer name, module) -> options` (default `default_options`); the layer as it is
    is always added as option 0.
    example: one batch at the serving batch size, for latency=True.
    workers: processes measuring options in parallel (1: in this process), each with
        `threads_per_worker` torch threads (latency is timed with `threads`); ray_address: run
        them as Ray tasks on that cluster instead ("auto", "ray://host:10001"; the `ray` extra).
    recalibrate_bn: with model_error=True, re-estimate the BatchNorm statistics on the
        calibration batches before each option's model error is measured (as `compress` does
        after a stage); costs one more pass over them per option on models with BatchNorm.
    """
    from torchshrink.codec.container import encode_model
    from torchshrink.measure.macs import count_macs

    t0 = time.perf_counter()
    check_workers(workers, threads_per_worker, ray_address)
    model = model.eval()
    layers = [n for n, _ in select_layers(model, targets=targets, ignore=ignore)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Linear/Conv layer to plan for")
    batches = list(iter_calibration(calibration, calibration_batches))
    if not batches:
        raise ConfigError("the joint planner needs calibration= batches (the layer inputs it measures on)")
    inputs = record_inputs(model, batches, layers)
    missing = [n for n in layers if n not in inputs]
    if missing:
        raise ConfigError(f"layers {missing} saw no tensor input on the calibration batches; pass ignore= for them")
    lat_inputs: dict[str, torch.Tensor] = {}
    if latency:
        if example is None:
            raise ConfigError("latency=True needs example= one batch at the serving batch size")
        lat_inputs = record_inputs(model, [example], layers)
    ref_logp: list[torch.Tensor] = []
    if model_error:
        with torch.no_grad():
            ref_logp = [torch.log_softmax(logits_of(call_model(model, b)).float(), dim=-1) for b in batches]

    base_file = len(encode_model(model))
    per_layer_opts = {n: list(options(n, model.get_submodule(n)) if options else
                               default_options(model.get_submodule(n))) for n in layers}
    for n in layers:
        if LayerOption() not in per_layer_opts[n]:
            per_layer_opts[n].insert(0, LayerOption())
        else:  # the layer as it is comes first: the allocator's fallback and the file's baseline
            per_layer_opts[n].remove(LayerOption())
            per_layer_opts[n].insert(0, LayerOption())
    state = _Shared(model, batches, ref_logp, model_error, latency, latency_runs, threads, recalibrate_bn)
    jobs = [_Job(n, opts, inputs[n], lat_inputs.get(n)) for n in layers
            for opts in _chunks(per_layer_opts[n], len(layers), workers)]
    rows: dict[str, list[OptionRow]] = {n: [] for n in layers}
    skipped: dict[str, list[str]] = {n: [] for n in layers}
    bar = progress_bar(len(jobs), "plan: option database", progress)
    for name, got, why in run_jobs(state, jobs, workers=workers, threads_per_worker=threads_per_worker,
                                   ray_address=ray_address):
        rows[name] += got
        skipped[name] += why
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for n in layers:  # the order options were asked in, whichever worker measured them
        order = {o: i for i, o in enumerate(per_layer_opts[n])}
        rows[n].sort(key=lambda r: order[r.option])
    fixed = base_file - sum(rows[n][0].bytes for n in layers)
    total_macs = count_macs(model, _first_sample(example if example is not None else batches[0]))[0]
    fixed_macs = max(0, total_macs - sum(rows[n][0].macs for n in layers))
    fixed_ms = None
    if latency:
        from torchshrink.infer import for_inference
        from torchshrink.measure.latency import time_forward

        whole = time_forward(for_inference(model, example=example), example, runs=latency_runs, warmup=3,
                             threads=threads).median_ms
        fixed_ms = max(0.0, whole - sum(rows[n][0].latency_ms or 0.0 for n in layers))
    return OptionDatabase(layers, rows, base_file, fixed, fixed_macs, fixed_ms, skipped, time.perf_counter() - t0)


def _chunks(opts: list[LayerOption], layers: int, workers: int) -> list[list[LayerOption]]:
    """A layer's options in pieces small enough that `workers` processes stay busy (about four
    jobs each); one piece when measuring in this process."""
    if workers <= 1:
        return [opts]
    per_layer = max(1, -(-4 * workers // layers))
    size = max(1, -(-len(opts) // per_layer))
    return [opts[i: i + size] for i in range(0, len(opts), size)]


def measure_options(state: Any, job: Any) -> tuple[str, list[OptionRow], list[str]]:
    """Apply each option of `job` to a copy of its layer alone and measure it (see the module
    docstring). Runs in this process or in a worker; `state` is the model and its batches."""
    from torchshrink.api import apply
    from torchshrink.codec.estimate import layer_bytes

    model, n, x = state.model, job.layer, job.inputs
    with torch.no_grad():
        ref = model.get_submodule(n)(x)
    work = copy.deepcopy(model) if state.model_error else None
    rows: list[OptionRow] = []
    skipped: list[str] = []
    for opt in job.options:
        t1 = time.perf_counter()
        shell = isolate(model, n)
        try:
            for cfg in opt.configs(n):
                shell = apply(shell, cfg, progress=False)
        except (ShrinkError, ValueError, RuntimeError) as e:  # this layer cannot take it: say why
            skipped.append(f"{opt.name}: {str(e).splitlines()[0][:160]}")
            continue
        layer = shell.get_submodule(n).eval()
        with torch.no_grad():
            err = _relative_error(layer(x), ref)
        row = OptionRow(opt, layer_bytes(shell, n), err, _layer_macs(layer, x))
        if work is not None:
            saved = set_module(work, n, layer)
            try:
                with torch.no_grad(), batchnorm_stats_restored(work):
                    # priced as the plan will be applied: compress re-estimates BatchNorm
                    # statistics after a stage, so a layer is judged with its BatchNorms matched
                    if state.recalibrate_bn:
                        recalibrate_or_warn(work, state.batches, limit=None, where=f"plan: {n} {opt.name}")
                    row.model_error = sum(_kl(logits_of(call_model(work, b)), r)
                                          for b, r in zip(state.batches, state.ref_logp)) / len(state.batches)
            finally:
                set_module(work, n, saved)
        if state.latency:
            row.latency_ms = _layer_latency(copy.deepcopy(layer), job.latency_inputs, state.latency_runs,
                                            state.threads)
        row.seconds = time.perf_counter() - t1
        rows.append(row)
    return n, rows, skipped


def _first_sample(batch: Any) -> Any:
    """One sample of the model's input (MACs are counted per sample)."""
    from torchshrink.batches import unwrap_batch
    from torchshrink.measure.macs import slice_batch

    x = unwrap_batch(batch)[0] if isinstance(batch, (tuple, list, dict)) else batch
    return slice_batch(x, 1)

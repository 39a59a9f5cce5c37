"""`torchshrink compress` and the Deep Compression tables (stage table, per-layer table).

`cli.py` registers the subcommand and calls `layer_table` from `inspect`; everything else
about compression lives here so the CLI module stays a thin dispatcher.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchshrink.errors import ConfigError

__all__ = [
    "Baseline",
    "baseline",
    "baseline_args",
    "compress_args",
    "cmd_compress",
    "run_compress",
    "dense_bytes",
    "layer_rows",
    "layer_table",
    "inspect_table",
    "stage_rows",
    "stage_table",
    "paper_style_bits",
]


def _weight(m: nn.Module) -> torch.Tensor:
    w = m.weight
    assert isinstance(w, torch.Tensor)
    return w.detach()


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters stored as dense fp32 (the paper's baseline size)."""
    return sum(p.numel() for p in model.parameters()) * 4


# --------------------------------------------------------------------------------------------
# per-layer table (the paper's Table 2 / Table 3)


def _layer_records(info: Any) -> dict[str, int]:
    """Stored payload bytes per module (all tensors whose key starts with the module name)."""
    out: dict[str, int] = {}
    for r in info.tensors:
        key = r.key
        module = key.split(".parametrizations.")[0] if ".parametrizations." in key else key.rpartition(".")[0]
        out[module] = out.get(module, 0) + r.nbytes
    return out


def _split_bits(indices: np.ndarray, k: int) -> tuple[int, int]:
    """(value bytes, position bytes) of a codebook index tensor coded as sparse gaps + values
    (the `sparse_ans` layout), so the table can say what positions and values cost."""
    from torchshrink.codec import sparse
    from torchshrink.codec.entropy_encodings import Writer, _write_ans

    flat = indices.reshape(-1).astype(np.int64)
    pos = np.flatnonzero(flat != k)
    if pos.size == 0:
        return 0, 0
    cap = sparse.best_cap(pos)
    gw = Writer()
    _write_ans(gw, sparse.escaped_gaps(pos, cap), cap + 1)
    vw = Writer()
    _write_ans(vw, flat[pos], k)
    return len(vw.bytes()), len(gw.bytes())


def layer_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per weight layer of an artifact: weights, percent kept, bits per kept weight for
    values and for positions, and the layer's stored share of its dense fp32 size."""
    from torchshrink.cluster.codebook import Codebook
    from torchshrink.codec.container import load, read_info
    from torchshrink.nn import params, select_layers

    info = read_info(path)
    model = load(path)
    stored = _layer_records(info)
    rows: list[dict[str, Any]] = []
    for name, m in select_layers(model):
        w = _weight(m)
        n = w.numel()
        nz = int((w != 0).sum())
        bias = getattr(m, "bias", None)
        dense = (n + (bias.numel() if isinstance(bias, torch.Tensor) else 0)) * 4
        cb = params.find(m, Codebook)
        stored_bytes = stored.get(name, 0)
        if cb is not None:
            vb, pb = _split_bits(cb.indices.cpu().numpy(), cb.k)
            weight_bits = 8 * vb / max(1, nz)
            index_bits = 8 * pb / max(1, nz)
            shared = cb.k
        else:
            weight_bits = 8 * stored_bytes / max(1, nz)
            index_bits = 0.0
            shared = None
        rows.append({"layer": name, "weights": n, "kept_percent": 100 * nz / max(1, n), "shared_values": shared,
                     "weight_bits": weight_bits, "index_bits": index_bits, "stored_bytes": stored_bytes,
                     "dense_bytes": dense, "share_percent": 100 * stored_bytes / max(1, dense)})
    total_dense = sum(int(r["dense_bytes"]) for r in rows)
    total_w = sum(int(r["weights"]) for r in rows)
    total_nz = sum(float(r["weights"]) * float(r["kept_percent"]) / 100 for r in rows)
    rows.append({"layer": "total (file)", "weights": total_w, "kept_percent": 100 * total_nz / max(1, total_w),
                 "shared_values": None, "weight_bits": None, "index_bits": None, "stored_bytes": info.file_bytes,
                 "dense_bytes": total_dense, "share_percent": 100 * info.file_bytes / max(1, total_dense),
                 "header_bytes": info.header_bytes})
    return rows


def layer_table(path: str | os.PathLike[str], rows: list[dict[str, Any]] | None = None) -> str:
    """The per-layer table, formatted like Deep Compression's Table 2."""
    rows = rows if rows is not None else layer_rows(path)
    head = f"{'layer':<14}{'weights':>9}{'kept':>8}{'k':>4}{'weight bits':>12}{'index bits':>11}" \
           f"{'bytes':>9}{'of fp32':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        k = "" if r["shared_values"] is None else str(r["shared_values"])
        wb = "" if r["weight_bits"] is None else f"{r['weight_bits']:.2f}"
        ib = "" if r["index_bits"] is None else f"{r['index_bits']:.2f}"
        lines.append(f"{r['layer']:<14}{r['weights']:>9,}{r['kept_percent']:>7.1f}%{k:>4}{wb:>12}{ib:>11}"
                     f"{r['stored_bytes']:>9,}{r['share_percent']:>8.2f}%")
    total = rows[-1]
    lines.append(f"(bits are per kept weight, from the sparse split of the coded indices; the total row is the "
                 f"whole file, header {total.get('header_bytes', 0):,} B included; "
                 f"ratio {total['dense_bytes'] / max(1, total['stored_bytes']):.1f}x)")
    return "\n".join(lines)


def inspect_table(path: str | os.PathLike[str]) -> str:
    """The per-layer table for `torchshrink inspect`; never fails the command it decorates."""
    try:
        return layer_table(path)
    except Exception as e:  # noqa: BLE001 - an extra table must not break inspect
        return f"(no per-layer table: {type(e).__name__}: {e})"


# --------------------------------------------------------------------------------------------
# stage table (the paper's Table 7: pruned, + shared weights, + coding)


def paper_style_bits(model: nn.Module) -> int:
    """Bits of the model stored the way the paper counts before entropy coding: per weight layer,
    kept weights at fp32 (or `bits`-bit codebook indices plus the codebook) with fixed-width
    relative positions (best width, fillers counted) when sparse, biases at fp32."""
    from torchshrink.cluster.codebook import Codebook
    from torchshrink.codec import sparse
    from torchshrink.nn import params, select_layers

    total = 0
    layers = {id(m) for _, m in select_layers(model)}
    for p in model.parameters():
        total += 32 * p.numel()  # start dense; weight layers are corrected below
    for _, m in select_layers(model):
        w = _weight(m)
        cb = params.find(m, Codebook)
        total -= 32 * w.numel()
        if cb is not None:
            total -= 32 * cb.k  # the codebook was counted as a parameter
            value_bits = max(1, math.ceil(math.log2(max(2, cb.k))))
            extra = 32 * cb.k
        else:
            value_bits, extra = 32, 0
        flat = w.reshape(-1).cpu().numpy()
        pos = np.flatnonzero(flat != 0)
        dense_cost = w.numel() * value_bits
        best = dense_cost
        if pos.size < flat.size:
            for gb in range(1, 13):
                gaps, _ = sparse.fixed_gaps(pos, gb)
                best = min(best, gaps.size * (gb + value_bits))
        total += best + extra
    del layers
    return total


def stage_rows(baseline_model_bytes: int, baseline_metric: float | None, stages: list[dict[str, Any]],
               final: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"stage": "dense fp32", "accuracy": baseline_metric, "bytes": baseline_model_bytes,
             "ratio": 1.0, "how": "4 bytes per parameter"}]
    for s in stages:
        rows.append({"stage": s["label"], "accuracy": s["metric"], "bytes": s["paper_bytes"],
                     "ratio": baseline_model_bytes / max(1, s["paper_bytes"]),
                     "how": "fixed-width positions, values at index width (no entropy coding)"})
    rows.append({"stage": "+ coding (file)", "accuracy": final["accuracy"], "bytes": final["bytes"],
                 "ratio": baseline_model_bytes / max(1, final["bytes"]),
                 "how": "the .tsz file read back, every header byte included"})
    return rows


def stage_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'stage':<22}{'accuracy':>10}{'bytes':>11}{'ratio':>9}  how counted"
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.2f}%"
        lines.append(f"{r['stage']:<22}{acc:>10}{r['bytes']:>11,}{r['ratio']:>8.1f}x  {r['how']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the pipeline behind `torchshrink compress`


def _stage_label(name: str, seen: dict[str, int]) -> str:
    base = {"magnitude_pruning": "pruned", "kmeans_sharing": "+ shared weights"}.get(name, f"+ {name}")
    seen[base] = seen.get(base, 0) + 1
    return base if seen[base] == 1 else f"{base} ({seen[base]})"


@dataclasses.dataclass
class Baseline:
    """A trained (or loaded) model with the loaders and test metric the CLI uses around it."""

    model: nn.Module
    splits: Any
    train: Any
    val: Any
    test: Any
    accuracy: Callable[[nn.Module], float]


def baseline(*, model_name: str | None, data_name: str, checkpoint: str | None = None, epochs: int | None = None,
             seed: int = 0, progress: bool = True, print_fn: Callable[[str], None] = print) -> Baseline:
    """Load `checkpoint`, or train `model_name` on `data_name` with its bundled recipe; the
    loaders use the same pipeline (random shifts) as that training, so fine-tuning matches."""
    from torchshrink import cli, data
    from torchshrink.codec.container import load
    from torchshrink.train import evaluate, fit, seed_everything

    if data_name not in data.names():
        raise ConfigError(f"unknown data set {data_name!r}; choices: {', '.join(data.names())}")
    splits = data.load(data_name, seed=cli.DATA_SEED)
    base_recipe = cli.train_recipe(model_name or "lenet300")
    if epochs is not None:
        base_recipe["epochs"] = epochs
    train_loader, val_loader, _ = data.loaders(splits, batch_size=int(base_recipe["batch_size"]),
                                               eval_batch_size=cli.EVAL_BATCH_SIZE, seed=seed,
                                               shift=int(base_recipe.get("shift", 0)))
    test_loader = cli._test_loader(splits)

    def accuracy(m: nn.Module) -> float:
        return evaluate(m, test_loader)["accuracy"]

    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise ConfigError(f"--checkpoint {checkpoint!r} does not exist; give an artifact written by "
                              "`torchshrink train` or ts.save")
        model = load(checkpoint)
        print_fn(f"baseline: {checkpoint}")
    else:
        if model_name is None:
            raise ConfigError("give --model NAME to train a baseline, or --checkpoint FILE")
        seed_everything(seed)
        model = cli._build_model(model_name, splits.input_shape, splits.num_classes)
        fit_kw = cli._fit_kwargs(base_recipe)
        fit_kw.update(epochs=int(base_recipe["epochs"]), seed=seed, progress=progress,
                      desc=f"train {model_name}")
        print_fn(f"training {model_name} on {data_name} ({len(splits.train)} train images, "
                 f"{fit_kw['epochs']} epochs)...")
        fit(model, train_loader, val=val_loader, **fit_kw)
    return Baseline(model, splits, train_loader, val_loader, test_loader, accuracy)


def run_compress(*, model_name: str | None, data_name: str, recipe: str, out: str,
                 report: str | None = None, checkpoint: str | None = None, epochs: int | None = None,
                 seed: int = 0, progress: bool = True,
                 print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or load) a baseline, run the recipe, write the file, read it back and measure.

    Every "compressed" number is taken on the model loaded from `out`.
    """
    from torchshrink.codec.container import load, save
    from torchshrink.recipe import compress, load_recipe

    t0 = time.perf_counter()
    cpu0 = time.process_time()  # CPU seconds: the honest cost on a shared, overloaded machine
    rec = load_recipe(recipe)  # fail on a bad recipe before any training
    b = baseline(model_name=model_name, data_name=data_name, checkpoint=checkpoint, epochs=epochs, seed=seed,
                 progress=progress, print_fn=print_fn)
    model, splits, train_loader, val_loader, test_loader, accuracy = (
        b.model, b.splits, b.train, b.val, b.test, b.accuracy)
    base_acc = accuracy(model)
    base_bytes = dense_bytes(model)
    print_fn(f"baseline: accuracy {base_acc:.2f}%, {base_bytes:,} bytes as dense fp32")

    seen: dict[str, int] = {}
    stage_info: list[dict[str, Any]] = []

    def on_stage(r: Any, current: nn.Module) -> None:
        label = _stage_label(r.name, seen)
        paper = (paper_style_bits(current) + 7) // 8
        stage_info.append({"label": label, "method": r.name, "metric": r.metric,
                           "metric_before_finetune": r.metric_before_finetune, "nonzero_weights": r.nonzero_weights,
                           "total_weights": r.total_weights, "paper_bytes": paper, "seconds": r.seconds,
                           "config": r.config})
        before = "" if r.metric_before_finetune is None else f"{r.metric_before_finetune:.2f}% -> "
        print_fn(f"  stage {len(stage_info)}/{len(rec.stages)} {r.name}: accuracy {before}{r.metric:.2f}%, "
                 f"{r.nonzero_weights:,}/{r.total_weights:,} weights kept, {paper:,} B paper-style "
                 f"({r.seconds:.0f} s)")

    print_fn(f"compressing with {recipe} ({len(rec.stages)} stages)...")
    result = compress(model, rec, train=train_loader, val=val_loader, evaluate=accuracy, progress=progress,
                      measure_file=False, on_stage=on_stage)
    compressed = result.model
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save(compressed, out, metadata={"data": data_name})
    reloaded = load(out)
    comp_acc = accuracy(reloaded)
    comp_bytes = os.path.getsize(out)
    x = next(iter(test_loader))[0][:64]
    with torch.no_grad():
        same = bool(torch.equal(compressed(x), reloaded(x)))
    seconds = time.perf_counter() - t0
    final = {"accuracy": comp_acc, "bytes": comp_bytes}
    rows = stage_rows(base_bytes, base_acc, stage_info, final)
    layers = layer_rows(out)
    out_report = {
        "model": model_name, "data": data_name, "recipe": str(recipe), "file": str(out),
        "baseline": {"accuracy": base_acc, "bytes": base_bytes},
        "compressed": {"accuracy": comp_acc, "bytes": comp_bytes, "accuracy_in_memory": result.stages[-1].metric,
                       "bit_exact_reload": same},
        "ratio": base_bytes / comp_bytes,
        "accuracy_drop": base_acc - comp_acc,
        "stages": stage_info, "stage_table": rows, "layers": layers, "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu0, "threads": torch.get_num_threads(),
        "test_samples": len(splits.test),
    }
    print_fn("")
    print_fn(stage_table(rows))
    print_fn("")
    print_fn(layer_table(out, layers))
    print_fn(f"\n{model_name or checkpoint} on {data_name}: {base_acc:.2f}% -> {comp_acc:.2f}% (file read back), "
             f"{base_bytes:,} -> {comp_bytes:,} bytes = {base_bytes / comp_bytes:.1f}x in {seconds:.0f} s "
             f"({time.process_time() - cpu0:.0f} CPU s on {torch.get_num_threads()} threads)")
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(out_report, indent=2))
        print_fn(f"wrote {out} and {report}")
    return out_report



def baseline_args(p: argparse.ArgumentParser) -> None:
    """The options of `baseline()`, shared by the commands that start from one."""
    p.add_argument("--model", default=None, help="reference model to train as the baseline (e.g. lenet300)")
    p.add_argument("--checkpoint", default=None, help="start from this artifact instead of training")
    p.add_argument("--data", required=True, help="data set (mnist5k, fashion_mnist, digits, synthetic)")
    p.add_argument("--epochs", type=int, default=None, help="baseline training epochs (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def compress_args(p: argparse.ArgumentParser) -> None:
    baseline_args(p)
    p.add_argument("--recipe", required=True, help="YAML recipe (recipes/deep_compression_lenet300.yaml)")
    p.add_argument("--out", required=True, help="compressed artifact to write (F.tsz)")
    p.add_argument("--report", default=None, help="JSON report to write")


def cmd_compress(args: argparse.Namespace) -> int:
    if args.model is None and args.checkpoint is None:
        raise ConfigError("give --model NAME (a baseline is trained) or --checkpoint FILE")
    run_compress(model_name=args.model, data_name=args.data, recipe=args.recipe, out=args.out, report=args.report,
                 checkpoint=args.checkpoint, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    return 0

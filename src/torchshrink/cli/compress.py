"""`torchshrink compress`: train or load a baseline, run a recipe, write the compressed file,
read it back and report (the stage and per-layer tables of Deep Compression)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torchshrink.cli.options as options
from torchshrink.cli.baseline import baseline, check_baseline, data_names, model_names
from torchshrink.cli.paths import prepare_output, write_text
from torchshrink.cli.tables import (
    dense_bytes,
    layer_rows,
    layer_table,
    paper_style_bits,
    stage_rows,
    stage_table,
)

NAME = "compress"
HELP = "train or load a baseline, run a recipe, write the compressed file, report"

__all__ = ["run_compress", "add_arguments", "run"]


def _stage_label(name: str, seen: dict[str, int]) -> str:
    base = {"magnitude_pruning": "pruned", "kmeans_sharing": "+ shared weights"}.get(name, f"+ {name}")
    seen[base] = seen.get(base, 0) + 1
    return base if seen[base] == 1 else f"{base} ({seen[base]})"


def run_compress(*, model_name: str | None, data_name: str, recipe: str, out: str,
                 report: str | None = None, html: str | None = None, checkpoint: str | None = None, epochs: int | None = None,
                 lr: float | None = None, batch_size: int | None = None, seed: int = 0,
                 progress: bool = True, print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or load) a baseline, run the recipe, write the file, read it back and measure.

    Every "compressed" number is taken on the model loaded from `out`. The recipe, the names
    and every output path are checked before any training.
    """
    import torch

    import torchshrink as ts

    t0 = time.perf_counter()
    cpu0 = time.process_time()  # CPU seconds: the honest cost on a shared, overloaded machine
    check_baseline(model_name=model_name, data_name=data_name, checkpoint=checkpoint, epochs=epochs, lr=lr)
    rec = ts.load_recipe(recipe)
    prepare_output(out, "--out")
    if report:
        prepare_output(report, "--report")
    if html:
        prepare_output(html, "--html")
    b = baseline(model_name=model_name, data_name=data_name, checkpoint=checkpoint, epochs=epochs, lr=lr,
                 batch_size=batch_size, seed=seed, progress=progress, print_fn=print_fn)
    model, accuracy = b.model, b.accuracy
    base_acc = accuracy(model)
    base_bytes = dense_bytes(model)
    print_fn(f"baseline: accuracy {base_acc:.2f}%, {base_bytes:,} bytes as dense fp32")

    import copy

    # The page compares with the baseline as it was; compress() edits the model in place.
    before_model = copy.deepcopy(model) if html and checkpoint is None else None
    seen: dict[str, int] = {}
    stage_info: list[dict[str, Any]] = []

    def on_stage(r: Any, current: torch.nn.Module) -> None:
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
    result = ts.compress(model, rec, train=b.train, val=b.val, evaluate=accuracy, progress=progress,
                         measure_file=False, on_stage=on_stage)
    compressed = result.model
    ts.save(compressed, out, metadata={"data": data_name})
    reloaded = ts.load(out)
    comp_acc = accuracy(reloaded)
    comp_bytes = os.path.getsize(out)
    x = next(iter(b.test))[0][:64]
    with torch.no_grad():
        same = bool(torch.equal(compressed(x), reloaded(x)))
    seconds = time.perf_counter() - t0
    rows = stage_rows(base_bytes, base_acc, stage_info, {"accuracy": comp_acc, "bytes": comp_bytes})
    layers = layer_rows(out)
    out_report = {
        "model": model_name, "checkpoint": checkpoint, "data": data_name, "recipe": str(recipe), "file": str(out),
        "baseline": {"accuracy": base_acc, "bytes": base_bytes},
        "compressed": {"accuracy": comp_acc, "bytes": comp_bytes, "accuracy_in_memory": result.stages[-1].metric,
                       "bit_exact_reload": same},
        "ratio": base_bytes / comp_bytes,
        "accuracy_drop": round(base_acc - comp_acc, 9),  # 97.3 - 97.1 is 0.2000000000000028
        "stages": stage_info, "stage_table": rows, "layers": layers, "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu0, "threads": torch.get_num_threads(),
        "test_samples": len(b.splits.test),
    }
    print_fn("")
    print_fn(stage_table(rows))
    print_fn("")
    print_fn(layer_table(out, layers))
    print_fn(f"\n{model_name or checkpoint} on {data_name}: {base_acc:.2f}% -> {comp_acc:.2f}% (file read back), "
             f"{base_bytes:,} -> {comp_bytes:,} bytes = {base_bytes / comp_bytes:.1f}x in {seconds:.0f} s "
             f"({time.process_time() - cpu0:.0f} CPU s on {torch.get_num_threads()} threads)")
    if html:
        from torchshrink.report import report as html_report

        html_report(out, before=checkpoint if checkpoint is not None else before_model, out=html,
                    example=x[:1], evaluate=accuracy, stages=rows, recipe=rec)
        out_report["html"] = str(html)
        print_fn(f"wrote the report page {html}")
    if report:
        write_text(report, json.dumps(out_report, indent=2), "--report")
        print_fn(f"wrote {out} and {report}")
    else:
        print_fn(f"wrote {out}")
    return out_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_baseline(p, model_names(), data_names())
    p.add_argument("--recipe", required=True,
                   help="YAML recipe: a file, or a bundled name such as deep_compression_lenet300")
    p.add_argument("--out", required=True, help="compressed artifact to write (F.tsz)")
    options.add_report(p)
    options.add_html(p)
    options.add_json(p)


def run(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout)

    rep = run_compress(model_name=args.model, data_name=args.data, recipe=args.recipe, out=args.out,
                       report=args.report, html=args.html, checkpoint=args.checkpoint, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, seed=args.seed, progress=not args.quiet, print_fn=say)
    if args.json:
        print(json.dumps(rep, indent=2))
    return 0

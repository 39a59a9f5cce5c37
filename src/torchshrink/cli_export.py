"""`torchshrink export` and `torchshrink bench` (registered in cli.py's export and bench sections).

    torchshrink export lenet.tsz --format onnx --out lenet.onnx
    torchshrink bench lenet.tsz --runtime torch,onnxruntime --batch 1,32

Both take an artifact file or a reference model name. When the artifact records the data set
it was trained on, its test split is the check data, so the parity check also compares
accuracy in PyTorch and in the runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchshrink.errors import ConfigError, did_you_mean

__all__ = ["export_args", "cmd_export", "bench_args", "cmd_bench", "run_bench"]


def _target(target: str, data: str | None, batch: int) -> tuple[nn.Module, torch.Tensor, DataLoader | None]:
    """(model, example batch, labelled check loader or None) for a file or a model name."""
    from torchshrink import models
    from torchshrink.cli import DATA_SEED, _reference_or_file

    kind, model, info = _reference_or_file(target)
    meta = (info.metadata or {}) if info is not None else {}
    data_name = data or meta.get("data")
    loader = None
    if data_name:
        from torchshrink import data as ts_data

        if data_name not in ts_data.names():
            raise ConfigError(f"unknown data set {data_name!r}." + did_you_mean(data_name, ts_data.names()))
        splits = ts_data.load(data_name, seed=int(meta.get("data_seed", DATA_SEED)))
        loader = DataLoader(splits.test, batch_size=250)
        example = splits.test.tensors[0][:batch]
    else:
        example = models.example_input(model, batch)
    return model.eval(), example, loader


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="artifact file (.tsz) or reference model name")
    p.add_argument("--out", required=True, help="file to write (model.onnx or model.pt2)")
    p.add_argument("--format", default=None, help="onnx or pt2 (default: from the --out suffix, else onnx)")
    p.add_argument("--data", default=None, help="data set for the check (default: the one the artifact records)")
    p.add_argument("--batch", type=int, default=2, help="example batch size used for tracing (default 2)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_export(args: argparse.Namespace) -> int:
    from torchshrink.export import FORMATS, export

    fmt = args.format or ("pt2" if str(args.out).endswith(".pt2") else "onnx")
    if fmt not in FORMATS:  # before loading anything
        raise ConfigError(f"unsupported export format {fmt!r}; supported formats: {', '.join(FORMATS)}."
                          + did_you_mean(fmt, FORMATS))
    model, example, loader = _target(args.target, args.data, args.batch)
    result = export(model, args.out, example=example, format=fmt, check_data=loader,  # type: ignore[arg-type]
                    opset=args.opset)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"wrote {result.path} ({result.bytes:,} bytes, {result.format}, {result.form} form)")
        if result.swapped:
            print(f"  export forms: {len(result.swapped)} layers ({', '.join(sorted(set(result.swapped.values())))})")
        if result.parity is not None:
            print(f"  check: {result.parity.summary()}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"--batch must be comma-separated integers like 1,32, got {text!r}") from e
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--batch must be positive integers like 1,32, got {text!r}")
    return values


def bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="artifact file (.tsz) or reference model name")
    p.add_argument("--runtime", default="torch,onnxruntime",
                   help="torch, onnxruntime, or both comma-separated (default both)")
    p.add_argument("--batch", default="1,32", help="batch sizes, comma-separated (default 1,32)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    p.add_argument("--threads", type=int, default=1, help="threads for every runtime (default 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run_bench(model: nn.Module, example: torch.Tensor, *, runtimes: list[str], batches: list[int],
              rounds: int = 15, threads: int | None = 1) -> dict[str, Any]:
    """Latency of `model` per runtime and batch size, measured side by side."""
    from torchshrink.export import export
    from torchshrink.export.latency import (
        RUNTIMES,
        Target,
        interleaved,
        ort_target,
        table,
        torch_target,
    )

    for r in runtimes:
        if r not in RUNTIMES:
            raise ConfigError(f"unknown runtime {r!r}; runtimes: {', '.join(RUNTIMES)}." + did_you_mean(r, RUNTIMES))
    targets: list[Target] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        parity = None
        if "onnxruntime" in runtimes:
            parity = export(model, path, example=example[: max(1, min(len(example), 2))]).parity
        for b in batches:
            reps = -(-b // example.shape[0])
            x = torch.cat([example] * reps)[:b]
            if "torch" in runtimes:
                targets.append(torch_target(model, (x,), label=f"torch b={b}"))
            if "onnxruntime" in runtimes:
                targets.append(ort_target(path, (x,), threads=threads, label=f"onnxruntime b={b}"))
        stats = interleaved(targets, rounds=rounds, threads=threads)
    rows = [(t.label, stats[t.label]) for t in targets]
    return {"table": table(rows), "rows": [{"target": k, "runtime": t.runtime, **v.to_dict()}
                                           for (k, v), t in zip(rows, targets)],
            "parity": parity.to_dict() if parity else None}


def cmd_bench(args: argparse.Namespace) -> int:
    runtimes = [r.strip() for r in str(args.runtime).replace("|", ",").split(",") if r.strip()]
    batches = _int_list(args.batch)
    model, example, _ = _target(args.target, None, max(batches))
    out = run_bench(model, example, runtimes=runtimes, batches=batches, rounds=args.rounds, threads=args.threads)
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "table"}, indent=2))
    else:
        print(out["table"])
    return 0

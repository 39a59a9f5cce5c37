"""`torchshrink bench`: latency in PyTorch, ONNX Runtime and the edge runtimes, side by side.

    torchshrink bench lenet.tsz --runtime torch,onnxruntime --batch 1,32
    torchshrink bench lenet.tsz --runtime torch,onnxruntime,litert,executorch --batch 1

With the torch runtime, an artifact is timed three ways in the same interleaved rounds: as
loaded (its training form), in its inference form (`ts.for_inference` at that batch), and,
where the file names a reference model, as that model in fp32 (the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

import torchshrink.cli.options as options
from torchshrink.cli.export import target
from torchshrink.errors import ConfigError, did_you_mean

NAME = "bench"
HELP = "latency in PyTorch, ONNX Runtime, LiteRT and ExecuTorch, side by side (median and spread)"
# Edge runtimes run static-shape files: one file per batch size (export/edge.py).
EDGE_RUNTIMES = {"litert": "tflite", "executorch": "pte"}

__all__ = ["run_bench", "add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="artifact file (.tsz) or reference model name")
    p.add_argument("--runtime", default="torch,onnxruntime",
                   help="comma-separated: torch, onnxruntime, litert (extra litert), executorch (extra "
                        "executorch) (default torch,onnxruntime)")
    p.add_argument("--batch", type=options.batch_list, default=[1, 32],
                   help="batch sizes latency is measured at, comma-separated (default 1,32)")
    p.add_argument("--rounds", type=options.positive_int, default=15, help="interleaved rounds (default 15)")
    p.add_argument("--threads", type=options.positive_int, default=1, help="threads for every runtime (default 1)")
    options.add_json(p)


def runtimes_of(text: str) -> list[str]:
    from torchshrink.export.latency import RUNTIMES as BASE

    RUNTIMES = (*BASE, *EDGE_RUNTIMES)
    runtimes = [r.strip() for r in text.replace("|", ",").split(",") if r.strip()]
    for r in runtimes or [text]:
        if r not in RUNTIMES:
            raise ConfigError(f"unknown runtime {r!r}; runtimes: {', '.join(RUNTIMES)}." + did_you_mean(r, RUNTIMES))
    return runtimes


def run_bench(model: Any, example: Any, *, runtimes: list[str], batches: list[int],
              rounds: int = 15, threads: int | None = 1, baseline: Any = None,
              inference: bool = True) -> dict[str, Any]:
    """Latency of `model` per runtime and batch size, measured side by side; with the torch
    runtime also its inference form (`inference`) and an fp32 `baseline` model when given."""
    import torch

    from torchshrink.export import export
    from torchshrink.export.latency import Target, interleaved, ort_target, table, torch_target
    from torchshrink.infer import for_inference

    runtimes_of(",".join(runtimes))
    targets: list[Target] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        parity = None
        edge_parity: dict[str, Any] = {}
        if "onnxruntime" in runtimes:
            parity = export(model, path, example=example[: max(1, min(len(example), 2))]).parity
        for b in batches:
            reps = -(-b // example.shape[0])
            x = torch.cat([example] * reps)[:b]
            if "torch" in runtimes:
                if baseline is not None:
                    targets.append(torch_target(baseline, (x,), label=f"torch fp32 baseline b={b}"))
                targets.append(torch_target(model, (x,), label=f"torch b={b}"))
                if inference:
                    fast = for_inference(model, example=x)
                    targets.append(torch_target(fast, (x,), label=f"torch inference form b={b}"))
            if "onnxruntime" in runtimes:
                targets.append(ort_target(path, (x,), threads=threads, label=f"onnxruntime b={b}"))
            for runtime, fmt in EDGE_RUNTIMES.items():
                if runtime in runtimes:
                    edge_path = os.path.join(tmp, f"model_b{b}.{fmt}")
                    edge_parity[runtime] = edge_parity.get(runtime) or export(
                        model, edge_path, example=x, format=fmt).parity  # type: ignore[arg-type]
                    targets.append(_edge_target(runtime, edge_path, x, threads))
        stats = interleaved(targets, rounds=rounds, threads=threads)
    rows = [(t.label, stats[t.label]) for t in targets]
    return {"table": table(rows), "rows": [{"target": k, "runtime": t.runtime, **v.to_dict()}
                                           for (k, v), t in zip(rows, targets)],
            "parity": parity.to_dict() if parity else None,
            "edge_parity": {k: v.to_dict() for k, v in edge_parity.items() if v is not None}}


def fp32_baseline(name: str, example: Any) -> Any:
    """The fp32 reference model an artifact was made from (same architecture, untrained
    weights: latency does not depend on their values), or None when the file names none or
    its recorded structure changed the input (then the reference would time another model)."""
    import torch

    import torchshrink as ts
    from torchshrink import models

    if not os.path.isfile(name):
        return None
    info = ts.read_info(name)
    if not info.model_name or info.model_name not in models.names():
        return None
    model = models.create(info.model_name, **(info.model_kwargs or {})).eval()
    try:
        with torch.no_grad():
            model(example[:1])
    except RuntimeError:
        return None
    return model


def _edge_target(runtime: str, path: str, x: Any, threads: int | None) -> Any:
    b = int(x.shape[0])
    if runtime == "litert":
        from torchshrink.export.litert import litert_target

        return litert_target(path, (x,), threads=threads, label=f"litert b={b}")
    from torchshrink.export.executorch import executorch_target

    return executorch_target(path, (x,), threads=threads, label=f"executorch b={b}")


def run(args: argparse.Namespace) -> int:
    runtimes = runtimes_of(str(args.runtime))
    model, example, _ = target(args.target, None, max(args.batch))
    out = run_bench(model, example, runtimes=runtimes, batches=args.batch, rounds=args.rounds,
                    threads=args.threads, baseline=fp32_baseline(args.target, example))
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "table"}, indent=2))
    else:
        print(out["table"])
    return 0

"""Edge runtimes side by side: PyTorch, ONNX Runtime, LiteRT and ExecuTorch (XNNPACK).

For lenet5, resnet_small and mobilenet_small (ts.models, trained briefly on mnist5k), in
float32 and in static int8 (ts.StaticInt8, our calibrated scales in every file):

- parity of each exported file against the PyTorch model on the 1,000 mnist5k test images,
  at batch 1: top-1 agreement (target >= 99.5%), max abs error, accuracy on both sides;
- latency at batch 1, one thread per runtime, every (model form x runtime) of a model timed in
  the same interleaved rounds (medians over all timed calls);
- file sizes per runtime beside our .tsz artifact.

    python bench/bench_edge.py            # full run
    python bench/bench_edge.py --quick    # one epoch, fewer rounds, 200 test images

Needs the litert and executorch extras. Writes bench/results/edge.json and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torchshrink as ts  # noqa: E402
from torchshrink.export.check import compare  # noqa: E402
from torchshrink.export.executorch import ExecuTorchRunner, executorch_target, set_threads  # noqa: E402
from torchshrink.export.latency import interleaved, ort_target, torch_target  # noqa: E402
from torchshrink.export.litert import LiteRTRunner, litert_target  # noqa: E402
from torchshrink.export.onnx import OrtRunner  # noqa: E402
from torchshrink.export.prepare import prepare  # noqa: E402

MODELS = ("lenet5", "resnet_small", "mobilenet_small")
AGREEMENT_TARGET = 99.5
FORMATS = {"onnxruntime": "onnx", "litert": "tflite", "executorch": "pte"}


def _parity(reference: torch.nn.Module, runner: Any, test: list[Any], runtime: str, quantized: bool) -> dict[str, Any]:
    report = compare(reference, runner, test, kind="quantized" if quantized else "float", runtime=runtime)
    d = report.to_dict()
    return {k: d[k] for k in ("samples", "top1_agreement", "max_abs_error", "relative_error",
                              "accuracy_reference", "accuracy_exported")}


def run_model(name: str, splits: Any, *, epochs: int, rounds: int, n_test: int, tmp: str) -> dict[str, Any]:
    train, _, _ = ts.data.loaders(splits, batch_size=64, eval_batch_size=250)
    torch.manual_seed(0)
    model = ts.models.create(name)
    t0 = time.perf_counter()
    ts.fit(model, train, epochs=epochs, lr=2e-3, progress=False)
    train_s = time.perf_counter() - t0
    model.eval()
    calib = [x for x, _ in ts.data.batches(train, 8)]
    int8 = ts.quantize(copy.deepcopy(model), ts.StaticInt8(calibration_batches=8), calibration=calib, progress=False)
    xs, ys = splits.test.tensors[0][:n_test], splits.test.tensors[1][:n_test]
    test = [((xs[i:i + 1],), ys[i:i + 1]) for i in range(n_test)]  # batch 1, as the edge files run
    x1 = xs[:1]
    out: dict[str, Any] = {"train_epochs": epochs, "train_seconds": round(train_s, 1), "forms": {}}
    targets = []
    for form, m in (("fp32", model), ("int8", int8)):
        quantized = form == "int8"
        tsz = os.path.join(tmp, f"{name}_{form}.tsz")
        row: dict[str, Any] = {"bytes": {"tsz": ts.save(m, tsz)}, "parity": {}, "export_seconds": {}}
        reference = prepare(m, swap=False, upcast=False).module
        for runtime, fmt in FORMATS.items():
            path = os.path.join(tmp, f"{name}_{form}.{fmt}")
            t0 = time.perf_counter()
            # check=False: the full 1,000-image comparison below is the check, at batch 1.
            ts.export(m, path, example=x1, format=fmt, check=False)  # type: ignore[arg-type]
            row["export_seconds"][runtime] = round(time.perf_counter() - t0, 1)
            row["bytes"][fmt] = os.path.getsize(path)
            runner = {"onnxruntime": lambda p: OrtRunner(p, threads=1), "litert": lambda p: LiteRTRunner(p, threads=1),
                      "executorch": lambda p: ExecuTorchRunner(p)}[runtime](path)
            row["parity"][runtime] = _parity(reference, runner, test, runtime, quantized)
            make = {"onnxruntime": ort_target, "litert": litert_target, "executorch": executorch_target}[runtime]
            targets.append(make(path, (x1,), threads=1, label=f"{form} {runtime}"))
        targets.append(torch_target(m, (x1,), label=f"{form} torch"))
        out["forms"][form] = row
    set_threads(1)
    stats = interleaved(targets, rounds=rounds, threads=1)
    for t in targets:
        form, runtime = t.label.split(" ")
        out["forms"][form].setdefault("latency_ms", {})[runtime] = stats[t.label].to_dict()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=str(ROOT / "bench/results/edge.json"))
    args = ap.parse_args()
    epochs, rounds, n_test = (1, 5, 200) if args.quick else (2, 15, 1000)
    torch.manual_seed(0)
    splits = ts.data.load("mnist5k", seed=0)
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(f"== {name}", flush=True)
            results[name] = run_model(name, splits, epochs=epochs, rounds=rounds, n_test=n_test, tmp=tmp)
    from importlib.metadata import version

    doc = {
        "protocol": {
            "data": f"mnist5k (seed 0), {n_test} test images at batch 1; training {epochs} epochs, lr 2e-3, seed 0",
            "int8": "ts.StaticInt8(observer='minmax', calibration_batches=8) on 8 training batches of 64",
            "latency": f"batch 1, 1 thread per runtime, {rounds} interleaved rounds x 3 calls per model, "
                       "medians over all timed calls",
            "parity": "top-1 agreement and max abs error against the same model in PyTorch (its int8 kernels for int8)",
            "quick": args.quick,
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        },
        "versions": {"torch": torch.__version__, **{p: version(p) for p in (
                         "onnxruntime", "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "executorch")},
                     "python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "agreement_target": AGREEMENT_TARGET,
        "models": results,
    }
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print_tables(doc)


def print_tables(doc: dict[str, Any]) -> None:
    runtimes = ("torch", *FORMATS)
    print(f"\nloadavg {doc['protocol']['loadavg_before']} -> {doc['protocol']['loadavg_after']}")
    head = f"{'model':<16} {'form':<5} " + " ".join(f"{r + ' ms (IQR)':>22}" for r in runtimes)
    print(head)
    for name, r in doc["models"].items():
        for form, row in r["forms"].items():
            cells = [row["latency_ms"][rt] for rt in runtimes]
            print(f"{name:<16} {form:<5} " + " ".join(f"{c['median_ms']:>13.3f} ({c['iqr_ms']:>6.3f})" for c in cells))
    print(f"\n{'model':<16} {'form':<5} {'runtime':<12} {'agree %':>8} {'max err':>9} {'acc torch':>9} {'acc file':>9}")
    for name, r in doc["models"].items():
        for form, row in r["forms"].items():
            for rt, p in row["parity"].items():
                print(f"{name:<16} {form:<5} {rt:<12} {p['top1_agreement']:>8.2f} {p['max_abs_error']:>9.2e} "
                      f"{p['accuracy_reference']:>9.2f} {p['accuracy_exported']:>9.2f}")
    print(f"\n{'model':<16} {'form':<5} " + " ".join(f"{k:>9}" for k in ("tsz", "onnx", "tflite", "pte")))
    for name, r in doc["models"].items():
        for form, row in r["forms"].items():
            print(f"{name:<16} {form:<5} " + " ".join(f"{row['bytes'][k]:>9,}" for k in ("tsz", "onnx", "tflite", "pte")))


if __name__ == "__main__":
    main()

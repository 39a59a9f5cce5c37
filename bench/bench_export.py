"""Deployment benchmark: compressed models exported to ONNX and run in ONNX Runtime.

1. Static int8 resnet_small (trained briefly on mnist5k) as a QDQ graph built from OUR
   calibrated scales, against the float32 ONNX model, both in ONNX Runtime on this CPU:
   latency at batch 1 and 32 (interleaved rounds, medians, one thread each) and test accuracy.
   Side by side: the same models in PyTorch (fbgemm int8 kernels), and a peer: ONNX Runtime's
   own `quantize_static` on the float ONNX file with the same calibration batches.
   Target: int8 >= 1.5x faster than float32 in ORT at batch 32, accuracy within 0.3 points.
2. Deep Compression lenet300 (the shipped recipe, via torchshrink's compress runner): the
   .tsz file read back and its ONNX export must reach the same test accuracy.

    python bench/bench_export.py            # full run (a few minutes)
    python bench/bench_export.py --quick    # smoke run: fewer epochs and rounds

Writes bench/results/export.json and prints the tables.
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

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torchshrink as ts  # noqa: E402
from torchshrink.export.latency import interleaved, ort_target, table, torch_target  # noqa: E402
from torchshrink.export.onnx import OrtRunner  # noqa: E402

SPEEDUP_TARGET = 1.5
ACCURACY_BOUND = 0.3  # points


def ort_accuracy(path: str, loader: DataLoader) -> float:
    runner = OrtRunner(path)
    correct = total = 0
    for x, y in loader:
        pred = runner((x,))[0].argmax(-1)
        correct += int((torch.from_numpy(pred) == y).sum())
        total += y.numel()
    return 100.0 * correct / total


def ort_quantize_static(float_path: str, out_path: str, calibration: list[torch.Tensor]) -> None:
    """The peer: ONNX Runtime's own static quantization (QDQ, per-channel int8 weights, uint8
    activations, min-max calibration) on the float ONNX file, with our calibration batches."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": x.numpy()} for x in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(float_path, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def static_int8_resnet(quick: bool, tmp: str) -> dict[str, Any]:
    torch.manual_seed(0)
    splits = ts.data.load("mnist5k", seed=0)
    train, _, test = ts.data.loaders(splits, batch_size=64, eval_batch_size=250)
    model = ts.models.create("resnet_small")
    t0 = time.perf_counter()
    ts.fit(model, train, epochs=1 if quick else 3, lr=2e-3, progress=False)
    train_s = time.perf_counter() - t0
    model.eval()
    calib = [x for x, _ in ts.data.batches(train, 8)]
    q = ts.quantize(copy.deepcopy(model), ts.StaticInt8(calibration_batches=8), calibration=[(x,) for x in calib],
                    progress=False).eval()
    example = splits.test.tensors[0][:2]
    f32_path, i8_path, peer_path = (os.path.join(tmp, n) for n in ("fp32.onnx", "int8.onnx", "ort_int8.onnx"))
    r32 = ts.export(model, f32_path, example=example, check_data=test)
    r8 = ts.export(q, i8_path, example=example, check_data=test)
    ort_quantize_static(f32_path, peer_path, calib)
    acc = {
        "torch fp32": ts.evaluate(model, test)["accuracy"],
        "torch int8 (ours, fbgemm)": ts.evaluate(q, test)["accuracy"],
        "onnxruntime fp32": ort_accuracy(f32_path, test),
        "onnxruntime int8 (ours, QDQ)": ort_accuracy(i8_path, test),
        "onnxruntime int8 (ORT quantize_static)": ort_accuracy(peer_path, test),
    }
    rows: list[tuple[str, Any]] = []
    for b in (1, 32):
        x = splits.test.tensors[0][:b]
        targets = [
            ort_target(f32_path, (x,), threads=1, label=f"onnxruntime fp32 b={b}"),
            ort_target(i8_path, (x,), threads=1, label=f"onnxruntime int8 (ours) b={b}"),
            ort_target(peer_path, (x,), threads=1, label=f"onnxruntime int8 (ORT peer) b={b}"),
            torch_target(model, (x,), label=f"torch fp32 b={b}"),
            torch_target(q, (x,), label=f"torch int8 (ours) b={b}"),
        ]
        stats = interleaved(targets, rounds=5 if quick else 20, per_round=3, threads=1)
        rows += [(t.label, stats[t.label]) for t in targets]
    med = {label: s.median_ms for label, s in rows}
    speedup32 = med["onnxruntime fp32 b=32"] / med["onnxruntime int8 (ours) b=32"]
    drop = acc["onnxruntime fp32"] - acc["onnxruntime int8 (ours, QDQ)"]
    return {
        "train_epochs": 1 if quick else 3, "train_seconds": train_s,
        "files": {"fp32_bytes": r32.bytes, "int8_bytes": r8.bytes, "ort_peer_int8_bytes": os.path.getsize(peer_path)},
        "parity": {"fp32": r32.parity.to_dict() if r32.parity else None,
                   "int8": r8.parity.to_dict() if r8.parity else None},
        "accuracy": acc,
        "latency": [{"target": label, **s.to_dict()} for label, s in rows],
        "latency_table": table(rows),
        "speedup_int8_vs_fp32_ort_b32": speedup32,
        "speedup_int8_vs_fp32_ort_b1": med["onnxruntime fp32 b=1"] / med["onnxruntime int8 (ours) b=1"],
        "accuracy_drop_points": drop,
        "meets_speedup": speedup32 >= SPEEDUP_TARGET,
        "meets_accuracy": abs(drop) <= ACCURACY_BOUND,
    }


def deep_compression_lenet300(quick: bool, tmp: str) -> dict[str, Any]:
    import yaml

    from torchshrink.cli.compress import run_compress

    recipe_path = ROOT / "src" / "torchshrink" / "recipes" / "deep_compression_lenet300.yaml"
    recipe: str = str(recipe_path)
    if quick:  # every fine-tune cut to one epoch
        rec = ts.load_recipe(recipe_path).to_dict()
        for stage in rec["stages"]:
            if "finetune" in stage:
                stage["finetune"]["epochs"] = 1
        recipe = yaml.safe_dump(rec)
    tsz = os.path.join(tmp, "lenet300_dc.tsz")
    t0 = time.perf_counter()
    run_compress(model_name="lenet300", data_name="mnist5k", recipe=recipe, out=tsz, epochs=3 if quick else None,
                 progress=False, print_fn=lambda s: None)
    compress_s = time.perf_counter() - t0
    splits = ts.data.load("mnist5k", seed=0)
    test = DataLoader(splits.test, batch_size=250)
    loaded = ts.load(tsz).eval()
    acc_tsz = ts.evaluate(loaded, test)["accuracy"]
    onnx_path = os.path.join(tmp, "lenet300_dc.onnx")
    result = ts.export(loaded, onnx_path, example=splits.test.tensors[0][:2], check_data=test)
    acc_onnx = ort_accuracy(onnx_path, test)
    return {"compress_seconds": compress_s, "tsz_bytes": os.path.getsize(tsz), "onnx_bytes": result.bytes,
            "accuracy_tsz_pytorch": acc_tsz, "accuracy_onnx_onnxruntime": acc_onnx,
            "test_samples": len(splits.test), "same_accuracy": acc_tsz == acc_onnx,
            "parity": result.parity.to_dict() if result.parity else None}


def _latency_table(rows: list[dict[str, Any]]) -> str:
    import dataclasses

    from torchshrink.measure.latency import LatencyStats

    names = {f.name for f in dataclasses.fields(LatencyStats)}
    return table([(r["target"], LatencyStats(**{k: v for k, v in r.items() if k in names})) for r in rows])


def print_tables(out: dict[str, Any]) -> None:
    s8, dc = out["static_int8_resnet_small"], out["deep_compression_lenet300"]
    print("== static int8 resnet_small (mnist5k), 1 thread per runtime, interleaved rounds ==")
    print(_latency_table(s8["latency"]))
    print()
    print(f"{'accuracy on mnist5k test (1000)':<42} {'%':>7}")
    for k, v in s8["accuracy"].items():
        print(f"{k:<42} {v:>7.2f}")
    print()
    print(f"files: fp32 ONNX {s8['files']['fp32_bytes']:,} B, int8 ONNX (ours) {s8['files']['int8_bytes']:,} B, "
          f"int8 ONNX (ORT peer) {s8['files']['ort_peer_int8_bytes']:,} B")
    print(f"int8 vs fp32 in ONNX Runtime: {s8['speedup_int8_vs_fp32_ort_b32']:.2f}x at batch 32 "
          f"(target >= {SPEEDUP_TARGET}x: {'MET' if s8['meets_speedup'] else 'NOT MET'}), "
          f"{s8['speedup_int8_vs_fp32_ort_b1']:.2f}x at batch 1; accuracy change "
          f"{-s8['accuracy_drop_points']:+.2f} points (bound {ACCURACY_BOUND}: "
          f"{'MET' if s8['meets_accuracy'] else 'NOT MET'})")
    print()
    print("== Deep Compression lenet300 (shipped recipe): .tsz vs its ONNX export ==")
    print(f"{'file':<28} {'bytes':>10} {'runtime':>12} {'test accuracy %':>16}")
    print(f"{'lenet300_dc.tsz':<28} {dc['tsz_bytes']:>10,} {'PyTorch':>12} {dc['accuracy_tsz_pytorch']:>16.2f}")
    print(f"{'lenet300_dc.onnx':<28} {dc['onnx_bytes']:>10,} {'ONNX Runtime':>12} {dc['accuracy_onnx_onnxruntime']:>16.2f}")
    print(f"same accuracy: {'YES' if dc['same_accuracy'] else 'NO'} ({dc['test_samples']} test images)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer epochs and timing rounds")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "export.json"))
    ap.add_argument("--show", action="store_true", help="print the tables of an existing --out file and exit")
    args = ap.parse_args()
    if args.show:
        print_tables(json.loads(Path(args.out).read_text()))
        return 0
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        s8 = static_int8_resnet(args.quick, tmp)
        dc = deep_compression_lenet300(args.quick, tmp)
    out = {"quick": args.quick, "machine": {"cpu": platform.processor() or platform.machine(),
                                            "cores": os.cpu_count(), "torch": torch.__version__,
                                            "onnxruntime": onnxruntime.__version__},
           "static_int8_resnet_small": {k: v for k, v in s8.items() if k != "latency_table"},
           "deep_compression_lenet300": dc}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))

    print_tables(out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

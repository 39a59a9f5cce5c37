"""In the browser: download size and latency of compressed models in ONNX Runtime Web.

LeNet-5 and LeNet-300-100, trained briefly on the bundled MNIST sample (mnist5k, seed 0), in
float32, static int8 (QDQ, our calibrated scales) and int4 weight-only forms, each exported
with `format="web"` and its page run in headless Chromium (WebAssembly backend, one thread,
SIMD). Per inference at batch 1: every round loads every variant's page once, in turn
(interleaved, so load drifts hit all alike); each page times `ROUNDS` x `PER_ROUND`
back-to-back inferences after warm-up, and the figure is the median over all pages' rounds.
Alongside: the ONNX file (what a page downloads for the model, raw and gzip -9), the page's
agreement with ONNX Runtime in Python on 64 test rows, and native ONNX Runtime (Python, one
thread, interleaved) for scale.

    python bench/bench_web.py            # full run (a few minutes)
    python bench/bench_web.py --quick    # smoke run

Needs chromium and onnxruntime-web (installed with npm into torchshrink's npm cache when
absent). Writes bench/results/web.json and docs/web.png (the int8 LeNet-5 page), prints a table.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torchshrink as ts  # noqa: E402
from _common import table  # noqa: E402
from torchshrink import models  # noqa: E402
from torchshrink.export.browser import find_chromium, run_page  # noqa: E402
from torchshrink.export.latency import interleaved, ort_target  # noqa: E402
from torchshrink.export.onnx import OrtRunner  # noqa: E402
from torchshrink.export.web import (  # noqa: E402
    DEFAULT_NPM_CACHE,
    ORT_WEB_FILES,
    find_ort_web,
    npm_install_ort_web,
    read_inputs,
    write_inputs,
)

ROWS = 64
ROUNDS, PER_ROUND = 30, 20
WARMUP_MS = 2000  # past the browser's swap from baseline to optimized WebAssembly code


def trained(name: str, splits: Any, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    train, _, _ = ts.data.loaders(splits, batch_size=64)
    model = models.create(name)
    ts.fit(model, train, epochs=epochs, lr=1e-3, progress=False)
    return model.eval()


def variants(splits: Any, epochs: int) -> dict[str, torch.nn.Module]:
    train, _, _ = ts.data.loaders(splits, batch_size=64)
    out: dict[str, torch.nn.Module] = {}
    for name in ("lenet5", "lenet300"):
        model = trained(name, splits, epochs)
        out[f"{name} fp32"] = model
        out[f"{name} int8"] = ts.quantize(copy.deepcopy(model), ts.StaticInt8(calibration_batches=8),
                                          calibration=train, progress=False)
        out[f"{name} int4 weights"] = ts.quantize(copy.deepcopy(model), ts.WeightOnly(bits=4, group_size=None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    chromium = find_chromium()
    if chromium is None:
        sys.exit("bench_web needs Chromium (apt-get install chromium)")
    page_rounds = 2 if args.quick else 6
    rounds, per_round = (10, 10) if args.quick else (ROUNDS, PER_ROUND)
    try:
        ort_web, npm_s = find_ort_web(DEFAULT_NPM_CACHE), None  # already installed: no npm run to time
    except ts.ConfigError:
        start = time.perf_counter()
        ort_web = npm_install_ort_web()
        npm_s = time.perf_counter() - start
    splits = ts.data.load("mnist5k", seed=0)
    x = splits.test.tensors[0][:ROWS]
    forms = variants(splits, 1 if args.quick else 3)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs: dict[str, Path] = {}
        for label, model in forms.items():
            d = Path(tmp) / label.replace(" ", "_")
            r = ts.export(model, d, example=x, format="web", ort_web=ort_web.dist)
            # a LeNet-300-100 inference is ~20 us: longer rounds, so the browser's 0.1 ms clock
            # granularity is a small part of each
            write_inputs(d / "inputs.json", {"input": x}, batch=1, warmup=20, warmup_ms=WARMUP_MS, rounds=rounds,
                         per_round=per_round * (1 if label.startswith("lenet5") else 3))
            onnx_bytes = (d / "model.onnx").read_bytes()
            results[label] = {"onnx_bytes": r.bytes, "onnx_gzip_bytes": len(gzip.compress(onnx_bytes, 9)),
                              "form": r.form, "round_ms": []}
            dirs[label] = d
        runtime_bytes = {f: (ort_web.dist / f).stat().st_size for f in ORT_WEB_FILES}
        load_before = os.getloadavg()
        for i in range(page_rounds):
            for label, d in dirs.items():
                shot = ROOT / "docs" / "web.png" if (label == "lenet5 int8" and i == page_rounds - 1) else None
                page = run_page(d, chromium=chromium, screenshot=shot)
                if page["status"] != "ok":
                    sys.exit(f"{label}: the page failed: {page.get('error')}")
                res = results[label]
                res["round_ms"] += page["latency_ms"]["round_ms"]
                res.setdefault("session_ms", []).append(page["session_ms"])
                if i == 0:  # the page's outputs against ONNX Runtime in Python on the same file and rows
                    manifest = json.loads((d / "model.json").read_text())
                    want = OrtRunner(d / "model.onnx", threads=1).run_numpy(read_inputs(d / "inputs.json", manifest))[0]
                    o = page["outputs"][manifest["outputs"][0]["name"]]
                    got = np.asarray(o["data"], dtype=np.float32).reshape(o["dims"])
                    res["top1_agreement_vs_ort_python"] = 100.0 * float(np.mean(got.argmax(1) == want.argmax(1)))
                    res["max_abs_error_vs_ort_python"] = float(np.abs(got - want).max())
                    versions = {"browser": page["browser"], "onnxruntime_web": page["versions"]["onnxruntime_web"],
                                "user_agent": page["versions"]["user_agent"], "backend": page["backend"],
                                "threads": page["threads"]}
        load_after = os.getloadavg()
        native = interleaved([ort_target(str(d / "model.onnx"), (x[:1],), threads=1, label=k)
                              for k, d in dirs.items()],
                             rounds=rounds, per_round=per_round, threads=1)
    for label, res in results.items():
        ms = res.pop("round_ms")
        q = statistics.quantiles(ms, n=4)
        res["browser_ms"] = {"median": statistics.median(ms), "iqr": q[2] - q[0],
                             "p10": statistics.quantiles(ms, n=10)[0], "min": min(ms), "max": max(ms),
                             "rounds": len(ms)}
        res["session_ms"] = statistics.median(res["session_ms"])
        res["native_ort_ms"] = native[label].median_ms

    rows = []
    for label, res in results.items():
        base = results[label.split()[0] + " fp32"]
        rows.append([label, f"{res['onnx_bytes']:,}", f"{res['onnx_gzip_bytes']:,}",
                     f"{res['browser_ms']['median']:.3f}", f"{res['browser_ms']['iqr']:.3f}",
                     f"{res['browser_ms']['min']:.3f}",
                     f"{base['browser_ms']['median'] / res['browser_ms']['median']:.2f}x",
                     f"{res['native_ort_ms']:.3f}", f"{res['top1_agreement_vs_ort_python']:.0f}%",
                     f"{res['max_abs_error_vs_ort_python']:.2g}"])
    header = ["model", "ONNX bytes", "gzip -9", "browser ms/inference", "IQR", "min", "speed vs fp32", "native ORT ms",
              "top-1 vs ORT", "max err vs ORT"]
    print(table(header, rows, title=f"{versions['browser']}, ONNX Runtime Web {versions['onnxruntime_web']} "
                                    f"(wasm, {versions['threads']} thread), batch 1"))
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after ({os.cpu_count()} CPUs); "
          "speed vs fp32 = fp32 median / this median")
    print(f"runtime files copied into every folder: {sum(runtime_bytes.values()):,} bytes "
          f"({', '.join(f'{k} {v:,}' for k, v in runtime_bytes.items())})")
    out = {
        "protocol": {"rows_checked": ROWS, "batch": 1, "pages_per_variant": page_rounds,
                     "rounds_per_page": rounds,
                     "inferences_per_round": {"lenet5": per_round, "lenet300": 3 * per_round}, "warmup_per_page": f"20 inferences and {WARMUP_MS} ms",
                     "interleaved": True, "data": "mnist5k seed 0 (test rows 0..63)", "train_epochs": 1 if args.quick else 3,
                     "seed": 0, "loadavg_before": load_before, "loadavg_after": load_after, "niceness": os.nice(0),
                     "native_ort": "onnxruntime (Python) CPU, 1 thread, interleaved, median", "quick": args.quick},
        "versions": {**versions, "onnxruntime": __import__("onnxruntime").__version__, "torch": torch.__version__},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "runtime_file_bytes": runtime_bytes, "npm_install_s": npm_s,  # None: the package was already in the cache
        "results": results,
    }
    dest = ROOT / "bench" / "results" / "web.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest.relative_to(ROOT)} and docs/web.png")


if __name__ == "__main__":
    main()

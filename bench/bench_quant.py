"""Quantization benchmark: int8 speed side by side, PTQ/QAT accuracy, AMP, and peers.

    python bench/bench_quant.py            # full run (trains the reference models; ~20 min on 2 busy cores)
    python bench/bench_quant.py --quick    # smoke run: few epochs and repeats

Writes bench/results/quant.json and prints the tables. All speed figures are medians of
interleaved repeats taken in this one run (fp32, ours and PyTorch's own path alternate), so
load from other processes hits every variant alike. Accuracy is top-1 on the mnist5k test
split (1,000 images: one image is 0.1 points).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchshrink as ts
from _common import table
from torchshrink import data, models
from torchshrink.train import evaluate, fit

warnings.filterwarnings("ignore")
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")  # NNCF compiles a CPU extension once

RESULTS = Path(__file__).resolve().parent / "results" / "quant.json"


# ----------------------------------------------------------------------------- helpers

def acc(model: nn.Module, loader: Any) -> float:
    return round(evaluate(model, loader)["accuracy"], 2)


def train_model(name: str, loaders: tuple, epochs: int, lr: float, amp: bool = False, seed: int = 0
                ) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = models.create(name)
    t0 = time.perf_counter()
    fit(model, loaders[0], val=loaders[1], epochs=epochs, lr=lr, amp=amp, progress=False, seed=seed)
    return model.eval(), time.perf_counter() - t0


# ----------------------------------------------------------------------------- speed

def bench_speed(threads: int, batches: tuple[int, ...], repeats: int, inner: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fp32 = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(4)]).eval()
    ours = ts.quantize(copy.deepcopy(fp32), ts.DynamicInt8())
    torch_ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8)
    variants: dict[str, nn.Module] = {"fp32": fp32, "ours DynamicInt8": ours, "torch.ao quantize_dynamic": torch_ao}
    out: dict[str, Any] = {"threads": threads, "repeats": repeats, "inner": inner, "by_batch": {}}
    for bs in batches:
        x = torch.randn(bs, 4096)
        times: dict[str, list[float]] = {k: [] for k in variants}
        with torch.inference_mode():
            for m in variants.values():  # warm up (prepacking, allocator)
                m(x)
            for _ in range(repeats):
                for k, m in variants.items():
                    t0 = time.perf_counter()
                    for _ in range(inner):
                        m(x)
                    times[k].append((time.perf_counter() - t0) / inner * 1e3)
            err = float((ours(x) - fp32(x)).norm() / fp32(x).norm())
        med = {k: statistics.median(v) for k, v in times.items()}
        out["by_batch"][str(bs)] = {
            "median_ms": med,
            "spread_ms": {k: [min(v), max(v)] for k, v in times.items()},
            "speedup_vs_fp32": med["fp32"] / med["ours DynamicInt8"],
            "speed_vs_torch_ao": med["torch.ao quantize_dynamic"] / med["ours DynamicInt8"],
            "torch_ao_speedup_vs_fp32": med["fp32"] / med["torch.ao quantize_dynamic"],
            "ours_relative_output_error": err,
        }
    return out


# ----------------------------------------------------------------------------- peers

def torchao_int8(model: nn.Module) -> nn.Module:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def torchao_int4(model: nn.Module) -> nn.Module:
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerAxis(0)))
    return model


def nncf_int8(model: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    import nncf

    return nncf.quantize(model, nncf.Dataset(calib), subset_size=sum(len(c) for c in calib))


def nncf_int4(model: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    import nncf

    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=-1, ratio=1.0,
                                 all_layers=True, dataset=nncf.Dataset(calib))


def run_peer(fn: Callable[[], nn.Module], loader: Any) -> dict[str, Any]:
    try:
        t0 = time.perf_counter()
        model = fn()
        return {"accuracy": acc(model, loader), "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as e:  # noqa: BLE001 - a peer that cannot run here is recorded, not fatal
        return {"accuracy": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                "trace": traceback.format_exc()[-1500:]}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"torch": torch.__version__}
    for name in ("torchao", "nncf"):
        try:
            out[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001
            out[name] = f"not importable: {type(e).__name__}: {e}"[:200]
    return out


# ----------------------------------------------------------------------------- tables

def render_speed(res: dict[str, Any]) -> str:
    rows = []
    for s in res["speed"]:
        for bs, r in s["by_batch"].items():
            m = r["median_ms"]
            rows.append([s["threads"], bs, f"{m['fp32']:.2f}", f"{m['ours DynamicInt8']:.2f}",
                         f"{m['torch.ao quantize_dynamic']:.2f}", f"{r['speedup_vs_fp32']:.2f}x",
                         f"{r['speed_vs_torch_ao']:.2f}x"])
    return ("\n## 4 x Linear(4096, 4096), CPU, median ms per forward (interleaved repeats)\n" +
            table(["threads", "batch", "fp32 ms", "ours DynamicInt8 ms", "torch.ao dynamic ms", "ours vs fp32",
                   "ours vs torch.ao"], rows))


def render_static(res: dict[str, Any]) -> str:
    rows = []
    for name, r in res["static_int8"].items():
        base, best = r["float"], r["picked_on_val"]
        rows.append([name, f"{base:.2f}", best, f"{r['int8']:.2f}", f"{r['drop']:+.2f}", "; ".join(r["execution"])])
        for obs, o in r["observers"].items():
            rows.append(["", "", f"  {obs}", f"{o['test']:.2f}", f"{base - o['test']:+.2f}", f"val {o['val']:.2f}"])
    return ("\n## StaticInt8 PTQ on mnist5k (test accuracy %, drop = float - int8; observer picked on val)\n" +
            table(["model", "float", "observer", "int8", "drop", "execution / note"], rows))


def render_int4(res: dict[str, Any]) -> str:
    r4, amp = res["int4_lenet300"], res["amp"]
    base = r4["float"]
    return ("\n## lenet300 on mnist5k: 4-bit weights (per output channel, symmetric; float = seed 0)\n" +
            table(["variant", "test acc", "vs float"], [
                ["float32", f"{base:.2f}", ""],
                ["PTQ int4 WeightOnly (mse clip)", f"{r4['ptq_int4_per_channel_mse']:.2f}", f"{0.0 - r4['ptq_drop']:+.2f}"],
                ["PTQ int4 WeightOnly (minmax)", f"{r4['ptq_int4_per_channel_minmax']:.2f}",
                 f"{r4['ptq_int4_per_channel_minmax'] - base:+.2f}"],
                ["QAT int4 (LSQ), packed", f"{r4['qat_int4_lsq']:.2f}", f"{0.0 - r4['qat_drop']:+.2f}"],
            ]) + f"\n\nAMP training, lenet300, mean over seeds {amp.get('seeds', [0])}: fp32 {amp['fp32']:.2f} "
            f"(per seed {amp.get('runs', {}).get('fp32')}), bf16 autocast {amp['amp_bf16']:.2f} "
            f"(per seed {amp.get('runs', {}).get('amp_bf16')}), difference {amp['difference']:+.2f}")


def render_peers(res: dict[str, Any]) -> str:
    rows = []
    for task, entries in res["peers"]["results"].items():
        base = res["peers"]["float"][task]
        rows.append([task, "float32", f"{base:.2f}", ""])
        for who, r in entries.items():
            a = r["accuracy"]
            rows.append(["", who, "n/a" if a is None else f"{a:.2f}",
                         r.get("error", "") if a is None else f"{a - base:+.2f}"])
    return "\n## Same PTQ task, side by side (test accuracy %)\n" + \
        table(["task", "method", "acc", "vs float / why not run"], rows)


def render(res: dict[str, Any]) -> str:
    parts = [render_speed(res)]
    for key, fn in (("static_int8", render_static), ("int4_lenet300", render_int4), ("peers", render_peers)):
        if key in res:
            parts.append(fn(res))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: few epochs and repeats")
    ap.add_argument("--threads", default="1", help="comma-separated torch thread counts for the speed table")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--show", metavar="JSON", help="print the tables of an earlier run's JSON and exit")
    args = ap.parse_args(argv)
    if args.show:
        shown = json.loads(Path(args.show).read_text())
        print(render(shown))
        return shown
    q = args.quick
    res: dict[str, Any] = {"quick": q, "versions": versions(), "machine": {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "quantized_engine": torch.backends.quantized.engine,
        "load_average_at_start": os.getloadavg()}}
    t_start = time.perf_counter()

    # 1. Speed: 4 x Linear(4096, 4096) at batch 1 and 16.
    speed = [bench_speed(int(t), (1, 16), repeats=5 if q else 21, inner=2 if q else 5)
             for t in args.threads.split(",")]
    torch.set_num_threads(int(args.threads.split(",")[0]))
    res["speed"] = speed
    print(render_speed(res), flush=True)

    # 2. Reference models on mnist5k.
    splits = data.load("mnist5k")
    loaders = data.loaders(splits, batch_size=128, eval_batch_size=1000)
    test = loaders[2]
    calib = [b for _, b in zip(range(8), loaders[0])]
    calib_x = [x for x, _ in calib]
    epochs = {"lenet300": 2 if q else 20, "lenet5": 1 if q else 8, "resnet_small": 1 if q else 4}
    trained: dict[str, nn.Module] = {}
    res["training"] = {}
    for name, lr in (("lenet300", 1e-3), ("lenet5", 1e-3), ("resnet_small", 2e-3)):
        model, secs = train_model(name, loaders, epochs[name], lr)
        trained[name] = model
        res["training"][name] = {"epochs": epochs[name], "lr": lr, "seconds": round(secs, 1),
                                 "test_accuracy": acc(model, test)}
        print(f"trained {name}: {res['training'][name]}", flush=True)

    # 3. StaticInt8 PTQ on lenet5 and resnet_small; observer picked on the validation split.
    res["static_int8"] = {}
    for name in ("lenet5", "resnet_small"):
        base = res["training"][name]["test_accuracy"]
        per_obs: dict[str, Any] = {}
        for obs in ("minmax", "moving_average", "percentile", "mse", "entropy"):
            qm = ts.quantize(copy.deepcopy(trained[name]), ts.StaticInt8(observer=obs), calibration=calib,
                             progress=False)
            per_obs[obs] = {"val": acc(qm, loaders[1]), "test": acc(qm, test)}
            executions = sorted({str(getattr(m, "execution", "")) for m in qm.modules()
                                 if type(m).__name__ == "StaticInt8Layer"})
        best = max(per_obs, key=lambda o: per_obs[o]["val"])
        drop = round(base - per_obs[best]["test"], 2)
        res["static_int8"][name] = {"float": base, "observers": per_obs, "picked_on_val": best,
                                    "int8": per_obs[best]["test"], "drop": drop, "execution": executions,
                                    "within_0.3": drop <= 0.3}
    print(render_static(res), flush=True)

    # 4. 4-bit weights on lenet300: PTQ, QAT; AMP training.
    base300 = res["training"]["lenet300"]["test_accuracy"]
    ptq4 = ts.quantize(copy.deepcopy(trained["lenet300"]), ts.WeightOnly(bits=4, group_size=None))
    ptq4_minmax = ts.quantize(copy.deepcopy(trained["lenet300"]),
                              ts.WeightOnly(bits=4, group_size=None, clip="minmax"))
    t0 = time.perf_counter()
    qat = ts.quantize(copy.deepcopy(trained["lenet300"]),
                      ts.QAT(bits=4, epochs=1 if q else 5, lr=2e-4, convert=True),
                      train=loaders[0], val=loaders[1], progress=False)
    qat_secs = time.perf_counter() - t0
    # AMP vs fp32 over several seeds: one seed's gap is within seed-to-seed noise (1 image = 0.1).
    seeds = (0,) if q else (0, 1, 2, 3, 4)
    amp_runs: dict[str, list[float]] = {"fp32": [], "amp_bf16": []}
    amp_secs = 0.0
    for seed in seeds:
        for label, use_amp in (("fp32", False), ("amp_bf16", True)):
            if seed == 0 and not use_amp:
                amp_runs[label].append(base300)  # the reference lenet300 above is this run
                continue
            mdl, secs = train_model("lenet300", loaders, epochs["lenet300"], 1e-3, amp=use_amp, seed=seed)
            amp_secs += secs if use_amp else 0.0
            amp_runs[label].append(acc(mdl, test))
    res["int4_lenet300"] = {
        "float": base300,
        "ptq_int4_per_channel_mse": acc(ptq4, test),
        "ptq_int4_per_channel_minmax": acc(ptq4_minmax, test),
        "qat_int4_lsq": acc(qat, test), "qat_seconds": round(qat_secs, 1),
        "qat_execution": sorted({str(getattr(m, "execution", "")) for m in qat.modules()
                                 if type(m).__name__ == "WeightOnlyLayer"}),
    }
    r4 = res["int4_lenet300"]
    r4["ptq_drop"] = round(base300 - r4["ptq_int4_per_channel_mse"], 2)
    r4["qat_drop"] = round(base300 - r4["qat_int4_lsq"], 2)
    r4["qat_within_0.3"] = abs(r4["qat_drop"]) <= 0.3 or r4["qat_drop"] < 0
    res["amp"] = {"seeds": list(seeds), "runs": amp_runs,
                  "fp32": round(statistics.mean(amp_runs["fp32"]), 2),
                  "amp_bf16": round(statistics.mean(amp_runs["amp_bf16"]), 2),
                  "fp32_seed_stdev": round(statistics.pstdev(amp_runs["fp32"]), 2),
                  "amp_seconds_per_run": round(amp_secs / len(seeds), 1),
                  "fp32_seconds_per_run": res["training"]["lenet300"]["seconds"]}
    res["amp"]["difference"] = round(res["amp"]["amp_bf16"] - res["amp"]["fp32"], 2)
    res["amp"]["within_0.5"] = abs(res["amp"]["difference"]) <= 0.5
    print(render_int4(res), flush=True)

    # 5. Peers on the same PTQ tasks.
    lenet5, lenet300 = trained["lenet5"], trained["lenet300"]
    peers: dict[str, dict[str, Any]] = {
        "int8 lenet5": {
            "ours StaticInt8 (w8a8 static, all layers)": run_peer(lambda: ts.quantize(
                copy.deepcopy(lenet5), ts.StaticInt8(observer=res["static_int8"]["lenet5"]["picked_on_val"]),
                calibration=calib, progress=False), test),
            "ours DynamicInt8 (w8a8 dynamic, Linear)": run_peer(
                lambda: ts.quantize(copy.deepcopy(lenet5), ts.DynamicInt8()), test),
            "torchao Int8DynamicActivationInt8Weight (Linear)": run_peer(
                lambda: torchao_int8(copy.deepcopy(lenet5)), test),
            "NNCF quantize (w8a8 static, all layers)": run_peer(
                lambda: nncf_int8(copy.deepcopy(lenet5), calib_x), test),
        },
        "int4 weights lenet300": {
            "ours WeightOnly int4 per-channel": run_peer(
                lambda: ts.quantize(copy.deepcopy(lenet300), ts.WeightOnly(bits=4, group_size=None)), test),
            "torchao IntxWeightOnly int4 PerAxis(0)": run_peer(lambda: torchao_int4(copy.deepcopy(lenet300)), test),
            "NNCF compress_weights INT4_SYM per-channel": run_peer(
                lambda: nncf_int4(copy.deepcopy(lenet300), calib_x), test),
        },
    }
    res["peers"] = {"float": {"int8 lenet5": res["training"]["lenet5"]["test_accuracy"],
                              "int4 weights lenet300": base300}, "results": peers}
    print(render_peers(res), flush=True)

    res["seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"\nwrote {out} in {res['seconds']} s")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])

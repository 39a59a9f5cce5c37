"""Weight-only int4 speed on CPU: fp32, ours with PyTorch's packed int4 matmul
(`WeightOnly(cpu_kernel=True)`), ours dequantizing on every call (the default path), and
torchao's int4 weight-only (`IntxWeightOnlyConfig`, groups of 128), side by side in one run.

    python bench/bench_int4.py            # ~2 min
    python bench/bench_int4.py --quick

4 x Linear(4096, 4096), batches 1 and 16, 1 thread, interleaved repeats, medians; the relative
output error against fp32 is printed beside each. Writes bench/results/int4.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchshrink as ts
from _common import table
from torchshrink.measure.latency import interleaved_times

RESULTS = Path(__file__).resolve().parent / "results" / "int4.json"


def torchao_int4(model: nn.Module) -> nn.Module | None:
    try:
        from torchao.quantization import IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(128)))
        return model
    except Exception as e:  # not installed, or this torch/torchao pair cannot do it
        print(f"torchao int4 unavailable: {str(e).splitlines()[0][:120]}")
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fp32 = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(4)]).eval()
    variants: dict[str, nn.Module] = {
        "fp32": fp32,
        "ours int4 g128, int4 CPU kernel": ts.quantize(copy.deepcopy(fp32),
                                                       ts.WeightOnly(bits=4, group_size=128, cpu_kernel=True)),
        "ours int4 g128, dequantize per call": ts.quantize(copy.deepcopy(fp32), ts.WeightOnly(bits=4, group_size=128)),
    }
    peer = torchao_int4(copy.deepcopy(fp32))
    if peer is not None:
        variants["torchao IntxWeightOnly int4 g128"] = peer
    for m in variants.values():
        m.eval()
    rounds = 3 if args.quick else 9
    out: dict[str, Any] = {"by_batch": {}}
    rows = []
    for bs in (1, 16):
        x = torch.randn(bs, 4096)
        with torch.inference_mode():
            ref = fp32(x)
            err = {k: float((m(x) - ref).norm() / ref.norm()) for k, m in variants.items()}
            t = interleaved_times({k: (lambda m=m, x=x: m(x)) for k, m in variants.items()}, rounds=rounds,
                                  warmup=1)
        med = {k: statistics.median(v for r in vs for v in r) for k, vs in t.items()}
        out["by_batch"][str(bs)] = {"median_ms": med, "relative_error": err,
                                    "speedup_vs_fp32": {k: med["fp32"] / v for k, v in med.items()}}
        for k in variants:
            rows.append([bs, k, f"{med[k]:.2f}", f"{med['fp32'] / med[k]:.2f}x", f"{err[k]:.4f}"])
    out["meta"] = {"threads": args.threads, "rounds": rounds, "torch": torch.__version__,
                   "python": sys.version.split()[0], "machine": platform.machine(),
                   "cpu": platform.processor() or platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(table(["batch", "variant", "median ms", "vs fp32", "rel. error vs fp32"], rows))
    print(f"\n{args.threads} thread(s), {rounds} interleaved rounds; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Reference-model costs as `ts.measure` reports them: params, MACs, fp32 bytes and latency.

    python bench/bench_measure.py [--quick] [--threads N]

Latency is timed with interleaved rounds (every model once per round, medians over rounds),
because on a shared CPU a model timed in one block can catch a burst of load that the
next model misses. Writes bench/results/measure.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import torchshrink as ts
from torchshrink.measure import format_table, slice_batch, time_forward

RESULTS = Path(__file__).resolve().parent / "results" / "measure.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few rounds, few runs")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for timing (default 1)")
    args = parser.parse_args()
    rounds, runs = (2, 5) if args.quick else (7, 30)
    batches = (1, 64)
    names = ts.models.names()
    models = {n: ts.models.create(n).eval() for n in names}
    examples = {n: ts.models.example_input(models[n], 1) for n in names}
    reports = {n: ts.measure(models[n], example=examples[n], latency=False) for n in names}

    medians: dict[tuple[str, int], list[float]] = {(n, b): [] for n in names for b in batches}
    t0 = time.perf_counter()
    for _ in range(rounds):
        for n in names:
            for b in batches:
                x = slice_batch(examples[n], b)
                s = time_forward(models[n], x, runs=runs, warmup=3, threads=args.threads, batch=b)
                medians[(n, b)].append(s.median_ms)
    seconds = time.perf_counter() - t0

    rows = []
    out = {"threads": args.threads, "rounds": rounds, "runs_per_round": runs, "torch": torch.__version__,
           "machine": platform.machine(), "seconds": seconds, "models": {}}
    for n in names:
        r = reports[n]
        lat = {b: statistics.median(medians[(n, b)]) for b in batches}
        spread = {b: (min(medians[(n, b)]), max(medians[(n, b)])) for b in batches}
        out["models"][n] = {"params": r.params, "macs": r.macs, "dense_bytes": r.dense_bytes,
                            "latency_ms": {str(b): lat[b] for b in batches},
                            "latency_round_range_ms": {str(b): list(spread[b]) for b in batches}}
        rows.append((n, f"{r.params:,}", f"{r.macs:,}", f"{r.dense_bytes:,}",
                     *(f"{lat[b]:.3f} ({spread[b][0]:.3f}-{spread[b][1]:.3f})" for b in batches)))
    header = ("model", "params", "MACs/sample", "fp32 bytes", *(f"ms batch {b} (round range)" for b in batches))
    print(format_table(header, rows, right=(1, 2, 3)))
    print(f"{args.threads} thread(s), median over {rounds} interleaved rounds of {runs} runs; {seconds:.1f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

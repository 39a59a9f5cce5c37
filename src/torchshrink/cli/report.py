"""`torchshrink report`: one self-contained HTML page for a compressed artifact, against its
fp32 baseline when given: before/after, per layer, where the file's bytes go, energy."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torchshrink.cli.options as options
from torchshrink.cli.baseline import check_data_name, data_names
from torchshrink.cli.paths import prepare_output

NAME = "report"
HELP = "an HTML report of an artifact: before/after, per layer, file bytes per stream, energy estimate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE.tsz", help="the compressed artifact")
    p.add_argument("--baseline", default=None, metavar="BASE.tsz",
                   help="the artifact it was compressed from (default: compare energy with its dense fp32 equivalent)")
    p.add_argument("--data", default=None,
                   help="data set for accuracy and the example input (its test split): " + ", ".join(data_names()))
    p.add_argument("--out", required=True, help="the HTML page to write (report.html)")
    p.add_argument("--recipe", default=None, help="recipe to show (default: the methods the file records)")
    p.add_argument("--batch", type=options.batch_list, default=[1, 64],
                   help="batch sizes for latency and energy (default 1,64)")
    p.add_argument("--threads", type=options.positive_int, default=1, help="threads for latency (default 1)")
    p.add_argument("--runs", type=options.positive_int, default=20, help="timed runs per latency (default 20)")
    p.add_argument("--sram-bytes", type=options.non_negative_int, default=0,
                   help="on-chip weight memory of the energy model in bytes (default 0: weights from DRAM)")
    options.add_json(p)


def run(args: argparse.Namespace) -> int:
    import torchshrink.report as rep

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout)

    t0 = time.perf_counter()
    if args.data is not None:
        check_data_name(args.data)
    prepare_output(args.out, "--out")
    data = rep.collect(args.file, args.baseline, data=args.data, recipe=args.recipe, batch_sizes=args.batch,
                       threads=args.threads, runs=args.runs, energy_batches=args.batch, sram_bytes=args.sram_bytes)
    path = rep.write_page(data, args.out, seconds=time.perf_counter() - t0)
    energy = [{"batch": r["batch"], "baseline": r["before_label"], "before_uj": r["before"].total_uj,
               "after_uj": r["after"].total_uj, "ratio": r["before"].total_pj / max(1e-12, r["after"].total_pj)}
              for r in data.energy]
    for e in energy:
        say(f"energy per inference at batch {e['batch']}: {e['before_uj']:.4g} uJ ({e['baseline']}) -> "
            f"{e['after_uj']:.4g} uJ, {e['ratio']:.1f}x less (45 nm model, --sram-bytes {args.sram_bytes})")
    say(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    if args.json:
        print(json.dumps({"out": str(path), "bytes": data.after.streams.file_bytes,
                          "streams": data.after.streams.totals(), "energy": energy,
                          "seconds": time.perf_counter() - t0}, indent=2))
    return 0

"""The HTML report on `make demo`'s model: energy of the Deep Compression LeNet-300-100 against
its fp32 baseline, and what the report costs to generate.

Runs the demo (LeNet-300-100 on mnist5k, the bundled recipe deep_compression_lenet300, seed 0),
then estimates energy per inference of both files read back, at batch 1 and 64, under the
45 nm model (Horowitz, ISSCC 2014) with weights always from DRAM, with 256 KiB of on-chip SRAM
(the compressed file fits, the fp32 one does not), and with zeros not skipped (how torch runs
the shared-weight layers today: codebook gather, dense compute). Han et al. (ICLR 2016) report
3-7x less energy at batch 1, measured on CPU, GPU and mobile GPU. No peer library estimates
energy here, so the paper's claim is the comparison. Times `ts.report` (median of 3). Writes
bench/results/report.json; `--screenshot docs/report.png` also renders the page in headless
Chromium.

    python bench/bench_report.py [--quick] [--screenshot docs/report.png]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torchshrink as ts  # noqa: E402
from _common import table  # noqa: E402
from torchshrink.cli import run_demo  # noqa: E402
from torchshrink.report import estimate_energy, file_streams  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "report.json"
SRAM = 256 * 1024


def energy_rows(base: Path, small: Path) -> list[dict[str, Any]]:
    before, after = ts.load(base), ts.load(small)
    x = ts.models.example_input(before, 1)
    rows = []
    for label, sram, skip in (("weights from DRAM", 0, True), ("256 KiB on-chip SRAM", SRAM, True),
                              ("DRAM, zeros not skipped", 0, False)):
        for batch in (1, 64):
            eb = estimate_energy(before, x, batch=batch, sram_bytes=sram,
                                 stored_bytes=file_streams(base).layer_bytes())
            ea = estimate_energy(after, x, batch=batch, sram_bytes=sram, skip_zeros=skip,
                                 stored_bytes=file_streams(small).layer_bytes())
            rows.append({"setting": label, "batch": batch, "fp32_uj": eb.total_uj, "dc_uj": ea.total_uj,
                         "ratio": eb.total_pj / ea.total_pj, "fp32_weights_share": eb.weight_pj / eb.total_pj,
                         "dc_weights_share": ea.weight_pj / ea.total_pj, "dc_on_chip": ea.weights_on_chip,
                         "fp32_on_chip": eb.weights_on_chip})
    return rows


def screenshot(page: Path, out: Path) -> int:
    from PIL import Image

    chromium = next((c for c in ("chromium", "chromium-browser") if shutil.which(c)), None)
    if chromium is None:
        raise SystemExit("--screenshot needs headless Chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "shot.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile", "--window-size=900,2300", f"--screenshot={raw}",
                        page.resolve().as_uri()], check=True, capture_output=True, timeout=180)
        img = Image.open(raw).convert("RGB")
        # A 128-colour palette keeps text and bars crisp at a fraction of the bytes.
        img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch per stage")
    parser.add_argument("--screenshot", default=None, help="also write a screenshot of the page (PNG)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shot_path = Path(args.screenshot).resolve() if args.screenshot else None
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the page shows the paths it was given: keep them short
        out = Path(".")
        recipe: Any = "deep_compression_lenet300"
        if args.quick:
            rec = ts.load_recipe(recipe).to_dict()
            for s in rec["stages"]:
                s.get("finetune", {})["epochs"] = 1
            recipe = out / "quick.yaml"
            recipe.write_text(json.dumps(rec))
        t0 = time.perf_counter()
        demo = run_demo(out_dir="demo", recipe=str(recipe), epochs=1 if args.quick else None,
                        progress=False, runs=20, print_fn=lambda line: None)
        demo_s = time.perf_counter() - t0
        base, small = (Path(f) for f in demo["files"])
        from torch.utils.data import DataLoader

        splits = ts.data.load("mnist5k", seed=0)
        test = DataLoader(splits.test, batch_size=1000)

        def accuracy(m: torch.nn.Module) -> float:
            return float(ts.evaluate(m, test)["accuracy"])

        x = ts.models.example_input(ts.load(base), 1)
        times = []
        page = out / "report.html"
        for _ in range(1 if args.quick else 3):
            t = time.perf_counter()
            ts.report(small, before=base, out=page, example=x, evaluate=accuracy, recipe=recipe, runs=20)
            times.append(time.perf_counter() - t)
        rows = energy_rows(base, small)
        shot = screenshot(page, shot_path) if shot_path else None
        page_bytes = page.stat().st_size
        os.chdir(ROOT)
    print(table(["setting", "batch", "fp32 µJ", "DC µJ", "less energy", "weights share fp32 / DC"],
                [[r["setting"], r["batch"], f"{r['fp32_uj']:.4g}", f"{r['dc_uj']:.4g}", f"{r['ratio']:.1f}x",
                  f"{100 * r['fp32_weights_share']:.0f}% / {100 * r['dc_weights_share']:.0f}%"] for r in rows],
                title="energy per inference, LeNet-300-100 on mnist5k, 45 nm model (Han et al.: 3-7x at batch 1)"))
    print(f"\naccuracy fp32 {demo['before'].metric:.2f}% -> DC {demo['after'].metric:.2f}%, bytes "
          f"{demo['before'].artifact_bytes:,} -> {demo['after'].artifact_bytes:,}")
    print(f"ts.report: median {statistics.median(times):.2f} s over {len(times)} runs (page {page_bytes:,} bytes; "
          f"latency runs=20 at batch 1 and 64, 1 thread); the demo itself {demo_s:.0f} s")
    if shot is not None:
        print(f"screenshot {args.screenshot}: {shot:,} bytes")
    result = {"quick": args.quick, "energy": rows, "report_seconds": times, "page_bytes": page_bytes,
              "demo_seconds": demo_s, "accuracy": {"fp32": demo["before"].metric, "dc": demo["after"].metric},
              "bytes": {"fp32": demo["before"].artifact_bytes, "dc": demo["after"].artifact_bytes},
              "threads": 1, "paper_claim_batch1": "3-7x (Han et al., ICLR 2016, measured on CPU/GPU/mobile GPU)"}
    if not args.quick:
        RESULTS.write_text(json.dumps(result, indent=2))
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

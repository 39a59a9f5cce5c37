"""Deep Compression end to end: prune, share weights, entropy-code, on files written and read back.

For each (model, data set): train the baseline, run the shipped recipe, write the .tsz file, load
it back and measure accuracy and bytes there. Prints the stage table (the paper's Table 7:
pruned, + shared weights, + coding), the per-layer table of the best file (the paper's Table 2),
and the coders against the empirical entropy of the real codebook indices; writes
bench/results/deep_compression.json.

    python bench/bench_deep_compression.py            # lenet300 + lenet5 on mnist5k, and Fashion-MNIST
    python bench/bench_deep_compression.py --quick    # a smoke run: lenet300, few epochs
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torchshrink as ts  # noqa: E402
from torchshrink.cli.compress import run_compress  # noqa: E402
from torchshrink.cli.tables import layer_table, stage_table  # noqa: E402

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
# The paper's full-MNIST results (Han et al. 2016, Table 1), for the side-by-side column.
PAPER = {"lenet300": {"ratio": 40, "error_change": "1.64% -> 1.58%"},
         "lenet5": {"ratio": 39, "error_change": "0.80% -> 0.74%"}}


def _short_recipe(path: Path, epochs: int = 1) -> dict[str, Any]:
    """The shipped recipe with every fine-tune cut to `epochs` epochs: for --quick, and for the
    60k-image Fashion-MNIST, where one epoch is 15x the steps of one mnist5k epoch."""
    rec = ts.load_recipe(path).to_dict()
    for stage in rec["stages"]:
        if "finetune" in stage:
            stage["finetune"]["epochs"] = epochs
    return rec


def coder_rows(path: Path) -> list[dict[str, Any]]:
    """Every coder on the real codebook-index tensors of an artifact, against their entropy."""
    from torchshrink.cluster.codebook import Codebook
    from torchshrink.codec.ans import entropy_bits
    from torchshrink.codec.encodings import TensorHint
    from torchshrink.codec.entropy_encodings import (
        AnsEncoding,
        HuffmanEncoding,
        SparseAnsEncoding,
        SparseFixedEncoding,
    )
    from torchshrink.nn import params, select_layers

    model = ts.load(path)
    rows = []
    for name, m in select_layers(model):
        cb = params.find(m, Codebook)
        if cb is None:
            continue
        t = cb.indices
        flat = t.reshape(-1).numpy().astype(np.int64)
        nz = int((flat != cb.k).sum())
        h_all = entropy_bits(np.bincount(flat))  # order-0 entropy of the whole index tensor
        vals = flat[flat != cb.k]
        h_vals = entropy_bits(np.bincount(vals)) if vals.size else 0.0
        row: dict[str, Any] = {"layer": name, "elements": int(flat.size), "kept": nz,
                               "entropy_bytes": h_all / 8, "value_entropy_bits_per_kept": h_vals / max(1, nz)}
        for enc in (AnsEncoding(), HuffmanEncoding(), SparseAnsEncoding(), SparseFixedEncoding()):
            out = enc.encode(t, TensorHint())
            if out is None:
                row[enc.name] = None
                continue
            back = enc.decode(out[0], out[1], tuple(t.shape), t.dtype)
            assert torch.equal(back, t), enc.name
            row[enc.name] = len(out[0])
        rows.append(row)
    return rows


def coder_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'layer':<8}{'elements':>9}{'kept':>7}{'H0 bytes':>10}{'ans':>8}{'huffman':>9}"
            f"{'sparse_ans':>11}{'sparse_fixed':>13}   bits/kept (best)")
    lines = [head, "-" * len(head)]
    for r in rows:
        sizes = [r[k] for k in ("ans", "huffman", "sparse_ans", "sparse_fixed") if r[k] is not None]
        cells = "".join(f"{'-' if r[k] is None else r[k]:>{w}}" for k, w in
                        (("ans", 8), ("huffman", 9), ("sparse_ans", 11), ("sparse_fixed", 13)))
        lines.append(f"{r['layer']:<8}{r['elements']:>9,}{r['kept']:>7,}{r['entropy_bytes']:>10.0f}{cells}"
                     f"   {8 * min(sizes) / max(1, r['kept']):.2f}")
    lines.append("(H0 bytes: order-0 entropy of the index tensor, zeros included; sparse coders beat it by "
                 "exploiting where the zeros are)")
    return "\n".join(lines)


def speed_row() -> dict[str, Any]:
    """Seconds to ANS-/Huffman-code one million 5-bit symbols (median of 3, one process)."""
    from torchshrink.codec import ans, huffman

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(32) * 0.5)
    s = rng.choice(32, size=1_000_000, p=p)
    counts = np.bincount(s, minlength=32)
    f = ans.quantize_freqs(counts)
    lengths = huffman.code_lengths(counts)
    times: dict[str, list[float]] = {"ans_encode": [], "ans_decode": [], "huffman_encode": [], "huffman_decode": []}
    for _ in range(3):  # interleaved repeats: the machine is shared
        t0 = time.perf_counter(); data = ans.encode(s, f); times["ans_encode"].append(time.perf_counter() - t0)  # noqa: E702
        t0 = time.perf_counter(); ans.decode(data, f, s.size); times["ans_decode"].append(time.perf_counter() - t0)  # noqa: E702
        t0 = time.perf_counter(); hd, cb = huffman.encode(s, lengths); times["huffman_encode"].append(time.perf_counter() - t0)  # noqa: E702
        t0 = time.perf_counter(); huffman.decode(hd, lengths, s.size, cb); times["huffman_decode"].append(time.perf_counter() - t0)  # noqa: E702
    h = ans.entropy_bits(counts)
    return {"symbols": s.size, "entropy_bytes": h / 8, "ans_bytes": len(data), "huffman_bytes": len(hd),
            "ans_over_entropy": len(data) * 8 / h, "huffman_over_entropy": len(hd) * 8 / h,
            **{k: float(np.median(v)) for k, v in times.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: lenet300 on mnist5k, short training")
    ap.add_argument("--models", nargs="*", default=["lenet300", "lenet5"])
    ap.add_argument("--no-fashion", action="store_true", help="skip full Fashion-MNIST even when installed")
    ap.add_argument("--fashion-epochs", type=int, default=8, help="baseline epochs on Fashion-MNIST (60k images)")
    ap.add_argument("--fashion-finetune-epochs", type=int, default=4,
                    help="epochs of each recipe fine-tune on Fashion-MNIST (60k images; with 1 epoch the "
                         "files lost ~1 point, with 4 none was lost)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "deep_compression.json"))
    ap.add_argument("--keep-files", default=None, help="directory to keep the .tsz files in")
    ap.add_argument("--baselines", default=None,
                    help="directory of trained baselines named MODEL_DATA.tsz (from `torchshrink train`); "
                         "used instead of training when present")
    ap.add_argument("--runs-from", nargs="*", default=None,
                    help="combine earlier result JSONs (bench outputs or `torchshrink compress --report` "
                         "files, e.g. models run side by side) instead of running; their .tsz files must "
                         "still exist for the per-layer table")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    runs: list[tuple[str, str, int | None]] = []
    if args.quick:
        runs = [("lenet300", "mnist5k", 3)]
    else:
        runs = [(m, "mnist5k", None) for m in args.models]
        if not args.no_fashion and os.path.isdir(FASHION_DIR):
            runs += [(m, "fashion_mnist", args.fashion_epochs) for m in args.models]
    keep = Path(args.keep_files) if args.keep_files else Path(tempfile.mkdtemp(prefix="ts_dc_"))
    keep.mkdir(parents=True, exist_ok=True)
    results = []
    if args.runs_from:
        runs = []
        for f in args.runs_from:
            loaded = json.loads(Path(f).read_text())
            if "runs" in loaded:
                results += loaded["runs"]
            else:  # a `torchshrink compress --report` JSON: the same pipeline (run_compress)
                loaded["coders"] = coder_rows(Path(loaded["file"]))
                loaded["source"] = f"torchshrink compress --report {f}"
                results.append(loaded)
    for model, data_name, epochs in runs:
        recipe_path = ROOT / "src" / "torchshrink" / "recipes" / f"deep_compression_{model}.yaml"
        recipe: Any = str(recipe_path)
        if args.quick:
            recipe = _short_recipe(recipe_path)
        elif data_name == "fashion_mnist":
            recipe = _short_recipe(recipe_path, args.fashion_finetune_epochs)
        out = keep / f"{model}_{data_name}.tsz"
        print(f"\n=== {model} on {data_name} ===", flush=True)
        ckpt = Path(args.baselines) / f"{model}_{data_name}.tsz" if args.baselines else None
        rep = run_compress(model_name=model, data_name=data_name, recipe=recipe, out=str(out), epochs=epochs,
                           checkpoint=str(ckpt) if ckpt is not None and ckpt.is_file() else None, progress=False)
        rep["model"] = model
        rep["coders"] = coder_rows(out)
        rep["recipe"] = str(recipe_path)
        results.append(rep)

    print("\n\n######## summary (accuracy and bytes measured on the files read back) ########")
    head = (f"{'model':<10}{'data':<15}{'test n':>7}{'base acc':>10}{'file acc':>10}{'drop':>7}"
            f"{'fp32 bytes':>12}{'file bytes':>12}{'ratio':>8}{'paper':>7}{'secs':>7}")
    print(head)
    print("-" * len(head))
    for r in results:
        paper = PAPER.get(r["model"], {}).get("ratio")
        print(f"{r['model']:<10}{r['data']:<15}{r['test_samples']:>7}{r['baseline']['accuracy']:>9.2f}%"
              f"{r['compressed']['accuracy']:>9.2f}%{r['accuracy_drop']:>7.2f}{r['baseline']['bytes']:>12,}"
              f"{r['compressed']['bytes']:>12,}{r['ratio']:>7.1f}x{paper or '':>6}x{r['seconds']:>7.0f}")
    for r in results:
        print(f"\nstage table: {r['model']} on {r['data']}")
        print(stage_table(r["stage_table"]))
    ok = [r for r in results if r["accuracy_drop"] <= 0.2] or results
    best = max(ok, key=lambda r: r["ratio"])
    print(f"\nper-layer table of the best file ({best['model']} on {best['data']}, {best['ratio']:.1f}x):")
    print(layer_table(best["file"], best["layers"]))
    print("\ncoders on the real codebook indices of that file (bytes):")
    print(coder_table(best["coders"]))
    speed = speed_row()
    print(f"\none million 5-bit symbols: ANS {speed['ans_bytes']:,} B = {speed['ans_over_entropy']:.4f} x entropy, "
          f"encode {speed['ans_encode']:.3f} s, decode {speed['ans_decode']:.3f} s; Huffman {speed['huffman_bytes']:,} B "
          f"= {speed['huffman_over_entropy']:.4f} x entropy, encode {speed['huffman_encode']:.3f} s, "
          f"decode {speed['huffman_decode']:.3f} s (medians of 3)")
    payload = {"quick": args.quick, "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                                "threads": torch.get_num_threads()},
               "runs": results, "best": {"model": best["model"], "data": best["data"], "ratio": best["ratio"]},
               "coding_speed": speed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2, default=float))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

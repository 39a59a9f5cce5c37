"""Deep Compression end to end: prune, share weights, entropy-code, on files written and read back.

The fair protocol: for each (model, data set, seed) train the baseline, run the shipped recipe,
write the .tsz file, load it back and measure accuracy and bytes there; and train a second
baseline for the same total number of epochs as baseline + every fine-tune of the recipe
(the *equal-budget* baseline), so the compressed model gets no more training than the model it
is compared with. Accuracy drops are against the equal-budget baseline; means and spreads over
the seeds. Fashion-MNIST (10,000-image official test set) is the main table, mnist5k (1,000 test
images: one image is 0.1 point) beside it. Also prints the stage table (the paper's Table 7),
the per-layer table of the best file (Table 2), and every tensor's coded bytes against the
order-0 entropy of its values; writes bench/results/deep_compression.json after every run.

    python bench/bench_deep_compression.py                       # 3 seeds, both LeNets, both data sets
    python bench/bench_deep_compression.py --data mnist5k --seeds 0   # one seed of the fast data set
    python bench/bench_deep_compression.py --quick               # a smoke run: lenet300, few epochs
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
# the recipe each model runs (the >= 60x ones); --recipe MODEL=NAME_OR_FILE replaces one
RECIPES = {"lenet300": "deep_compression_lenet300_64x", "lenet5": "deep_compression_lenet5"}
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


def tensor_rows(path: Path) -> list[dict[str, Any]]:
    """Every stored tensor of a file: its encoding and coded bytes against the order-0 entropy of
    its values (bit patterns as symbols; zero-size encodings have entropy 0 too)."""
    from torchshrink.codec.ans import entropy_bits
    from torchshrink.codec.encodings import tensor_bytes

    info = ts.read_info(path)
    state = ts.load(path).state_dict()
    rows = []
    for r in info.tensors:
        t = state[r.key]
        raw = np.frombuffer(tensor_bytes(t), dtype={1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[t.element_size()])
        _, counts = np.unique(raw, return_counts=True)
        rows.append({"tensor": r.key, "encoding": r.encoding, "elements": int(t.numel()), "coded_bytes": r.nbytes,
                     "order0_entropy_bytes": max(0.0, entropy_bits(counts) / 8) if raw.size else 0.0})
    return rows


def budget_epochs(model: str, recipe: dict[str, Any], baseline_epochs: int | None) -> tuple[int, int]:
    """(baseline epochs, baseline + every fine-tune epoch of the recipe)."""
    from torchshrink.cli.baseline import train_recipe

    base = baseline_epochs if baseline_epochs is not None else int(train_recipe(model)["epochs"])
    tune = sum(int(st.get("finetune", {}).get("epochs", 0)) for st in recipe["stages"])
    return base, base + tune


def equal_budget_baseline(model: str, data_name: str, epochs: int, seed: int) -> dict[str, Any]:
    from torchshrink.cli.baseline import baseline

    t0 = time.perf_counter()
    b = baseline(model_name=model, data_name=data_name, epochs=epochs, seed=seed, progress=False)
    return {"epochs": epochs, "accuracy": b.accuracy(b.model), "seconds": time.perf_counter() - t0}


def _stats(values: list[float | None]) -> dict[str, float] | None:
    """Mean, spread and range; None where no run measured it (a run cut short)."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return None
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def _eq(r: dict[str, Any]) -> float | None:
    eq = r.get("equal_budget")
    return None if eq is None else float(eq["accuracy"])


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["model"], r["data"]), []).append(r)
    out = []
    for (model, data_name), rs in groups.items():
        out.append({
            "model": model, "data": data_name, "seeds": [r["seed"] for r in rs], "test_samples": rs[0]["test_samples"],
            "short_baseline_epochs": rs[0]["budget"]["short_epochs"], "equal_budget_epochs": rs[0]["budget"]["equal_epochs"],
            "short_baseline_accuracy": _stats([r["baseline"]["accuracy"] for r in rs]),
            "equal_budget_accuracy": _stats([_eq(r) for r in rs]),
            "file_accuracy": _stats([r["compressed"]["accuracy"] for r in rs]),
            "drop_vs_equal_budget": _stats([None if _eq(r) is None else _eq(r) - r["compressed"]["accuracy"]  # type: ignore[operator]
                                            for r in rs]),
            "drop_vs_short": _stats([r["baseline"]["accuracy"] - r["compressed"]["accuracy"] for r in rs]),
            "file_bytes": _stats([r["compressed"]["bytes"] for r in rs]),
            "ratio": _stats([r["ratio"] for r in rs]),
            "fp32_bytes": rs[0]["baseline"]["bytes"],
            "compress_seconds": _stats([r["seconds"] for r in rs]),
        })
    return out


def summary_table(summary: list[dict[str, Any]]) -> str:
    head = (f"{'model':<10}{'data':<15}{'seeds':>6}{'test n':>7}{'short base':>13}{'equal base':>13}{'file acc':>13}"
            f"{'drop (eq)':>13}{'file bytes':>16}{'ratio':>12}")
    lines = [head, "-" * len(head)]

    def ms(d: dict[str, float] | None, f: str = ".2f") -> str:
        return "-" if d is None else f"{d['mean']:{f}}±{d['std']:{f}}"

    for s in summary:
        lines.append(f"{s['model']:<10}{s['data']:<15}{len(s['seeds']):>6}{s['test_samples']:>7}"
                     f"{ms(s['short_baseline_accuracy']):>13}{ms(s['equal_budget_accuracy']):>13}"
                     f"{ms(s['file_accuracy']):>13}{ms(s['drop_vs_equal_budget']):>13}{ms(s['file_bytes'], '.0f'):>16}"
                     f"{ms(s['ratio'], '.1f') + 'x':>12}")
    lines.append("(mean±std over seeds; accuracies in %, on the test set; file bytes: the .tsz read back, all "
                 "overhead counted; ratio: dense fp32 parameter bytes / file bytes; drop (eq): equal-budget "
                 "baseline minus file)")
    return "\n".join(lines)


def tensor_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'tensor':<42}{'encoding':<13}{'elements':>9}{'coded B':>9}{'H0 B':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['tensor']:<42}{r['encoding']:<13}{r['elements']:>9,}{r['coded_bytes']:>9,}"
                     f"{r['order0_entropy_bytes']:>9.0f}")
    return "\n".join(lines)


def pq_compare(out: Path, seed: int = 0, finetune_epochs: int = 2) -> dict[str, Any]:
    """ProductQuantization vs KMeansSharing at equal bits per weight on a trained LeNet-300-100's
    fc1 (unpruned, the only layer changed): relative weight error and test accuracy, before and
    after a short centroid fine-tune. Index bits only; codebook bytes listed beside."""
    import copy

    from torchshrink.cli.baseline import baseline

    b = baseline(model_name="lenet300", data_name="mnist5k", seed=seed, progress=False)
    base_acc = b.accuracy(b.model)
    w0 = b.model.fc1.weight.detach().clone()
    rows = []
    cases: list[tuple[str, float, Any]] = []
    for bpw in (1, 2, 3):
        cases.append(("kmeans_sharing", bpw, ts.KMeansSharing(bits=bpw, targets=("fc1",))))
        for dim in (2, 4, 8):
            bits = bpw * dim
            if bits <= 10:
                cases.append((f"product_quantization d={dim}", bpw,
                              ts.ProductQuantization(dim=dim, bits=bits, targets=("fc1",), seed=seed)))
    for name, bpw, cfg in cases:
        t0 = time.perf_counter()
        m = ts.cluster(copy.deepcopy(b.model), cfg)
        err = float((m.fc1.weight.detach() - w0).norm() / w0.norm())
        acc0 = b.accuracy(m)
        ts.fit(m, b.train, epochs=finetune_epochs, lr=3e-4, progress=False, seed=seed)
        codebook = (2 ** cfg.bits) * (getattr(cfg, "dim", 1)) * 4
        rows.append({"method": name, "bits_per_weight": bpw, "config": cfg.to_dict(), "rel_weight_error": err,
                     "accuracy": acc0, "accuracy_after_finetune": b.accuracy(m), "codebook_bytes": codebook,
                     "seconds": time.perf_counter() - t0})
        print(f"{name:<28}{bpw:>4} b/w  rel err {err:.4f}  acc {acc0:.2f}% -> {rows[-1]['accuracy_after_finetune']:.2f}% "
              f"after {finetune_epochs} ep  codebook {codebook} B", flush=True)
    payload = {"model": "lenet300", "layer": "fc1", "data": "mnist5k", "seed": seed, "baseline_accuracy": base_acc,
               "finetune_epochs": finetune_epochs, "rows": rows, "loadavg": os.getloadavg(),
               "threads": torch.get_num_threads()}
    out.write_text(json.dumps(payload, indent=2))
    return payload


def pq_compare_gpt(out: Path, seed: int = 0, finetune_steps: int = 60) -> dict[str, Any]:
    """ProductQuantization vs KMeansSharing at equal index bits per weight on gpt_tiny's MLP
    layers (the two Linear layers of every block; the rest unchanged): relative weight error
    and held-out loss (nats per byte), before and after a short fine-tune of the codebooks."""
    import copy

    from torch.utils.data import DataLoader

    sys.path.insert(0, str(ROOT / "bench"))
    from _common import trained_gpt_tiny

    base, _, held, _ = trained_gpt_tiny(False)
    splits = ts.data.load_text(max_bytes=120_000, block_size=64)
    train = DataLoader(splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    mlp = ("*mlp*",)

    def loss(m: torch.nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            tot = [torch.nn.functional.cross_entropy(m(x)[:, :-1].reshape(-1, 256), x[:, 1:].reshape(-1)).item()
                   for x in held]
        return float(np.mean(tot))

    weights0 = {n: mod.weight.detach().clone() for n, mod in base.named_modules()
                if isinstance(mod, torch.nn.Linear) and ".mlp." in n}
    base_loss = loss(base)
    cases: list[tuple[str, int, Any]] = []
    for bpw in (1, 2, 3):
        cases.append(("kmeans_sharing", bpw, ts.KMeansSharing(bits=bpw, targets=mlp)))
        for dim in (2, 4):
            if bpw * dim <= 8:
                cases.append((f"product_quantization d={dim}", bpw,
                              ts.ProductQuantization(dim=dim, bits=bpw * dim, targets=mlp, seed=seed)))
    rows = []
    for name, bpw, cfg in cases:
        t0 = time.perf_counter()
        m = ts.cluster(copy.deepcopy(base), cfg)
        num = sum(float((dict(m.named_modules())[n].weight.detach() - w).pow(2).sum()) for n, w in weights0.items())
        den = sum(float(w.pow(2).sum()) for w in weights0.values())
        before = loss(m)
        ts.fit(m, train, max_steps=finetune_steps, lr=3e-4, progress=False, seed=seed)
        rows.append({"method": name, "bits_per_weight": bpw, "config": cfg.to_dict(),
                     "rel_weight_error": (num / den) ** 0.5, "loss": before, "loss_after_finetune": loss(m),
                     "codebook_bytes_per_layer": (2 ** cfg.bits) * getattr(cfg, "dim", 1) * 4,
                     "seconds": time.perf_counter() - t0})
        print(f"{name:<28}{bpw:>3} b/w  rel err {rows[-1]['rel_weight_error']:.4f}  loss {before:.4f} -> "
              f"{rows[-1]['loss_after_finetune']:.4f} after {finetune_steps} steps", flush=True)
    payload = {"model": "gpt_tiny 2 x 64 (bench/_common.trained_gpt_tiny: 300 steps on 120 kB of stdlib source)",
               "layers": sorted(weights0), "baseline_loss": base_loss, "finetune_steps": finetune_steps,
               "held_out": "4 validation batches of 16 x 64 bytes", "seed": seed, "rows": rows,
               "loadavg": os.getloadavg(), "threads": torch.get_num_threads()}
    out.write_text(json.dumps(payload, indent=2))
    return payload


def resave(files: list[str], out: Path) -> None:
    """Files written by an earlier run (kept with --keep-files), saved again by today's writer:
    the same weights, so the same accuracy; only the coded bytes can change (checked: identical
    outputs on a random batch)."""
    from torchshrink.cli.tables import dense_bytes

    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for f in files:
            m = ts.load(f)
            again = Path(d) / Path(f).name
            ts.save(m, str(again))
            x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
            same = bool(torch.equal(ts.load(str(again))(x), m(x)))
            rows[Path(f).name] = {"old_bytes": os.path.getsize(f), "new_bytes": again.stat().st_size,
                                  "new_ratio": dense_bytes(m) / again.stat().st_size, "same_outputs": same,
                                  "encodings": {r.key: r.encoding for r in ts.read_info(str(again)).tensors}}
            print(f"{Path(f).name}: {rows[Path(f).name]['old_bytes']:,} -> {rows[Path(f).name]['new_bytes']:,} B "
                  f"({rows[Path(f).name]['new_ratio']:.1f}x), same outputs: {same}")
    out.write_text(json.dumps(rows, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: lenet300 on mnist5k, short training, one seed")
    ap.add_argument("--models", nargs="*", default=["lenet300", "lenet5"])
    ap.add_argument("--data", nargs="*", default=["mnist5k", "fashion_mnist"],
                    help="data sets, run in this order (fashion_mnist is skipped when not installed)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--fashion-epochs", type=int, default=8, help="baseline epochs on Fashion-MNIST (60k images)")
    ap.add_argument("--fashion-finetune-epochs", type=int, default=4,
                    help="epochs of each recipe fine-tune on Fashion-MNIST (60k images: one epoch is 15x the "
                         "steps of an mnist5k epoch)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "deep_compression.json"))
    ap.add_argument("--keep-files", default=None, help="directory to keep the .tsz files in")
    ap.add_argument("--combine", nargs="*", default=None,
                    help="merge the runs of earlier result JSONs (e.g. models run side by side) instead of running")
    ap.add_argument("--reuse-equal-budget", nargs="*", default=[],
                    help="result JSONs whose equal-budget baselines (same model, data, seed and epochs: the same "
                         "training run) are reused instead of trained again")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 when several runs share 2 cores)")
    ap.add_argument("--pq", action="store_true", help="only the ProductQuantization vs KMeansSharing comparison")
    ap.add_argument("--pq-gpt", action="store_true", help="the same comparison on gpt_tiny's MLP layers")
    ap.add_argument("--recipe", action="append", default=[], metavar="MODEL=RECIPE",
                    help=f"run this recipe (bundled name or YAML file) for MODEL instead of {RECIPES}")
    ap.add_argument("--resave", nargs="*", default=None, metavar="TSZ",
                    help="re-save these kept files with the current coders (the weights are unchanged) and "
                         "write their old and new bytes to --out")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    if args.resave is not None:
        resave(args.resave, Path(args.out))
        return 0
    if args.pq:
        pq_compare(Path(args.out).with_name("deep_compression_pq.json"))
        return 0
    if args.pq_gpt:
        pq_compare_gpt(Path(args.out).with_name("deep_compression_pq_gpt.json"))
        return 0
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    runs: list[tuple[str, str, int | None, int]] = []
    for data_name in args.data:
        if data_name == "fashion_mnist" and not os.path.isdir(FASHION_DIR):
            print(f"skipping fashion_mnist: {FASHION_DIR} is not installed (apt-get install dataset-fashion-mnist)")
            continue
        for seed in ([0] if args.quick else args.seeds):
            for m in (["lenet300"] if args.quick else args.models):
                epochs = 3 if args.quick else (args.fashion_epochs if data_name == "fashion_mnist" else None)
                runs.append((m, data_name, epochs, seed))
    keep = Path(args.keep_files) if args.keep_files else Path(tempfile.mkdtemp(prefix="ts_dc_"))
    keep.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    if args.combine:
        runs = []
        parts = [json.loads(Path(f).read_text()) for f in args.combine]
        results = [r for part in parts for r in part["runs"]]
        results.sort(key=lambda r: (r["data"] != "fashion_mnist", r["model"], r["seed"]))
        t_start -= sum(part["wall_seconds"] for part in parts)  # CPU-parallel parts: an upper bound
    speed = speed_row()

    def write() -> list[dict[str, Any]]:
        summary = summarize(results)
        payload = {"quick": args.quick, "protocol": {
            "seeds": args.seeds, "data": args.data, "models": args.models,
            "fashion_epochs": args.fashion_epochs, "fashion_finetune_epochs": args.fashion_finetune_epochs,
            "equal_budget": "baseline trained for baseline epochs + all recipe fine-tune epochs, same training recipe"},
            "machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                        "loadavg_start": load_start, "loadavg_now": os.getloadavg()},
            "wall_seconds": time.perf_counter() - t_start, "summary": summary, "runs": results,
            "coding_speed": speed}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2, default=float))
        return summary

    for model, data_name, epochs, seed in runs:
        chosen = dict(RECIPES, **dict(r.split("=", 1) for r in args.recipe))[model]
        bundled = ROOT / "src" / "torchshrink" / "recipes" / f"{chosen}.yaml"
        recipe_path = bundled if bundled.is_file() else Path(chosen).resolve()
        recipe: Any = str(recipe_path)
        if args.quick:
            recipe = _short_recipe(recipe_path)
        elif data_name == "fashion_mnist":
            recipe = _short_recipe(recipe_path, args.fashion_finetune_epochs)
        rec_dict = recipe if isinstance(recipe, dict) else ts.load_recipe(recipe_path).to_dict()
        short, equal = budget_epochs(model, rec_dict, epochs)
        out = keep / f"{model}_{data_name}_s{seed}.tsz"
        print(f"\n=== {model} on {data_name}, seed {seed} (load {os.getloadavg()[0]:.1f}) ===", flush=True)
        rep = run_compress(model_name=model, data_name=data_name, recipe=recipe, out=str(out), epochs=epochs,
                           seed=seed, progress=False)
        rep["model"] = model
        rep["seed"] = seed
        rep["recipe"] = str(recipe_path.relative_to(ROOT)) if recipe_path.is_relative_to(ROOT) else str(recipe_path)
        rep["budget"] = {"short_epochs": short, "equal_epochs": equal}
        print(f"equal-budget baseline: {equal} epochs...", flush=True)
        reused = [r["equal_budget"] for f in args.reuse_equal_budget if Path(f).is_file()
                  for r in json.loads(Path(f).read_text())["runs"]
                  if (r["model"], r["data"], r["seed"], r["equal_budget"]["epochs"]) == (model, data_name, seed, equal)]
        rep["equal_budget"] = ({**reused[0], "reused_from": "an earlier run of the same training"} if reused
                               else equal_budget_baseline(model, data_name, equal, seed))
        print(f"equal-budget baseline: {rep['equal_budget']['accuracy']:.2f}% "
              f"(short baseline {rep['baseline']['accuracy']:.2f}%, file {rep['compressed']['accuracy']:.2f}%)")
        rep["coders"] = coder_rows(out)
        rep["tensors"] = tensor_rows(out)
        rep["loadavg"] = os.getloadavg()
        results.append(rep)
        write()

    summary = write()
    print("\n\n######## summary (accuracy and bytes measured on the files read back) ########")
    print(summary_table(summary))
    for r in results:
        if r["seed"] == results[0]["seed"] and r.get("stage_table"):
            print(f"\nstage table: {r['model']} on {r['data']} (seed {r['seed']})")
            print(stage_table(r["stage_table"]))
    ok = [r for r in results if (_eq(r) or 0.0) - r["compressed"]["accuracy"] <= 0.2] or results
    best = max(ok, key=lambda r: r["ratio"])
    print(f"\nper-layer table of the best file ({best['model']} on {best['data']}, seed {best['seed']}, "
          f"{best['ratio']:.1f}x):")
    print(layer_table(best["file"], best["layers"]))
    print("\nevery tensor of that file: coded bytes vs the order-0 entropy of its values")
    print(tensor_table(best["tensors"]))
    print("\ncoders on the real codebook indices of that file (bytes):")
    print(coder_table(best["coders"]))
    print(f"\none million 5-bit symbols: ANS {speed['ans_bytes']:,} B = {speed['ans_over_entropy']:.4f} x entropy, "
          f"encode {speed['ans_encode']:.3f} s, decode {speed['ans_decode']:.3f} s; Huffman {speed['huffman_bytes']:,} B "
          f"= {speed['huffman_over_entropy']:.4f} x entropy, encode {speed['huffman_encode']:.3f} s, "
          f"decode {speed['huffman_decode']:.3f} s (medians of 3)")
    print(f"\nwall time {time.perf_counter() - t_start:.0f} s, load average at start {load_start}, now {os.getloadavg()}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The inference form (`ts.for_inference`) beside fp32: latency at batch 1 and 32 and resident
bytes for every registered method on the reference models; the Deep Compression lenet300
(speed and memory preferences); and the AlexNet-sized sparse fully connected layers against
dense and torch.sparse CSR.

    python bench/bench_inference.py            # ~15 min on a loaded 2-core machine
    python bench/bench_inference.py --quick    # smoke run: fewer models, fewer repeats

    python bench/bench_inference.py --threads all   # torch's default thread count
    python bench/bench_inference.py --only alexnet  # one section, merged into the JSON

Protocol: 1 thread unless --threads says otherwise (the compact kernel and torch both use it),
every compared variant timed in the same interleaved loop (best of 3 calls per round, median
over rounds), the load average written beside each section. Method rows use the reference
models with seeded random weights (latency and bytes do not depend on training), calibration
from the bundled mnist5k (LeNets) or random inputs of the model's shape; the Deep Compression
model is trained briefly on mnist5k. The AlexNet-sized layers have seeded random weights at
the paper's densities, 4-bit shared weights for the codebook form, and report, beside the
ratio of medians, the spread of the per-round ratios (a speed-up that holds in every round is
not noise).
Writes bench/results/inference.json (1 thread) or inference_threads<N>.json; with --only, the
sections run replace those in the existing file and the rest is kept.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchshrink as ts
from _common import table
from torchshrink.infer import CompactSparseLinear, kernel_available
from torchshrink.infer.kernels import isa as kernel_isa
from torchshrink.measure import resident_bytes
from torchshrink.measure.latency import interleaved_times
from torchshrink.prune.sparse import SparseLinear

RESULTS = Path(__file__).resolve().parent / "results" / "inference.json"
SECTIONS = ("alexnet", "deep_compression", "methods")
NOISE = 1.10  # ratios within 10% of fp32 are inside the run-to-run spread on a loaded 2-core machine
MODELS = ("lenet300", "lenet5", "resnet_small", "gpt_tiny")
PLAIN = ("dense", "dense (decoded once)")  # forms that are an ordinary fp32 layer


def round_times_ms(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Per name, the fastest of 3 back-to-back calls in each of `rounds` interleaved rounds."""
    with torch.no_grad():
        per = interleaved_times(fns, rounds=rounds, per_round=3, warmup=1)
    return {k: [min(r) for r in v] for k, v in per.items()}


def times_ms(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in round_times_ms(fns, rounds).items()}


def save(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def loads() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def call(m: nn.Module, x: Any) -> Callable[[], Any]:
    return (lambda: m(**x)) if isinstance(x, dict) else (lambda: m(x))


def context(name: str, model: nn.Module, mnist: Any) -> dict[str, Any]:
    if name.startswith("lenet"):
        x, y = mnist.train.tensors
        ds = TensorDataset(x[:512], y[:512])
    elif name == "gpt_tiny":
        block = ts.models.example_input(model, 1).shape[-1]
        t = torch.randint(0, 256, (128, block + 1), generator=torch.Generator().manual_seed(0))
        ds = TensorDataset(t[:, :-1].contiguous(), t[:, 1:].contiguous())
    else:
        x = torch.randn(256, *ts.models.example_input(model, 1).shape[1:], generator=torch.Generator().manual_seed(0))
        ds = TensorDataset(x, torch.randint(0, 10, (256,)))
    loader = DataLoader(ds, batch_size=64)
    return {"example": ts.models.example_input(model, 4), "calibration": list(loader)[:4], "train": loader,
            "val": loader, "evaluate": lambda m: ts.evaluate(m, loader)["accuracy"], "progress": False}


def config_of(method: Any) -> Any:
    example = getattr(method.config, "example", None)
    return example() if callable(example) else method.config()


def forms(records: dict[str, dict[str, Any]]) -> str:
    chosen: dict[str, int] = {}
    for r in records.values():
        k = r["chosen"] if r["chosen"] != "kept" else f"kept {r['reason']}"
        chosen[k] = chosen.get(k, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in chosen.items()) or "no layer to change"


def method_rows(models: tuple[str, ...], rounds: int, mnist: Any,
                done: Callable[[list[dict[str, Any]]], None] = lambda rows: None) -> list[dict[str, Any]]:
    """`done(rows so far)` runs after each model, so a long run saves as it goes."""
    rows: list[dict[str, Any]] = []
    for name in models:
        torch.manual_seed(0)
        fp32 = ts.models.create(name).eval()
        base_bytes = resident_bytes(fp32)
        for method in ts.methods():
            row: dict[str, Any] = {"model": name, "method": method.name}
            model = copy.deepcopy(fp32)
            t0 = time.perf_counter()
            try:
                out = ts.apply(model, config_of(method), **context(name, model, mnist)).eval()
            except ts.ShrinkError as e:
                row["note"] = f"not applicable: {str(e).splitlines()[0][:90]}"
                rows.append(row)
                continue
            row["apply_s"] = time.perf_counter() - t0
            notes = []
            for batch in (1, 32):
                x = ts.models.example_input(name, batch)
                inf = ts.for_inference(out, example=x)
                t = times_ms({"fp32": call(fp32, x), "inference": call(inf, x), "training form": call(out, x)}, rounds)
                row[f"b{batch}_fp32_ms"], row[f"b{batch}_ms"] = t["fp32"], t["inference"]
                row[f"b{batch}_ratio"] = t["inference"] / t["fp32"]
                row[f"b{batch}_training_form_ratio"] = t["training form"] / t["fp32"]
                row[f"b{batch}_forms"] = forms(inf.torchshrink_inference)
                plain = all(r["chosen"] in PLAIN for r in inf.torchshrink_inference.values())
                if batch == 1:
                    row["resident_ratio"] = resident_bytes(inf) / base_bytes
                    row["resident_bytes"] = resident_bytes(inf)
                if row[f"b{batch}_ratio"] > NOISE:
                    why = ("every layer a plain fp32 layer (no compressed form measured faster), i.e. the fp32 "
                           "model: timing noise" if plain else f"forms chosen: {row[f'b{batch}_forms']}")
                    notes.append(f"b{batch} slower than fp32 by more than {NOISE - 1:.0%}: {why}")
            if row["resident_ratio"] > 1.0:
                notes.append(f"larger than fp32 in memory ({row['b1_forms']})")
            if notes:
                row["note"] = "; ".join(notes)
            rows.append(row)
            print(f"  {name:12s} {method.name:18s} b1 {row['b1_ratio']:.2f}x b32 {row['b32_ratio']:.2f}x "
                  f"mem {row['resident_ratio']:.3f}", flush=True)
        done(rows)
    return rows


def deep_compression(rounds: int, mnist: Any, epochs: int) -> dict[str, Any]:
    torch.manual_seed(0)
    train, _, test = ts.data.loaders(mnist, batch_size=64)
    fp32 = ts.models.create("lenet300")
    ts.fit(fp32, train, epochs=epochs, lr=1e-3, progress=False)
    fp32.eval()
    # The recipe's final per-layer sparsities and 4-bit sharing, with one short fine-tune.
    m = ts.prune(copy.deepcopy(fp32), ts.MagnitudePruning(per_layer={"fc1": 0.935, "fc2": 0.82, "fc3": 0.45}))
    ts.fit(m, train, epochs=1, lr=1e-3, progress=False)
    m = ts.cluster(m, ts.KMeansSharing(bits=4)).eval()
    out: dict[str, Any] = {"epochs": epochs, "accuracy_fp32": ts.evaluate(fp32, test)["accuracy"],
                           "accuracy_compressed": ts.evaluate(m, test)["accuracy"],
                           "fp32_resident_bytes": resident_bytes(fp32),
                           "training_form_resident_bytes": resident_bytes(m)}
    for batch in (1, 64):
        x = ts.models.example_input("lenet300", batch)
        speed = ts.for_inference(m, example=x, prefer="speed")
        memory = ts.for_inference(m, example=x, prefer="memory")
        with torch.no_grad():
            out[f"b{batch}_max_abs_diff_speed"] = float((speed(x) - m(x)).abs().max())
            out[f"b{batch}_max_abs_diff_memory"] = float((memory(x) - m(x)).abs().max())
        t = times_ms({"fp32": call(fp32, x), "speed": call(speed, x), "memory": call(memory, x),
                      "training form": call(m, x)}, rounds)
        out[f"b{batch}_ms"] = t
        out[f"b{batch}_speed_forms"] = {k: r["chosen"] for k, r in speed.torchshrink_inference.items()}
        out[f"b{batch}_memory_forms"] = {k: r["chosen"] for k, r in memory.torchshrink_inference.items()}
        out["speed_resident_bytes" if batch == 1 else "speed_resident_bytes_b64"] = resident_bytes(speed)
        out["memory_resident_bytes"] = resident_bytes(memory)
    out["memory_resident_ratio"] = out["memory_resident_bytes"] / out["fp32_resident_bytes"]
    return out


def alexnet_layers(rounds: int) -> dict[str, Any]:
    rows = []
    load_before = loads()
    g = torch.Generator().manual_seed(0)
    for out_f, in_f, density in ((4096, 9216, 0.09), (4096, 4096, 0.09), (1000, 4096, 0.25)):
        w = torch.randn(out_f, in_f, generator=g) * 0.01
        w = w * (torch.rand(out_f, in_f, generator=g) < density)
        b = torch.randn(out_f, generator=g)
        table16 = torch.randn(16, generator=g) * 0.01  # 4-bit shared weights, as Deep Compression's FC layers
        idx = torch.randint(0, 16, (out_f, in_f), generator=g)
        ws = table16[idx] * (w != 0)
        dense, dense_s = nn.Linear(in_f, out_f), nn.Linear(in_f, out_f)
        with torch.no_grad():
            dense.weight.copy_(w), dense.bias.copy_(b), dense_s.weight.copy_(ws), dense_s.bias.copy_(b)
        ours, ours_s = CompactSparseLinear(w, b), CompactSparseLinear(ws, b, codebook=(table16, idx))
        torch_csr = SparseLinear.from_linear(dense)
        x = torch.randn(1, in_f, generator=g)
        with torch.no_grad():
            err = float((ours(x) - dense(x)).abs().max()), float((ours_s(x) - dense_s(x)).abs().max())
        per = round_times_ms({"dense fp32": call(dense, x), "torch CSR": call(torch_csr, x),
                              "compact CSR": call(ours, x), "compact CSR + codebook": call(ours_s, x)}, rounds)
        t = {k: statistics.median(v) for k, v in per.items()}
        row: dict[str, Any] = {"shape": f"{out_f}x{in_f}", "density": density,
                               "measured_density": float((w != 0).float().mean()), "nnz": ours.nnz, "ms": t,
                               "max_abs_err": err,
                               "bytes": {"dense": resident_bytes(dense), "compact": resident_bytes(ours),
                                         "codebook": resident_bytes(ours_s), "torch CSR": resident_bytes(torch_csr)}}
        for key, name in (("compact", "compact CSR"), ("codebook", "compact CSR + codebook"),
                          ("torch_csr", "torch CSR")):
            row[f"speedup_{key}"] = t["dense fp32"] / t[name]
            # dense and this form timed in the same round: the spread of their ratio over rounds
            ratios = sorted(d / o for d, o in zip(per["dense fp32"], per[name]))
            row[f"speedup_{key}_rounds"] = {"min": ratios[0], "q25": ratios[len(ratios) // 4],
                                            "q75": ratios[(3 * len(ratios)) // 4], "max": ratios[-1]}
        rows.append(row)
        print(f"  {out_f}x{in_f} @ {density:.0%}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in t.items()), flush=True)
    return {"rounds": rounds, "batch": 1, "kernel_loop": kernel_isa(), "load_average_before": load_before,
            "load_average_after": loads(), "layers": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", default="1", help="a thread count, or 'all' for torch's default (%(default)s)")
    p.add_argument("--out", type=Path, default=None, help="default: bench/results/inference[_threads<N>].json")
    p.add_argument("--only", choices=SECTIONS, action="append")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 15, 5 with --quick)")
    p.add_argument("--models", default=None,
                   help=f"comma-separated subset of {','.join(MODELS)} for the methods section; the file's rows "
                        "of the other models are kept")
    args = p.parse_args(argv)
    if args.threads == "all":
        threads = torch.get_num_threads()
    elif args.threads.isdigit() and int(args.threads) >= 1:
        threads = int(args.threads)
    else:
        p.error(f"--threads must be a positive count or 'all', got {args.threads!r}")
    torch.set_num_threads(threads)
    out = args.out or RESULTS.with_name("inference.json" if threads == 1 else f"inference_threads{threads}.json")
    only = [s for s in SECTIONS if s in set(args.only or SECTIONS)]
    rounds = args.rounds or (5 if args.quick else 15)
    result: dict[str, Any] = {}
    if args.only and out.exists():
        result = json.loads(out.read_text())
        if result.get("threads") != threads or result.get("quick") != args.quick:
            p.error(f"{out} holds a run at {result.get('threads')} thread(s), quick={result.get('quick')}; "
                    "merge only a run of the same protocol, or pass --out")
    result.update({"threads": threads, "quick": args.quick, "kernel_compiled": kernel_available(),
                   "kernel_loop": kernel_isa(), "torch": torch.__version__, "machine": platform.machine(),
                   "cpu_count": os.cpu_count()})
    mnist = ts.data.load("mnist5k")
    for section in only:
        t0, before = time.perf_counter(), loads()
        if section == "alexnet":
            print("AlexNet-sized FC layers, batch 1:")
            result["alexnet_layers"] = alexnet_layers(rounds)
        elif section == "deep_compression":
            print("Deep Compression lenet300:")
            result["deep_compression"] = deep_compression(rounds, mnist, 1 if args.quick else 3)
        else:
            print("every method, inference form vs fp32:")

            models = tuple(m for m in (args.models or ",".join(MODELS)).split(",") if m)
            unknown = [m for m in models if m not in MODELS]
            if unknown:
                p.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
            kept = [r for r in result.get("methods", []) if r["model"] not in models] if args.models else []

            def save_methods(rows: list[dict[str, Any]], *, _before: list[float] = before, _t0: float = t0,
                             _kept: list[dict[str, Any]] = kept) -> None:
                rows = _kept + rows
                result["methods"] = rows
                result.setdefault("sections", {})["methods"] = {
                    "load_average_before": _before, "load_average_after": loads(),
                    "seconds": round(time.perf_counter() - _t0, 1), "rounds": rounds, "nice": os.nice(0),
                    "utc": _utc(), "models_done": sorted({r["model"] for r in rows})}
                save(out, result)

            method_rows(MODELS[:1] if args.quick and not args.models else models, rounds, mnist, save_methods)
            continue
        result.setdefault("sections", {})[section] = {"load_average_before": before, "load_average_after": loads(),
                                                      "seconds": round(time.perf_counter() - t0, 1),
                                                      "rounds": rounds, "nice": os.nice(0), "utc": _utc()}
        save(out, result)  # after each section: a long run stopped keeps what it has
    print_tables(result)
    print(f"wrote {out}")
    return 0


def print_tables(r: dict[str, Any]) -> None:
    print(f"\n{r['threads']} thread(s); compiled kernel: {r['kernel_compiled']} ({r.get('kernel_loop')}); "
          "load average (1, 5, 15 min) per section: "
          + "; ".join(f"{k} {v['load_average_before']} -> {v['load_average_after']}"
                      for k, v in r.get("sections", {}).items()))
    if "alexnet_layers" in r:
        layers = r["alexnet_layers"]["layers"]
        print(table(("layer", "density", "dense ms", "torch CSR ms", "compact ms", "codebook ms", "compact x",
                     "codebook x", "torch CSR x", "worst round compact x / codebook x"),
                    [(a["shape"], a["density"], a["ms"]["dense fp32"], a["ms"]["torch CSR"], a["ms"]["compact CSR"],
                      a["ms"]["compact CSR + codebook"], a["speedup_compact"], a["speedup_codebook"],
                      a["speedup_torch_csr"],
                      f"{a['speedup_compact_rounds']['min']:.2f} / {a['speedup_codebook_rounds']['min']:.2f}")
                     for a in layers],
                    float_format=".3g", title="\nAlexNet-sized sparse FC layers at batch 1 (x = faster than dense)"))
    if "deep_compression" in r:
        d = r["deep_compression"]
        rows = [(f"batch {b}", d[f"b{b}_ms"]["fp32"], d[f"b{b}_ms"]["speed"], d[f"b{b}_ms"]["memory"],
                 d[f"b{b}_ms"]["training form"], d[f"b{b}_ms"]["speed"] / d[f"b{b}_ms"]["fp32"],
                 d[f"b{b}_ms"]["memory"] / d[f"b{b}_ms"]["fp32"]) for b in (1, 64)]
        print(table(("", "fp32 ms", "speed ms", "memory ms", "training form ms", "speed/fp32", "memory/fp32"), rows,
                    float_format=".4g",
                    title=f"\nDeep Compression lenet300 (acc fp32 {d['accuracy_fp32']:.2f}, compressed "
                          f"{d['accuracy_compressed']:.2f}); resident bytes fp32 {d['fp32_resident_bytes']:,}, "
                          f"training form {d['training_form_resident_bytes']:,}, speed {d['speed_resident_bytes']:,},"
                          f" memory {d['memory_resident_bytes']:,} ({d['memory_resident_ratio']:.3f} of fp32)"))
    if "methods" in r:
        rows = [(m["model"], m["method"], f"{m['b1_ratio']:.2f}" if "b1_ratio" in m else "-",
                 f"{m['b32_ratio']:.2f}" if "b32_ratio" in m else "-",
                 f"{m['resident_ratio']:.3f}" if "resident_ratio" in m else "-",
                 f"{m['b1_training_form_ratio']:.2f}" if "b1_ratio" in m else "-", m.get("note", ""))
                for m in r["methods"]]
        print(table(("model", "method", "b1 time/fp32", "b32 time/fp32", "bytes/fp32", "b1 training form/fp32",
                     "note"), rows, title="\nEvery method: inference form against fp32 (ratios < 1 are better)"))


if __name__ == "__main__":
    sys.exit(main())

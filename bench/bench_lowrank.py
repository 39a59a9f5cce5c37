"""Low-rank factorization benchmark: size, MACs, accuracy and CPU latency, side by side in one run.

    python bench/bench_lowrank.py            # full run (~15 min on 2 shared cores)
    python bench/bench_lowrank.py --quick    # smoke run: 1-2 epochs everywhere

Sections (all in bench/results/lowrank.json, tables printed):
1. Eckart-Young: ||W - W_r||_F^2 against sum of discarded sigma^2 on trained LeNet-300-100 fc1.
2. LeNet-300-100 on mnist5k at one parameter count (~4x fewer): uniform ratio vs budgeted rank
   selection (greedy / Lagrangian over spectra, greedy over measured validation loss) vs the
   peer tensorly-torch (Tucker-factorized layers), each fine-tuned with the same schedule.
3. ResNet-small on mnist5k at half the MACs: budgeted by MACs (channel and spatial SVD),
   budgeted by MACs and measured latency together (`budget_latency`), uniform ratio and
   tensorly-torch Tucker; accuracy before fine-tuning (after BatchNorm recalibration on 8
   training batches) and after it, and latency at batch 32 measured with interleaved repeats
   (medians) against the fp32 model in this same run.

Allocator: glibc by default hands every large freed buffer back to the OS and page-faults it in
again on the next call, which adds about the same milliseconds to every model at batch 32 (a
third of resnet_small's time here) and dilutes every speed-up. Deployments avoid it with
jemalloc/tcmalloc or these settings, so the run re-executes itself with glibc told to keep its
memory (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_/MALLOC_TOP_PAD_) unless --allocator default;
the same models are then timed again in a child process with glibc's defaults, and both columns
are reported.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchshrink as ts
from _common import table
from torchshrink.lowrank import chosen_ranks, count_params, spectrum
from torchshrink.measure.latency import interleaved_times
from torchshrink.measure.macs import count_macs
from torchshrink.nn import recalibrate_batchnorm

RESULTS = Path(__file__).resolve().parent / "results" / "lowrank.json"


def macs(model: nn.Module, x: torch.Tensor) -> int:
    return count_macs(model, x[:1])[0]


MAX_STEPS: list[int | None] = [None]  # --quick caps every training run at a few steps
MATCH_ITERS: list[int | None] = [None]  # and the bisections that match peers' sizes


def fit(model: nn.Module, train: Any, val: Any, epochs: int, lr: float) -> None:
    ts.fit(model, train, val=val, epochs=epochs, lr=lr, progress=False, seed=0, max_steps=MAX_STEPS[0])


def acc(model: nn.Module, loader: Any) -> float:
    return ts.evaluate(model, loader)["accuracy"]


# ------------------------------------------------------------------------------------------------
# tensorly-torch (peer)


def _tltorch() -> Any:
    try:
        import tltorch  # type: ignore[import-not-found]

        return tltorch
    except Exception:  # not installed, or incompatible with this torch
        return None


def tltorch_factorize(model: nn.Module, q: float, kinds: tuple[type[nn.Module], ...]) -> nn.Module:
    """Every Linear/Conv2d (groups 1) replaced by tensorly-torch's Tucker-factorized layer keeping
    about `q` of its parameters (tltorch's own rank= fraction), computed factor by factor."""
    tl = _tltorch()
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if not name or not isinstance(m, kinds):
            continue
        if isinstance(m, nn.Linear):
            # "reconstructed": tltorch's factorized einsum path for tensorized Linear layers asks
            # for >100 GB at batch 1000; rebuilding the weight per call computes the same thing.
            new = tl.FactorizedLinear.from_linear(m, rank=q, factorization="tucker",
                                                  implementation="reconstructed")
        elif isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size != (1, 1):
            new = tl.FactorizedConv.from_conv(m, rank=q, factorization="tucker", implementation="factorized",
                                              decompose_weights=True)
        else:
            continue
        ts.nn.set_module(model, name, new)
    return model


def match(build: Callable[[float], nn.Module], size: Callable[[nn.Module], float], target: float,
          lo: float = 0.01, hi: float = 0.99, iters: int = 12) -> tuple[float, nn.Module]:
    """The largest q in [lo, hi] whose model has size <= target (bisection; size grows with q)."""
    best_q, best = lo, build(lo)
    for _ in range(min(iters, MATCH_ITERS[0] or iters)):
        mid = (lo + hi) / 2
        m = build(mid)
        if size(m) <= target:
            best_q, best, lo = mid, m, mid
        else:
            hi = mid
    return best_q, best


# ------------------------------------------------------------------------------------------------
# Latency


@torch.inference_mode()
def latency(models: dict[str, nn.Module], x: torch.Tensor, repeats: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Per-model forward times at batch len(x), interleaved (A B C A B C ...) so drifts in the
    shared machine's load hit every model alike; median and quartiles in ms."""
    for m in models.values():
        m.eval()
    per = interleaved_times({k: functools.partial(m, x) for k, m in models.items()}, rounds=repeats,
                            warmup=warmup)
    times = {k: [ms for r in v for ms in r] for k, v in per.items()}
    out = {}
    for k, v in times.items():
        q = statistics.quantiles(v, n=4)
        out[k] = {"median_ms": statistics.median(v), "p25_ms": q[0], "p75_ms": q[2], "min_ms": min(v),
                  "repeats": len(v)}
    return out


TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000",
                "MALLOC_TOP_PAD_": "1000000000"}


def allocator() -> str:
    return "tuned" if all(os.environ.get(k) == v for k, v in TUNED_MALLOC.items()) else "default"


def latency_in_child(models: dict[str, nn.Module], x: torch.Tensor, repeats: int, threads: int, tuned: bool,
                     peers: dict[str, float]) -> dict[str, dict[str, float]]:
    """The same interleaved timing in a fresh process under the other allocator regime. Our
    models travel as artifacts (ts.save / ts.load: no pickled code); the tensorly-torch peer,
    which has no artifact form, is rebuilt there from the fp32 artifact with its rank fraction
    (`peers[label] = q`): the same structure, so the same speed."""
    env = {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC}
    if tuned:
        env.update(TUNED_MALLOC)
    with tempfile.TemporaryDirectory() as d:
        spec: dict[str, Any] = {"x": str(Path(d) / "x.pt"), "fp32": str(Path(d) / "fp32.tsz"), "models": {}}
        torch.save(x, spec["x"])
        ts.save(models["fp32"], spec["fp32"])
        for i, (label, m) in enumerate(models.items()):
            if label in peers:
                spec["models"][label] = {"tltorch_conv_q": peers[label]}
            elif label == "fp32":
                spec["models"][label] = {"tsz": spec["fp32"]}
            else:
                path = str(Path(d) / f"m{i}.tsz")
                ts.save(m, path)
                spec["models"][label] = {"tsz": path}
        src, out = Path(d) / "spec.json", Path(d) / "latency.json"
        src.write_text(json.dumps(spec))
        subprocess.run([sys.executable, __file__, "--latency-child", str(src), str(out), "--threads", str(threads),
                        "--repeats", str(repeats)], env=env, check=True)
        return json.loads(out.read_text())


def _child_latency(spec_path: str, out_path: str, repeats: int) -> None:
    spec = json.loads(Path(spec_path).read_text())
    x = torch.load(spec["x"], weights_only=True)
    base = ts.load(spec["fp32"])
    models = {label: ts.load(m["tsz"]) if "tsz" in m else tltorch_factorize(base, m["tltorch_conv_q"], (nn.Conv2d,))
              for label, m in spec["models"].items()}
    Path(out_path).write_text(json.dumps(latency(models, x, repeats)))


def load_average() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# ------------------------------------------------------------------------------------------------
# Sections


def eckart_young(model: nn.Module) -> tuple[list[dict[str, float]], str]:
    layer = model.fc1
    sp = spectrum("fc1", layer)
    rows, out = [], []
    w = layer.weight.detach().double()
    for r in (5, 20, 50, 100, 200):
        pair = ts.lowrank.factorize_layer(sp, r)
        err2 = float(((w - pair.product().detach().double()) ** 2).sum())
        disc = sp.discarded_energy(r)
        rows.append({"rank": r, "err2": err2, "discarded": disc, "rel_diff": abs(err2 - disc) / disc})
        out.append([str(r), f"{err2:.6f}", f"{disc:.6f}", f"{abs(err2 - disc) / disc:.1e}"])
    return rows, table(["rank", "||W - AB||_F^2", "sum discarded s^2", "rel. diff"], out)


def lenet300_section(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    splits = ts.data.load("mnist5k")
    train, val, test = ts.data.loaders(splits, batch_size=128)
    torch.manual_seed(0)
    base = ts.models.create("lenet300")
    t0 = time.perf_counter()
    fit(base, train, val, args.base_epochs_lenet, 1e-3)
    base_acc, n0 = acc(base, test), count_params(base)
    ey_rows, ey_table = eckart_young(base)
    print(f"lenet300 baseline: {base_acc:.2f}% test, {n0:,} params ({time.perf_counter() - t0:.0f} s)", flush=True)

    def val_score(m: nn.Module) -> float:
        return -ts.evaluate(m, val)["loss"]

    uniform = ts.factorize(copy.deepcopy(base), ts.SvdFactorization(ratio=args.lenet_ratio))
    target = count_params(uniform)
    variants: dict[str, tuple[nn.Module, str]] = {
        "uniform ratio": (uniform, f"SvdFactorization(ratio={args.lenet_ratio})"),
    }
    for solver in ("greedy", "lagrangian"):
        cfg = ts.SvdFactorization(budget_params=target, solver=solver)  # type: ignore[arg-type]
        variants[f"budget {solver} (spectral)"] = (ts.factorize(copy.deepcopy(base), cfg),
                                                   f"SvdFactorization(budget_params={target}, solver='{solver}')")
    # A stronger uniform baseline: the 10-way classifier kept dense (a rank-2 fc3 is a bottleneck).
    q, uni2 = match(lambda q: ts.factorize(copy.deepcopy(base), ts.SvdFactorization(ratio=q, ignore=("fc3",))),
                    count_params, target)
    variants["uniform ratio, fc3 dense"] = (uni2, f"SvdFactorization(ratio={q:.3f}, ignore=['fc3'])")
    cfg = ts.SvdFactorization(budget_params=target, score="loss")
    variants["budget greedy (val loss)"] = (
        ts.factorize(copy.deepcopy(base), cfg, evaluate=val_score, progress=False),
        f"SvdFactorization(budget_params={target}, score='loss')")
    if _tltorch() is not None:
        q, peer = match(lambda q: tltorch_factorize(base, q, (nn.Linear,)), count_params, target)
        variants["tensorly-torch Tucker"] = (peer, f"tltorch Tucker rank={q:.3f} (params matched <= target)")

    rows, out = [], []
    out.append(["fp32 baseline", f"{n0:,}", "1.00x", "-", f"{base_acc:.2f}", f"{base_acc:.2f}", "0.00", "-"])
    for label, (m, how) in variants.items():
        before = acc(m, test)
        vloss = ts.evaluate(m, val)["loss"]
        fit(m, train, val, args.ft_epochs_lenet, 5e-4)
        after = acc(m, test)
        n = count_params(m)
        ranks = chosen_ranks(m)
        rows.append({"variant": label, "config": how, "params": n, "reduction": n0 / n, "ranks": ranks,
                     "val_loss_before_ft": vloss, "test_acc_before_ft": before, "test_acc_after_ft": after,
                     "drop_points": base_acc - after})
        out.append([label, f"{n:,}", f"{n0 / n:.2f}x", f"{vloss:.3f}", f"{before:.2f}", f"{after:.2f}",
                    f"{base_acc - after:+.2f}", ", ".join(f"{k}:{v}" for k, v in ranks.items()) or "-"])
        print(f"  {label}: {n:,} params, {before:.2f} -> {after:.2f}", flush=True)
    header = ["lenet300 / mnist5k", "params", "smaller", "val loss (no FT)", "test acc no FT",
              f"test acc FT {args.ft_epochs_lenet} ep", "drop", "ranks"]
    res = {"baseline_test_acc": base_acc, "baseline_params": n0, "target_params": target, "variants": rows,
           "eckart_young_fc1": ey_rows}
    return res, [ey_table, table(header, out)]


def resnet_section(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    splits = ts.data.load("mnist5k")
    train, val, test = ts.data.loaders(splits, batch_size=64)
    torch.manual_seed(0)
    base = ts.models.create("resnet_small")
    t0 = time.perf_counter()
    fit(base, train, val, args.base_epochs_resnet, 1e-3)
    base_acc = acc(base, test)
    x1 = ts.models.example_input(base, 1)
    m0, n0 = macs(base, x1), count_params(base)
    print(f"resnet_small baseline: {base_acc:.2f}% test, {m0:,} MACs ({time.perf_counter() - t0:.0f} s)", flush=True)

    b = args.resnet_macs
    xb = ts.models.example_input(base, 32)
    calib = [batch for _, batch in zip(range(8), train)]
    variants: dict[str, tuple[nn.Module, str]] = {}
    peers: dict[str, float] = {}  # label -> tltorch rank fraction, to rebuild the peer in the child
    for mode, frac in (("channel", b), ("spatial", b), ("channel", args.resnet_macs_low)):
        cfg = ts.SvdFactorization(budget_macs=frac, mode=mode)  # type: ignore[arg-type]
        variants[f"MACs {frac} ({mode})"] = (ts.factorize(copy.deepcopy(base), cfg, example=x1, calibration=calib),
                                             f"SvdFactorization(budget_macs={frac}, mode='{mode}')")
    t1 = time.perf_counter()
    lat_cfg = ts.SvdFactorization(budget_macs=b, budget_latency=args.resnet_latency)
    variants[f"MACs {b} + latency {args.resnet_latency} (channel)"] = (
        ts.factorize(copy.deepcopy(base), lat_cfg, example=xb, calibration=calib, progress=False),
        f"SvdFactorization(budget_macs={b}, budget_latency={args.resnet_latency}), example batch 32")
    lat_select_s = time.perf_counter() - t1
    print(f"  latency-budgeted selection took {lat_select_s:.1f} s", flush=True)
    q, uni = match(lambda q: ts.factorize(copy.deepcopy(base), ts.SvdFactorization(ratio=q)),
                   lambda m: macs(m, x1), b * m0, iters=8)
    recalibrate_batchnorm(uni, calib)
    variants[f"uniform {b} ratio (channel)"] = (uni, f"SvdFactorization(ratio={q:.3f}) (MACs matched <= budget)")
    if _tltorch() is not None:
        q, peer = match(lambda q: tltorch_factorize(base, q, (nn.Conv2d,)), lambda m: macs(m, x1), b * m0, iters=7)
        recalibrate_batchnorm(peer, calib)
        variants[f"tensorly-torch Tucker {b}"] = (peer, f"tltorch Tucker conv rank={q:.3f} (MACs matched <= budget)")
        peers[f"tensorly-torch Tucker {b}"] = q

    # Latency first (weights do not change speed), all models interleaved in one loop, then the
    # same models in a child process under the other allocator regime.
    timed = {"fp32": base, **{k: v for k, (v, _) in variants.items()}}
    load_before = load_average()
    lat = latency(timed, xb, args.repeats)
    load_after = load_average()
    here = allocator()
    other = latency_in_child(timed, xb, args.repeats, args.threads, tuned=here != "tuned", peers=peers)
    lat_by = {here: lat, ("default" if here == "tuned" else "tuned"): other}
    fp32_ms, fp32_min = lat["fp32"]["median_ms"], lat["fp32"]["min_ms"]
    print(f"  latency done: fp32 {fp32_ms:.1f} ms with the {here} allocator, {other['fp32']['median_ms']:.1f} ms "
          f"with the other (load average {load_before} -> {load_after})", flush=True)

    rows, out = [], []
    def cols(label: str) -> list[str]:
        return [f"{lat_by[a][label]['median_ms']:.1f} ({lat_by[a]['fp32']['median_ms'] / lat_by[a][label]['median_ms']:.2f}x)"
                for a in ("tuned", "default")]

    out.append(["fp32 baseline", f"{m0:,}", "1.00", f"{n0:,}", *cols("fp32"),
                f"[{lat['fp32']['p25_ms']:.1f}, {lat['fp32']['p75_ms']:.1f}]", "-", f"{base_acc:.2f}", "0.00"])
    for label, (m, how) in variants.items():
        before = acc(m, test)
        fit(m, train, val, args.ft_epochs_resnet, 5e-4)
        after = acc(m, test)
        mm, n, L = macs(m, x1), count_params(m), lat[label]
        rows.append({"variant": label, "config": how, "macs": mm, "macs_fraction": mm / m0, "params": n,
                     "latency_b32": L, "speedup": fp32_ms / L["median_ms"],
                     "speedup_min": fp32_min / L["min_ms"],
                     "latency_b32_by_allocator": {a: v[label] for a, v in lat_by.items()},
                     "speedup_by_allocator": {a: v["fp32"]["median_ms"] / v[label]["median_ms"]
                                              for a, v in lat_by.items()},
                     "ranks": chosen_ranks(m),
                     "test_acc_before_ft": before, "test_acc_after_ft": after, "drop_points": base_acc - after})
        out.append([label, f"{mm:,}", f"{mm / m0:.3f}", f"{n:,}", *cols(label),
                    f"[{L['p25_ms']:.1f}, {L['p75_ms']:.1f}]", f"{before:.2f}", f"{after:.2f}", f"{base_acc - after:+.2f}"])
        print(f"  {label}: MACs {mm / m0:.3f}, {before:.2f} -> {after:.2f}", flush=True)
    header = ["resnet_small / mnist5k", "MACs/sample", "MAC frac", "params", "ms @ b32, tuned alloc (speed-up)",
              "ms @ b32, glibc default (speed-up)", f"IQR ms ({here})", "test acc no FT (BN recal.)",
              f"test acc FT {args.ft_epochs_resnet} ep", "drop"]
    res = {"baseline_test_acc": base_acc, "baseline_macs": m0, "baseline_params": n0, "fp32_latency_b32": lat["fp32"],
           "fp32_latency_b32_by_allocator": {a: v["fp32"] for a, v in lat_by.items()}, "allocator_here": here,
           "mac_budget": b, "latency_budget": args.resnet_latency, "latency_selection_seconds": lat_select_s,
           "load_average_during_latency": [load_before, load_after], "variants": rows}
    return res, [table(header, out)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1-2 epochs, few latency repeats")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for everything (default 1)")
    p.add_argument("--lenet-ratio", type=float, default=0.24, help="uniform kept-parameter ratio for lenet300")
    p.add_argument("--resnet-macs", type=float, default=0.5, help="MAC budget (fraction) for resnet_small")
    p.add_argument("--resnet-macs-low", type=float, default=0.35, help="a second, tighter MAC budget")
    p.add_argument("--resnet-latency", type=float, default=0.64,
                   help="latency budget (fraction of fp32) combined with the MAC budget")
    p.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                   help="glibc regime for this process (the other one is timed in a child process)")
    p.add_argument("--repeats", type=int, default=None, help="latency repeats (default 60, 5 with --quick)")
    p.add_argument("--latency-child", nargs=2, metavar=("MODELS", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.latency_child:
        _child_latency(*args.latency_child, args.repeats)
        return 0
    if args.allocator == "tuned" and allocator() != "tuned" and argv is None:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED_MALLOC})
    q = args.quick
    args.base_epochs_lenet, args.ft_epochs_lenet = (3, 1) if q else (20, 10)
    args.base_epochs_resnet, args.ft_epochs_resnet = (1, 1) if q else (6, 3)
    args.repeats = args.repeats or (5 if q else 60)
    MAX_STEPS[0] = 15 if q else None
    MATCH_ITERS[0] = 4 if q else None
    t0 = time.perf_counter()
    lenet, lenet_tables = lenet300_section(args)
    resnet, resnet_tables = resnet_section(args)
    tl = _tltorch()
    result = {
        "meta": {"quick": q, "threads": args.threads, "torch": torch.__version__, "python": sys.version.split()[0],
                 "machine": platform.machine(), "seconds": time.perf_counter() - t0,
                 "peer": f"tensorly-torch {tl.__version__}" if tl is not None else "tensorly-torch not installed",
                 "epochs": {"lenet_base": args.base_epochs_lenet, "lenet_ft": args.ft_epochs_lenet,
                            "resnet_base": args.base_epochs_resnet, "resnet_ft": args.ft_epochs_resnet},
                 "latency_repeats": args.repeats, "allocator": allocator(),
                 "tuned_allocator_env": TUNED_MALLOC},
        "lenet300": lenet,
        "resnet_small": resnet,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print()
    print("Eckart-Young on trained lenet300 fc1 (300 x 784):")
    print(lenet_tables[0])
    print()
    print(lenet_tables[1])
    print()
    print(resnet_tables[0])
    lavg = resnet["load_average_during_latency"]
    print(f"\nthreads={args.threads}, latency: {args.repeats} interleaved repeats, batch 32, medians, on "
          f"{platform.processor() or platform.machine()}; this process ran with the {allocator()} allocator and "
          f"timed the other regime in a child process; 1-min load average {lavg[0]} -> {lavg[1]} during the "
          f"latency loop; MACs traced by ts.measure (FlopCounterMode); {result['meta']['peer']}; "
          f"total {result['meta']['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

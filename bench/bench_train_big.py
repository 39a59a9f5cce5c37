"""Train big, then compress (Li et al., ICML 2020) on gpt_tiny-family models, at equal training compute.

A small model (2 layers x 64) is trained for the whole compute budget; a larger one (4 x 128)
is trained for the same number of FLOPs (6 x parameters x tokens per step, so fewer steps),
then compressed by the joint planner (`ts.plan(search="joint")`) to the small model's fp32
file size. Validation loss (nats per byte of text) of all three, the compressed one measured
on its file read back; the test split read once at the end. Writes
bench/results/plan_train_big.json and docs/plan_train_big.png (loss against training FLOPs,
and loss against file bytes).

    python bench/bench_train_big.py            # a few minutes on 2 busy cores
    python bench/bench_train_big.py --quick    # smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torchshrink as ts  # noqa: E402
from _common import table  # noqa: E402

FAMILY = {"small": {"n_layer": 2, "n_embd": 64, "n_head": 4}, "big": {"n_layer": 4, "n_embd": 128, "n_head": 4}}
BATCH, BLOCK = 32, 64


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def val_loss(m: nn.Module, loader: Any) -> float:
    return float(ts.evaluate(m, loader)["loss"])


def train(model: nn.Module, data: Any, steps: int, val: Any, points: int, lr: float = 3e-3,
          seed: int = 0) -> list[dict[str, float]]:
    """AdamW, linear warm-up then cosine to zero over `steps`; validation loss at `points`
    evenly spaced steps. Returns the curve (step, tokens, FLOPs, loss)."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warm = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    n = params(model)
    marks = {round(steps * (i + 1) / points) for i in range(points)}
    curve = []
    it = iter(data)
    model.train()
    for step in range(1, steps + 1):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(data)
            x, y = next(it)
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step in marks:
            tokens = step * BATCH * BLOCK
            curve.append({"step": step, "tokens": tokens, "flops": 6.0 * n * tokens, "val_loss": val_loss(model, val)})
            model.train()
    model.eval()
    return curve


def file_bytes(m: nn.Module, like: nn.Module) -> tuple[int, nn.Module]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.tsz")
        ts.save(m, path)
        return os.path.getsize(path), ts.load(path, like=like)


def options(name: str, m: nn.Module) -> list[Any]:
    """A short per-layer menu (weight-only grids, k-means sharing, pruning under int4): the
    full default menu on every projection of the big model costs more than its training did."""
    from torchshrink.plan.options import LayerOption

    cols = int(m.weight.shape[1])
    out = [LayerOption(bits=b, group_size=None) for b in (8, 6, 4, 3)]
    if cols % 64 == 0 and cols > 64:
        out += [LayerOption(bits=b, group_size=64) for b in (4, 3, 2)]
    out += [LayerOption(kmeans_bits=b) for b in (4, 3)]
    out += [LayerOption(sparsity=0.5, bits=4), LayerOption(sparsity=0.5, kmeans_bits=3)]
    return out


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), dpi=120)
    for name, color in (("small", "tab:blue"), ("big", "tab:orange")):
        c = out["runs"][name]["curve"]
        a.plot([p["flops"] for p in c], [p["val_loss"] for p in c], "o-", color=color,
               label=f"{name} ({out['runs'][name]['params']:,} params)")
    big = out["runs"]["big"]
    a.scatter([big["curve"][-1]["flops"]], [out["compressed"]["val_loss"]], marker="*", s=180, color="tab:red",
              zorder=4, label="big, then compressed to the small file size")
    a.set_xlabel("training FLOPs (6 x params x tokens)")
    a.set_ylabel("validation loss (nats/byte)")
    a.set_title("equal training compute")
    a.grid(True, alpha=0.3)
    a.legend(fontsize=8)
    pts = [("small fp32", out["runs"]["small"]["file_bytes"], out["runs"]["small"]["val_loss"], "tab:blue"),
           ("big fp32", big["file_bytes"], big["val_loss"], "tab:orange"),
           ("big compressed", out["compressed"]["file_bytes"], out["compressed"]["val_loss"], "tab:red")]
    for label, x, y, color in pts:
        b.scatter([x], [y], color=color, s=60, zorder=3)
        b.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    b.set_xscale("log")
    b.set_xlabel("file bytes (log)")
    b.set_ylabel("validation loss (nats/byte)")
    b.set_title("what ships: loss against file size")
    b.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--small-steps", type=int, default=None, help="steps of the small model (the compute budget)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "plan_train_big.json"))
    ap.add_argument("--plot", default=None, help="PNG path (default docs/plan_train_big.png; --quick: beside --out)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    steps_small = args.small_steps or (60 if args.quick else 400)
    t_start = time.perf_counter()
    splits = ts.data.load_text(max_bytes=400_000, block_size=BLOCK)
    data = DataLoader(splits.train, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(Subset(splits.val, range(min(256, len(splits.val)))), batch_size=128)
    test = DataLoader(Subset(splits.test, range(min(512, len(splits.test)))), batch_size=128)
    models = {k: ts.models.create("gpt_tiny", **v) for k, v in FAMILY.items()}
    n = {k: params(m) for k, m in models.items()}
    steps = {"small": steps_small, "big": max(1, round(steps_small * n["small"] / n["big"]))}
    out: dict[str, Any] = {"protocol": {"corpus": "the Python standard library's source (ts.data.load_text, 400 kB)",
                                        "batch": BATCH, "block": BLOCK, "threads": 1, "seed": 0, "lr": 3e-3,
                                        "flops": "6 x all parameters x tokens", "quick": args.quick,
                                        "machine": platform.platform(), "torch": torch.__version__},
                           "runs": {}}
    for k, m in models.items():
        torch.manual_seed(0)
        m = ts.models.create("gpt_tiny", **FAMILY[k])
        t0 = time.perf_counter()
        curve = train(m, data, steps[k], val, points=6)
        nbytes, back = file_bytes(m, ts.models.create("gpt_tiny", **FAMILY[k]))
        out["runs"][k] = {"config": FAMILY[k], "params": n[k], "steps": steps[k], "curve": curve,
                          "loadavg": os.getloadavg(),
                          "train_seconds": time.perf_counter() - t0, "file_bytes": nbytes,
                          "val_loss": val_loss(back, val), "model": m}
        print(f"{k}: {n[k]:,} params, {steps[k]} steps, {curve[-1]['flops']:.3g} FLOPs, val loss "
              f"{out['runs'][k]['val_loss']:.4f}, {nbytes:,} bytes ({out['runs'][k]['train_seconds']:.0f} s)",
              flush=True)
    big, small = out["runs"]["big"], out["runs"]["small"]
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(splits.train), generator=g)[:64]
    calib = [splits.train[idx[i: i + 16]][0] for i in range(0, 32, 16)]

    def neg_val(m: nn.Module) -> float:
        return -val_loss(m, val)

    t0 = time.perf_counter()
    res = ts.plan(copy.deepcopy(big["model"]), evaluate=neg_val, max_bytes=float(small["file_bytes"]),
                  calibration=calib, calibration_batches=len(calib), search="joint", pareto_points=0,
                  options=options, refine=6, progress=False)
    if res.model is None:
        raise SystemExit("the planner found no plan of the big model within the small model's file size")
    nbytes, back = file_bytes(res.model, ts.models.create("gpt_tiny", **FAMILY["big"]))
    out["compressed"] = {"file_bytes": nbytes, "budget_bytes": small["file_bytes"], "val_loss": val_loss(back, val),
                         "plan_seconds": time.perf_counter() - t0, "planner_seconds_split": res.seconds,
                         "per_layer": res.per_layer, "test_loss": val_loss(back, test)}
    for k in ("small", "big"):
        out["runs"][k]["test_loss"] = val_loss(out["runs"][k].pop("model"), test)
    out["seconds"] = time.perf_counter() - t_start
    out["protocol"]["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    png = Path(args.plot) if args.plot else (Path(args.out).parent / "plan_train_big.png" if args.quick
                                              else ROOT / "docs" / "plan_train_big.png")
    plot(out, png)
    rows = [["small, whole budget", f"{small['params']:,}", small["steps"], f"{small['file_bytes']:,}",
             f"{small['val_loss']:.4f}", f"{small['test_loss']:.4f}"],
            ["big, same FLOPs", f"{big['params']:,}", big["steps"], f"{big['file_bytes']:,}", f"{big['val_loss']:.4f}",
             f"{big['test_loss']:.4f}"],
            ["big, then joint plan", f"{big['params']:,}", big["steps"], f"{nbytes:,}",
             f"{out['compressed']['val_loss']:.4f}", f"{out['compressed']['test_loss']:.4f}"]]
    print(table(["model", "params", "steps", "file bytes", "val loss", "test loss"], rows,
                title=f"train big, then compress (equal training FLOPs {small['curve'][-1]['flops']:.3g})"))
    print(f"wrote {args.out} and {png} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

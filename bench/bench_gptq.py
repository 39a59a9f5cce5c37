"""GPTQ and AWQ against rounding to nearest on a small transformer, side by side with Intel
Neural Compressor's RTN, GPTQ and AWQ, in one run.

    python bench/bench_gptq.py            # full run (~8 min on 2 cores)
    python bench/bench_gptq.py --quick    # smoke run

gpt_tiny (4 blocks, n_embd 128, 0.87 M parameters) is trained on the bundled byte-level corpus
(Python standard-library source), then every Linear, the output head included, is quantized to
weight-only int4/int3 (symmetric, per group of 32 input columns or per output channel) from 32
calibration batches of the training split. Reported: validation loss in nats per byte (lower is
better) and its rise over fp32, the bytes of our saved file, and the time each quantizer took.
Writes bench/results/gptq.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import torchshrink as ts
from _common import table

RESULTS = Path(__file__).resolve().parent / "results" / "gptq.json"


def _inc() -> Any:
    try:
        from neural_compressor.torch import quantization as q

        return q
    except Exception:  # not installed, or incompatible with this torch
        return None


def inc_quantize(model: nn.Module, algorithm: str, bits: int, group_size: int | None,
                 calib: list[torch.Tensor]) -> nn.Module:
    """Intel Neural Compressor 3.x weight-only quantization of every Linear (its prepare /
    calibrate / convert flow; layer-wise loading off, which needs a Hugging Face checkpoint)."""
    q = _inc()
    cfg_cls = {"gptq": q.GPTQConfig, "awq": q.AWQConfig, "rtn": q.RTNConfig}[algorithm]
    cfg = cfg_cls(bits=bits, group_size=group_size or -1, use_sym=True, use_layer_wise=False, model_path=".")
    extra = {"example_inputs": calib[0]} if algorithm == "awq" else {}  # AWQ traces the graph to fold scales
    m = q.prepare(copy.deepcopy(model).eval(), cfg, **extra)
    with torch.no_grad():
        for x in calib:
            m(x)
    return q.convert(m)


def val_loss(model: nn.Module, loader: DataLoader) -> float:
    return float(ts.evaluate(model, loader)["loss"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 1200, 60 with --quick)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    steps = args.steps or (60 if args.quick else 1200)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    splits = ts.data.load_text(max_bytes=300_000, block_size=64)
    train = DataLoader(splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(splits.val, batch_size=128)
    torch.manual_seed(0)
    base = ts.models.create("gpt_tiny")
    t0 = time.perf_counter()
    ts.fit(base, train, max_steps=steps, lr=3e-3, warmup_steps=50, progress=False, seed=0)
    base.eval()
    fp32 = val_loss(base, val)
    n_params = sum(p.numel() for p in base.parameters())
    print(f"gpt_tiny: {n_params:,} params, {steps} steps in {time.perf_counter() - t0:.0f} s, "
          f"val loss {fp32:.4f} nats/byte", flush=True)

    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(splits.train), generator=g)[: 32 * 16]
    calib = [splits.train[idx[i : i + 16]][0] for i in range(0, len(idx), 16)]  # 32 batches of 16 blocks
    settings = [(4, 32), (3, 32), (3, None)] if not args.quick else [(4, 32), (3, None)]
    inc = _inc()
    rows: list[dict[str, Any]] = []
    with tempfile_dir() as d:
        for bits, gs in settings:
            grid = f"int{bits} " + (f"g{gs}" if gs else "per-channel")
            for clip in ("minmax", "mse", "output"):
                for alg in ("rtn", "gptq", "awq"):
                    t = time.perf_counter()
                    cfg = ts.WeightOnly(bits=bits, group_size=gs, algorithm=alg, clip=clip)  # type: ignore[arg-type]
                    q = ts.quantize(copy.deepcopy(base), cfg, calibration=calib, progress=False)
                    secs = time.perf_counter() - t
                    path = d / f"{alg}_{bits}_{gs}_{clip}.tsz"
                    ts.save(q, path)
                    loss = val_loss(q, val)
                    rows.append({"grid": grid, "quantizer": f"ours {alg.upper()} (clip {clip})", "bits": bits,
                                 "group_size": gs, "val_loss": loss, "rise": loss - fp32, "seconds": secs,
                                 "file_bytes": path.stat().st_size})
                    print(f"  {grid} ours {alg} clip={clip}: {loss:.4f} ({secs:.1f} s)", flush=True)
            if inc is not None:
                for alg in ("rtn", "gptq", "awq"):
                    t = time.perf_counter()
                    q = inc_quantize(base, alg, bits, gs, calib)
                    secs = time.perf_counter() - t
                    loss = val_loss(q, val)
                    rows.append({"grid": grid, "quantizer": f"INC {alg.upper()}", "bits": bits, "group_size": gs,
                                 "val_loss": loss, "rise": loss - fp32, "seconds": secs, "file_bytes": None})
                    print(f"  {grid} INC {alg}: {loss:.4f} ({secs:.1f} s)", flush=True)

    base_path_bytes = _fp32_bytes(base)
    header = ["grid", "quantizer", "val loss (nats/byte)", "rise vs fp32", "our file bytes", "quantize s"]
    out = [["fp32", "-", f"{fp32:.4f}", "-", f"{base_path_bytes:,}", "-"]]
    for r in rows:
        out.append([r["grid"], r["quantizer"], f"{r['val_loss']:.4f}", f"{r['rise']:+.4f}",
                    f"{r['file_bytes']:,}" if r["file_bytes"] else "-", f"{r['seconds']:.1f}"])
    inc_version = _inc_version()
    result = {"meta": {"quick": args.quick, "steps": steps, "threads": args.threads, "torch": torch.__version__,
                       "python": sys.version.split()[0], "machine": platform.machine(),
                       "peer": inc_version, "seconds": time.perf_counter() - t_start, "params": n_params,
                       "calibration": "32 batches x 16 blocks of 64 bytes from the training split"},
              "fp32_val_loss": fp32, "fp32_file_bytes": base_path_bytes, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print()
    print(table(header, out))
    print(f"\n{inc_version}; {args.threads} threads; total {result['meta']['seconds']:.0f} s; wrote {args.out}")
    return 0


def tempfile_dir() -> Any:
    import contextlib
    import tempfile

    @contextlib.contextmanager
    def cm() -> Any:
        with tempfile.TemporaryDirectory() as d:
            yield Path(d)
    return cm()


def _fp32_bytes(model: nn.Module) -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fp32.tsz"
        ts.save(model, path)
        return path.stat().st_size


def _inc_version() -> str:
    try:
        from importlib.metadata import version

        return f"Intel Neural Compressor {version('neural-compressor-pt')}"
    except Exception:
        return "Intel Neural Compressor not installed"


if __name__ == "__main__":
    raise SystemExit(main())

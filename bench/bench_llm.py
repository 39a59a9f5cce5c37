"""LLM-scale calibration: passes linear in depth, peak memory of GPTQ, GPTQ vs act-order vs
RTN on a trained small LM, and the vectorized clip search, in one run.

    python bench/bench_llm.py            # full run (a few minutes on 2 cores)
    python bench/bench_llm.py --quick    # smoke run

(a) GPTQ and SparseGPT wall time and block-forward count on 8- vs 16-layer Llama-style models
    built from LlamaForCausalLM configs (same width, same calibration set); the ratio 16/8.
(b) peak RSS (ru_maxrss of a child process) while GPTQ int4 g128 quantizes a Llama-style model,
    against its fp32 weight bytes.
    Full run: a ~125M-parameter Llama (hidden 768, 12 layers, intermediate 2048, vocab 32000),
    against the bar 1.5 x fp32 weight bytes + 1 GiB.
(c) llm-compressor: not run here (not installed beside torch 2.13.0); recorded as such.
(f) compressed-tensors export of GPTQ int4 g128 and int8 per-channel Llamas: folder vs .tsz
    bytes, and the max abs logit difference after transformers reloads the folder (needs the
    compressed-tensors package).
(g) AWQ int3 per channel (clip="output") on a trained gpt_tiny, with the scales folded into the
    LayerNorms (fold=True) vs kept in each layer (fold=False): perplexity.
(d) gpt_tiny trained as in bench_gptq.py: RTN vs GPTQ vs GPTQ act-order, int4 g128 and int3
    per channel, validation loss and perplexity (ts.evaluate_lm on the validation bytes).
(e) the mse clip search on one 4096x4096 layer: the former per-ratio loop vs the vectorized one.
Writes bench/results/llm.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchshrink as ts
from _common import table, trained_gpt_tiny

RESULTS = Path(__file__).resolve().parent / "results" / "llm.json"


def llama(layers: int, hidden: int, inter: int, vocab: int = 512) -> nn.Module:
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                   num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                                   vocab_size=vocab, max_position_embeddings=256)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def calibration(n: int, seq: int, vocab: int = 512) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (1, seq), generator=g) for _ in range(n)]


def depth_scaling(quick: bool) -> list[dict[str, Any]]:
    hidden, inter = (128, 256) if quick else (256, 512)
    calib = calibration(4 if quick else 8, 64 if quick else 128)
    methods = {"GPTQ int4 g128": lambda m: ts.quantize(m, ts.WeightOnly(bits=4, group_size=128, algorithm="gptq"),
                                                       calibration=calib, progress=False),
               "SparseGPT 50%": lambda m: ts.prune(m, ts.MagnitudePruning(sparsity=0.5, criterion="obs"),
                                                   calibration=calib)}
    rows = []
    for name, run in methods.items():
        out: dict[int, tuple[float, int]] = {}
        for depth in (8, 16):
            model = llama(depth, hidden, inter)
            count = [0]
            for layer in model.model.layers:
                layer.register_forward_pre_hook(lambda m, a, c=count: c.__setitem__(0, c[0] + 1))
            t = time.perf_counter()
            run(model)
            out[depth] = (time.perf_counter() - t, count[0])
        rows.append({"method": name, "hidden": hidden, "batches": len(calib), "seconds_8": out[8][0],
                     "seconds_16": out[16][0], "block_forwards_8": out[8][1], "block_forwards_16": out[16][1],
                     "time_ratio": out[16][0] / out[8][0]})
        print(f"  {name}: 8 layers {out[8][0]:.1f} s ({out[8][1]} block forwards), 16 layers {out[16][0]:.1f} s "
              f"({out[16][1]}), ratio {out[16][0] / out[8][0]:.2f}", flush=True)
    return rows


def _rss_child(q: Any, layers: int, hidden: int, inter: int, vocab: int, n: int, seq: int,
               rollback: bool = False) -> None:
    torch.set_num_threads(2)
    model = llama(layers, hidden, inter, vocab)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    cfg = ts.WeightOnly(bits=4, group_size=128, algorithm="gptq", **({"rollback": True} if rollback else {}))
    ts.quantize(model, cfg, calibration=calibration(n, seq, vocab), progress=False)
    q.put({"params": weights // 4, "rollback": rollback, "loadavg": os.getloadavg(),
           "fp32_weight_bytes": weights, "rss_before_bytes": before,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "seconds": time.perf_counter() - t, "layers": layers, "hidden": hidden, "intermediate": inter,
           "vocab": vocab, "calibration": f"{n} x {seq} tokens"})


def peak_rss(quick: bool, rollback: bool = False) -> dict[str, Any]:
    shape = (2, 256, 688, 2048, 4, 128) if quick else (12, 768, 2048, 32000, 8, 256)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_rss_child, args=(q, *shape, rollback))
    p.start()
    res = q.get()
    p.join()
    res["peak_over_weights"] = res["peak_rss_bytes"] / res["fp32_weight_bytes"]
    res["bar_bytes"] = 1.5 * res["fp32_weight_bytes"] + 2**30
    res["within_bar"] = res["peak_rss_bytes"] <= res["bar_bytes"]
    print(f"  GPTQ{' (rollback=True)' if rollback else ''} on a {res['params'] / 1e6:.1f} M-param Llama: peak RSS "
          f"{res['peak_rss_bytes'] / 2**20:.0f} MiB (bar {res['bar_bytes'] / 2**20:.0f} MiB), fp32 weights "
          f"{res['fp32_weight_bytes'] / 2**20:.0f} MiB, {res['seconds']:.0f} s", flush=True)
    return res


def export_ct() -> dict[str, Any]:
    import os
    import tempfile

    import transformers

    out: dict[str, Any] = {}
    for name, wo in (("int4_g128", {"bits": 4, "group_size": 128}), ("int8_channel", {"bits": 8, "group_size": None})):
        model = llama(4, 512, 1376, 4096)
        ts.quantize(model, ts.WeightOnly(algorithm="gptq", targets=("model.layers.*",), **wo),
                    calibration=calibration(4, 64, 4096), progress=False)
        with tempfile.TemporaryDirectory() as d:
            r = ts.export(model, f"{d}/ct", format="compressed-tensors")
            ts.save(model, f"{d}/m.tsz")
            row: dict[str, Any] = {"folder_bytes": r.bytes, "tsz_bytes": os.path.getsize(f"{d}/m.tsz")}
            try:
                back = transformers.AutoModelForCausalLM.from_pretrained(f"{d}/ct").eval()
                x = torch.randint(0, 4096, (4, 128), generator=torch.Generator().manual_seed(99))
                with torch.no_grad():
                    row["logits_max_abs_diff"] = float((model(x).logits - back(x).logits).abs().max())
            except ImportError as e:
                row["logits_max_abs_diff"] = f"not measured: {e}"
        out[name] = row
        print(f"  compressed-tensors {name}: folder {row['folder_bytes']:,} B, .tsz {row['tsz_bytes']:,} B, "
              f"logits max abs diff {row['logits_max_abs_diff']}", flush=True)
    return out


def awq_fold(quick: bool) -> dict[str, Any]:
    base, calib, _, text = trained_gpt_tiny(quick)

    def ppl(m: nn.Module) -> float:
        return float(ts.evaluate_lm(m, text, tokenizer=lambda s: list(s.encode("latin-1")))["perplexity"])

    out: dict[str, Any] = {"fp32": ppl(base), "protocol": "gpt_tiny 2 x 64 trained 300 steps (batch 32 x 64 bytes, "
                           "seed 0) on 120 kB of the stdlib corpus; 8 calibration batches of 16 x 64; perplexity on "
                           "20 kB of the validation split"}
    for grid, wo in (("int3 per-channel", {"bits": 3, "group_size": None}), ("int4 g32", {"bits": 4, "group_size": 32})):
        for fold in (False, True):
            q = ts.quantize(copy.deepcopy(base), ts.WeightOnly(algorithm="awq", clip="output", fold=fold,
                                                               **wo), calibration=calib, progress=False)
            out[f"{grid} fold={fold}"] = ppl(q)
    print("  AWQ perplexity: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items() if isinstance(v, float)), flush=True)
    return out


def act_order(quick: bool) -> list[dict[str, Any]]:
    from torch.utils.data import DataLoader

    splits = ts.data.load_text(max_bytes=300_000, block_size=64)
    train = DataLoader(splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(splits.val, batch_size=128)
    torch.manual_seed(0)
    base = ts.models.create("gpt_tiny")
    ts.fit(base, train, max_steps=60 if quick else 1200, lr=3e-3, warmup_steps=50, progress=False, seed=0)
    base.eval()
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(splits.train), generator=g)[: 32 * 16]
    calib = [splits.train[idx[i: i + 16]][0] for i in range(0, len(idx), 16)]
    val_bytes = bytes(splits.val.tensors[0][:, :].reshape(-1)[: 40_000].tolist())  # the validation text
    rows = []

    def score(name: str, m: nn.Module, grid: str, secs: float) -> None:
        loss = float(ts.evaluate(m, val)["loss"])
        ppl = ts.evaluate_lm(m, val_bytes.decode("latin-1"), tokenizer=lambda s: list(s.encode("latin-1")))
        rows.append({"grid": grid, "quantizer": name, "val_loss": loss, "perplexity": ppl["perplexity"],
                     "seconds": secs})
        print(f"  {grid} {name}: val loss {loss:.4f}, ppl {ppl['perplexity']:.4f}", flush=True)

    score("fp32", base, "-", 0.0)
    for bits, gs in ((4, 128), (3, None)):
        grid = f"int{bits} " + (f"g{gs}" if gs else "per-channel")
        gsz = gs if gs is None else 128 if base.blocks[0].mlp.fc.in_features % 128 == 0 else 32
        for name, cfg in (("RTN", ts.WeightOnly(bits=bits, group_size=gsz, algorithm="rtn")),
                          ("GPTQ", ts.WeightOnly(bits=bits, group_size=gsz, algorithm="gptq")),
                          ("GPTQ act-order", ts.WeightOnly(bits=bits, group_size=gsz, algorithm="gptq",
                                                           desc_act=True))):
            t = time.perf_counter()
            q = ts.quantize(copy.deepcopy(base), cfg, calibration=calib, progress=False)
            score(name, q, grid, time.perf_counter() - t)
    return rows


def _loop_grid(rows: torch.Tensor, bits: int, steps: int = 40) -> torch.Tensor:
    """The clip search as it was: one fake-quant pass over the whole tensor per ratio."""
    from torchshrink.quant.fake import _scale_zero, fake_quantize

    lo, hi = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
    best_err = torch.full_like(lo, float("inf"))
    best_s = lo
    for i in range(steps):
        ratio = 1.0 - 0.7 * i / steps
        s, z = _scale_zero(lo * ratio, hi * ratio, bits, True)
        err = (fake_quantize(rows, s, z, bits, True) - rows).pow(2).sum(1, keepdim=True)
        better = err < best_err
        best_err, best_s = torch.where(better, err, best_err), torch.where(better, s, best_s)
    return best_s


def clip_search() -> dict[str, Any]:
    from torchshrink.quant.fake import grid_params, group_rows

    torch.manual_seed(0)
    rows = group_rows(torch.randn(4096, 4096) * 0.02, "group", 128)
    t = time.perf_counter()
    ref = _loop_grid(rows, 4)
    loop = time.perf_counter() - t
    t = time.perf_counter()
    s, _ = grid_params(rows, 4, True, "mse")
    vec = time.perf_counter() - t
    m = nn.Sequential(nn.Linear(4096, 4096))
    t = time.perf_counter()
    ts.quantize(m, ts.WeightOnly(bits=4, group_size=128), progress=False)
    layer = time.perf_counter() - t
    same = float((s == ref).float().mean())
    print(f"  mse clip search 4096x4096 int4 g128: loop {loop:.2f} s, vectorized {vec:.2f} s "
          f"({same:.4%} identical scales); whole RTN layer {layer:.2f} s", flush=True)
    return {"loop_seconds": loop, "vectorized_seconds": vec, "identical_scales": same, "rtn_layer_seconds": layer}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--skip", default="", help="comma list of parts to skip: depth,rss,act,clip,export,awq")
    p.add_argument("--only", default="", help="comma list of the only parts to run")
    p.add_argument("--rollback", action="store_true", help="rss: also measure WeightOnly(rollback=True)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = set(args.skip.split(","))
    if args.only:
        skip = {"depth", "rss", "act", "clip", "export", "awq"} - set(args.only.split(","))
    t0 = time.perf_counter()
    result: dict[str, Any] = {"meta": {"quick": args.quick, "threads": args.threads, "torch": torch.__version__,
                                       "python": sys.version.split()[0], "machine": platform.machine(),
                                       "loadavg_start": os.getloadavg()},
                              "llm_compressor": "not run: it needs its own venv (it pins transformers <= 5.17 and compressed-tensors 0.19); see ECOSYSTEM.md"}
    if "clip" not in skip:
        result["clip_search"] = clip_search()
    if "depth" not in skip:
        result["depth"] = depth_scaling(args.quick)
    if "rss" not in skip:
        result["peak_rss"] = peak_rss(args.quick)
        if args.rollback:
            result["peak_rss_rollback"] = peak_rss(args.quick, rollback=True)
    if "export" not in skip:
        result["compressed_tensors"] = export_ct()
    if "awq" not in skip:
        result["awq_fold"] = awq_fold(args.quick)
    if "act" not in skip:
        result["act_order"] = act_order(args.quick)
    result["meta"]["seconds"] = time.perf_counter() - t0
    result["meta"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if "depth" in result:
        print(table(["method", "8-layer s", "16-layer s", "ratio", "block fwd 8", "block fwd 16"],
                    [[r["method"], f"{r['seconds_8']:.1f}", f"{r['seconds_16']:.1f}", f"{r['time_ratio']:.2f}",
                      r["block_forwards_8"], r["block_forwards_16"]] for r in result["depth"]]))
    if "act_order" in result:
        print(table(["grid", "quantizer", "val loss", "perplexity", "s"],
                    [[r["grid"], r["quantizer"], f"{r['val_loss']:.4f}", f"{r['perplexity']:.4f}",
                      f"{r['seconds']:.1f}"] for r in result["act_order"]]))
    print(f"wrote {args.out} in {result['meta']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

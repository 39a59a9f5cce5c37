"""A small transformer LM trained here, compressed every way side by side with the peers.

Model: a Hugging Face `LlamaForCausalLM` built from a config (4 layers, width 128, 4 heads,
grouped-query attention with 2 key/value heads, gated MLP of 384), next-byte prediction on the
Python standard library's source (`ts.data` text corpus, 64-byte blocks). Llama's projections
are `nn.Linear`, so every method of ours touches every projection (GPT-2's `Conv1D` would not
be seen by all of them yet). The model is wrapped so it takes token ids and returns logits.

Every variant of ours is timed and scored in its inference form (`ts.for_inference` at batch 1,
the form per layer recorded in the JSON), as a user would serve it. Variants, in one run: fp32;
our DynamicInt8 (7-bit activations as PyTorch's default, 8-bit, and one int8 scale per token),
StaticInt8, WeightOnly int8, WeightOnly int4 GPTQ (group 32); 50% unstructured (magnitude, Wanda, SparseGPT/OBS)
and 2:4; heads/MLP pruning (HeadPruning, half the block MACs) with a short fine-tune; SVD; peers:
torch.ao `quantize_dynamic`, torchao int8 dynamic-activation/int8-weight and int8 weight-only,
NNCF `compress_weights` int8. Quality: validation loss and perplexity (bytes). Latency: 1 thread,
batch 1 and 8 of 64 tokens, all variants interleaved in each round, medians; the load average is
written beside the figures.

    python bench/bench_transformer.py            # full (a few minutes of training)
    python bench/bench_transformer.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import torchshrink as ts
from torchshrink.data.text import load_text
from torchshrink.measure import resident_bytes

sys.path.insert(0, str(Path(__file__).parent))
from _common import table  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "transformer.json"


class ByteLM(nn.Module):
    """token ids -> logits, so calibration, evaluation and latency see plain tensors."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids, use_cache=False).logits


def build(layers: int, width: int) -> ByteLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=width, intermediate_size=3 * width, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    return ByteLM(LlamaForCausalLM(cfg))


def batches(ds: Any, size: int, limit: int | None = None, shuffle: bool = False, seed: int = 0) -> list[Any]:
    n = len(ds) if limit is None else min(limit, len(ds))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n] if shuffle else torch.arange(n)
    x, y = ds.tensors
    return [(x[order[i:i + size]], y[order[i:i + size]]) for i in range(0, n, size)]


def train(model: nn.Module, data: list[Any], seconds: float, lr: float) -> int:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, y = data[steps % len(data)]
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
    model.eval()
    return steps


@torch.no_grad()
def val_loss(model: nn.Module, data: list[Any]) -> float:
    model.eval()
    total, n = 0.0, 0
    for x, y in data:
        total += float(F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(), reduction="sum"))
        n += y.numel()
    return total / n


def latency(models: dict[str, nn.Module], example: torch.Tensor, rounds: int, reps: int) -> dict[str, float]:
    """Median ms per call; every round times each model once, in a fresh order."""
    times: dict[str, list[float]] = {k: [] for k in models}
    names = list(models)
    with torch.inference_mode():
        for m in models.values():
            for _ in range(2):
                m(example)
        for r in range(rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t = time.perf_counter()
                for _ in range(reps):
                    models[k](example)
                times[k].append((time.perf_counter() - t) * 1000 / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def peer(fn: Callable[[], nn.Module]) -> tuple[nn.Module | None, str | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(), None
    except Exception as e:  # a peer that does not apply is reported, not fatal
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def torchao_quant(base: nn.Module, which: str) -> nn.Module:
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    m = copy.deepcopy(base)
    quantize_(m, Int8DynamicActivationInt8WeightConfig() if which == "dyn" else Int8WeightOnlyConfig())
    return m


def nncf_int8(base: nn.Module, example: torch.Tensor) -> nn.Module:
    import nncf

    m = copy.deepcopy(base)
    return nncf.compress_weights(m, mode=nncf.CompressWeightsMode.INT8_ASYM, dataset=nncf.Dataset([example]))


def macs_of(model: nn.Module, x: torch.Tensor) -> int:
    return int(ts.measure(model, example=x).macs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--train-seconds", type=float, default=240.0)
    ap.add_argument("--threads", type=int, default=2, help="threads for training (latency always uses 1)")
    args = ap.parse_args()
    quick = args.quick
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    splits = load_text(block_size=64, max_bytes=200_000 if quick else None)
    train_b = batches(splits.train, 32, shuffle=True)
    val_b = batches(splits.val, 32, limit=32 if quick else 512)
    calib = [x for x, _ in batches(splits.train, 8, limit=16 if quick else 64, shuffle=True, seed=1)]
    fp32 = build(2 if quick else 4, 64 if quick else 128)
    steps = train(fp32, train_b, 5.0 if quick else args.train_seconds, 3e-3)
    x1, x8 = val_b[0][0][:1], val_b[0][0][:8]
    base_macs = macs_of(fp32, x1)
    results: dict[str, dict[str, Any]] = {}
    fp32_resident = resident_bytes(fp32)
    models: dict[str, nn.Module] = {"fp32": fp32}
    notes: dict[str, str] = {}

    forms: dict[str, dict[str, int]] = {}

    def ours(name: str, fn: Callable[[nn.Module], nn.Module], **form: Any) -> None:
        # Served as a user would serve it: in the inference form chosen per layer at batch 1.
        m, err = peer(lambda: ts.for_inference(fn(copy.deepcopy(fp32)), example=x1, **form))
        if m is None:
            notes[name] = err or "failed"
        else:
            models[name] = m.eval()
            chosen: dict[str, int] = {}
            for rec in getattr(m, "torchshrink_inference", {}).values():
                chosen[rec["chosen"]] = chosen.get(rec["chosen"], 0) + 1
            forms[name] = chosen

    # The int8 rows are compared with int8 peers, so they keep int8 arithmetic (decode_int8=False)
    # and int8 weights in memory (prefer="memory"), as the peers do.
    ours("ours DynamicInt8 (7-bit act)", lambda m: ts.quantize(m, ts.DynamicInt8(reduce_range=True)),
         decode_int8=False)
    ours("ours DynamicInt8 (8-bit act)", lambda m: ts.quantize(m, ts.DynamicInt8(reduce_range=False)),
         decode_int8=False)
    ours("ours DynamicInt8 (per-token act)", lambda m: ts.quantize(m, ts.DynamicInt8(activations="token")),
         decode_int8=False)
    ours("ours StaticInt8", lambda m: ts.quantize(m, ts.StaticInt8(), calibration=calib), decode_int8=False)
    ours("ours WeightOnly int8", lambda m: ts.quantize(m, ts.WeightOnly(bits=8, group_size=None)),
         prefer="memory")
    ours("ours WeightOnly int4 GPTQ g32", lambda m: ts.quantize(
        m, ts.WeightOnly(bits=4, group_size=32, algorithm="gptq"), calibration=calib, progress=False))
    ours("ours 50% magnitude", lambda m: ts.prune(m, ts.MagnitudePruning(sparsity=0.5)))
    ours("ours 50% Wanda", lambda m: ts.prune(m, ts.MagnitudePruning(sparsity=0.5, criterion="wanda"),
                                              calibration=calib))
    ours("ours 50% SparseGPT/OBS", lambda m: ts.prune(m, ts.MagnitudePruning(sparsity=0.5, criterion="obs"),
                                                      calibration=calib))
    ours("ours 2:4", lambda m: ts.prune(m, ts.NMPruning(n=2, m=4)))
    ours("ours SVD (half the params)", lambda m: ts.factorize(m, ts.SvdFactorization(ratio=0.5)))

    def heads(m: nn.Module) -> nn.Module:
        m = ts.prune(m, ts.HeadPruning(heads=0.5, mlp=0.5))
        train(m, train_b, 2.0 if quick else args.train_seconds / 4, 1e-3)
        return m

    ours("ours heads+MLP 50% + fine-tune", heads)
    for name, fn in (("torch.ao quantize_dynamic", lambda: torch.ao.quantization.quantize_dynamic(
                          copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8)),
                     ("torchao int8 dyn-act/int8-weight", lambda: torchao_quant(fp32, "dyn")),
                     ("torchao int8 weight-only", lambda: torchao_quant(fp32, "wo")),
                     ("nncf compress_weights int8", lambda: nncf_int8(fp32, x1))):
        m, err = peer(fn)
        if m is None:
            notes[name] = err or "failed"
        else:
            models[name] = m.eval()
    for name, m in list(models.items()):
        try:
            loss = val_loss(m, val_b)
        except Exception as e:
            notes[name] = f"evaluation failed: {type(e).__name__}: {str(e)[:160]}"
            del models[name]
            continue
        results[name] = {"val_loss": loss, "perplexity": math.exp(loss)}
        if name in forms:
            results[name]["inference_forms"] = forms[name]
            results[name]["resident_bytes"] = resident_bytes(m)
        # torch's FLOP counter does not see int8 kernels, so quantized forms get no MAC count
        structural = name == "fp32" or any(w in name for w in ("SVD", "heads", "magnitude", "Wanda", "OBS", "2:4"))
        results[name]["macs_b1"] = macs_of(m, x1) if structural else None
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rounds, reps = (2, 1) if quick else (11, 4)
    lat1 = latency(models, x1, rounds, reps)
    lat8 = latency(models, x8, rounds, max(1, reps // 2))
    load_after = os.getloadavg()
    for name in models:
        r = results[name]
        r["ms_b1"], r["ms_b8"] = lat1[name], lat8[name]
        r["speed_b1_vs_fp32"] = lat1["fp32"] / lat1[name]
        r["speed_b8_vs_fp32"] = lat8["fp32"] / lat8[name]
        r["loss_vs_fp32"] = r["val_loss"] - results["fp32"]["val_loss"]
    # Like for like: int8 weights with int8 activations, and int8 weights with float activations.
    kinds = {"int8 weights + int8 activations": (
                 [k for k in results if k.startswith("ours") and ("DynamicInt8" in k or "StaticInt8" in k)],
                 [k for k in ("torch.ao quantize_dynamic", "torchao int8 dyn-act/int8-weight") if k in results]),
             "int8 weight-only": (
                 [k for k in ("ours WeightOnly int8",) if k in results],
                 [k for k in ("torchao int8 weight-only", "nncf compress_weights int8") if k in results])}
    verdict: dict[str, Any] = {}
    for kind, (ours_k, peers_k) in kinds.items():
        if not ours_k or not peers_k:
            continue
        best_peer = min(peers_k, key=lambda k: results[k]["val_loss"])
        best_ours = min(ours_k, key=lambda k: results[k]["val_loss"])
        p, o = results[best_peer], results[best_ours]
        verdict[kind] = {"best_peer": best_peer, "best_ours": best_ours,
                         "quality_gap_percent": 100 * (o["val_loss"] - p["val_loss"]) / p["val_loss"],
                         "quality_within_0.1_percent": o["val_loss"] <= p["val_loss"] * 1.001,
                         "speed_b1_ours_over_peer": p["ms_b1"] / o["ms_b1"],
                         "speed_b8_ours_over_peer": p["ms_b8"] / o["ms_b8"]}
    out = {"model": "LlamaForCausalLM (byte LM, 4 layers, width 128, 4 heads / 2 kv heads, MLP 384)"
           if not quick else "LlamaForCausalLM quick (2 layers, width 64)",
           "corpus": "Python stdlib sources (ts.data default corpus), 64-byte blocks",
           "train_steps": steps, "train_seconds": 5.0 if quick else args.train_seconds,
           "train_threads": args.threads, "latency_threads": 1, "seq_len": 64, "rounds": rounds,
           "fp32_macs_b1": base_macs, "fp32_resident_bytes": fp32_resident, "loadavg_before": load_before, "loadavg_after": load_after,
           "val_tokens": sum(y.numel() for _, y in val_b), "results": results, "not_run": notes,
           "int8_verdict": verdict, "quick": quick}
    rows = [[k, f"{r['val_loss']:.4f}", f"{r['perplexity']:.3f}", f"{r['loss_vs_fp32']:+.4f}",
             f"{r['ms_b1']:.2f}", f"{r['speed_b1_vs_fp32']:.2f}x", f"{r['ms_b8']:.2f}",
             f"{r['speed_b8_vs_fp32']:.2f}x",
             f"{r['macs_b1'] / base_macs:.2f}" if r.get("macs_b1") else "-"] for k, r in results.items()]
    print(table(["variant", "val loss", "ppl", "dloss", "ms b1", "speed b1", "ms b8", "speed b8", "MACs"], rows,
                title=f"{out['model']}; {steps} training steps; 1 thread; load average "
                      f"{load_before[0]:.2f} -> {load_after[0]:.2f}"))
    for k, v in notes.items():
        print(f"not run: {k}: {v}")
    for kind, v in verdict.items():
        print(f"int8 verdict ({kind}):", json.dumps(v))
    if not quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

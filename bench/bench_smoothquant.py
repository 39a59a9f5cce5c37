"""SmoothQuant W8A8 side by side, in one run: fp32, int8 without smoothing (one activation scale
per call, and per token), ts.SmoothQuant (per token and per call), and torchao's W8A8 with and
without its SmoothQuant, on

- gpt_tiny (2 x 64) trained here on the stdlib corpus: perplexity on held-out bytes;
- the same model with outlier channels injected without changing its function (a few norm gains
  multiplied by c, the consuming weight columns divided by c: the float model computes the same
  logits, its activations now carry the outliers LLMs grow);
- a Llama and an OPT built from Hugging Face configs (random weights, outliers injected the same
  way): max |logit error| relative to the fp32 logits' max on held-out token batches.

    python bench/bench_smoothquant.py [--quick] [--threads 1] [--outlier 40]

Writes bench/results/smoothquant.json and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchshrink as ts
from _common import table, trained_gpt_tiny
from torchshrink.nn.calib import collect_stats

RESULTS = Path(__file__).resolve().parent / "results" / "smoothquant.json"


def inject_outliers(model: nn.Module, calib: list[torch.Tensor], factor: float, channels: int = 2) -> int:
    """Multiply `channels` gains of every norm that feeds Linear layers by `factor`, and divide
    the consumers' weight columns by it: the same function, with outlier activation channels.
    Returns the number of norms edited."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    norms = [(n, m) for n, m in model.named_modules()
             if n and isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() == 1
             and not list(m.children())]
    stats, _ = collect_stats([lambda b=b: model(b) for b in calib[:1]], linears, hessian=False,
                             stop_at_new_input=False, watch=norms)
    consumers: dict[str, list[nn.Linear]] = {}
    for name, s in stats.items():
        if s.producer is not None and s.producer in dict(norms):
            consumers.setdefault(s.producer, []).append(dict(linears)[name])  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for norm_name, layers in consumers.items():
            norm = model.get_submodule(norm_name)
            idx = torch.randperm(norm.weight.numel(), generator=g)[:channels]
            norm.weight[idx] *= factor
            bias = getattr(norm, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias[idx] *= factor
            for lin in {id(m): m for m in layers}.values():
                lin.weight[:, idx] /= factor
    return len(consumers)


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model(ids)
    return getattr(y, "logits", y).float()


def rel_error(model: nn.Module, ref: nn.Module, held: list[torch.Tensor]) -> float:
    worst = 0.0
    for ids in held:
        r = logits(ref, ids)
        worst = max(worst, float((logits(model, ids) - r).abs().max() / r.abs().max()))
    return worst


def torchao_w8a8(base: nn.Module, calib: list[torch.Tensor], smooth: bool) -> nn.Module:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    m = copy.deepcopy(base)
    if not smooth:
        quantize_(m, Int8DynamicActivationInt8WeightConfig())
        return m
    from torchao.prototype.smoothquant import SmoothQuantConfig
    from torchao.quantization.quantize_.common.quantization_step import QuantizationStep

    cfg = SmoothQuantConfig(base_config=Int8DynamicActivationInt8WeightConfig(), step=QuantizationStep.PREPARE,
                            alpha=0.5)
    quantize_(m, cfg)
    with torch.no_grad():
        for ids in calib:
            m(ids)
    cfg.step = QuantizationStep.CONVERT
    quantize_(m, cfg)
    return m


def variants(base: nn.Module, calib: list[torch.Tensor]) -> dict[str, Callable[[], nn.Module]]:
    def ours(config: Any) -> Callable[[], nn.Module]:
        return lambda: ts.quantize(copy.deepcopy(base), config, calibration=calib, progress=False)

    return {
        "fp32": lambda: base,
        "ts DynamicInt8 (per call)": ours(ts.DynamicInt8()),
        "ts DynamicInt8 (per token)": ours(ts.DynamicInt8(activations="token")),
        "ts SmoothQuant (per call)": ours(ts.SmoothQuant(activations="tensor")),
        "ts SmoothQuant (per token)": ours(ts.SmoothQuant()),
        "torchao W8A8": lambda: torchao_w8a8(base, calib, smooth=False),
        "torchao SmoothQuant W8A8": lambda: torchao_w8a8(base, calib, smooth=True),
    }


def run_rows(model_name: str, base: nn.Module, calib: list[torch.Tensor], held: list[torch.Tensor],
             ppl: Callable[[nn.Module], float] | None) -> list[dict[str, Any]]:
    rows = []
    for name, make in variants(base, calib).items():
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = make()
        except Exception as e:  # a peer that does not apply is reported, not fatal
            rows.append({"model": model_name, "variant": name, "error": f"{type(e).__name__}: {str(e)[:160]}"})
            continue
        secs = time.perf_counter() - t
        row: dict[str, Any] = {"model": model_name, "variant": name, "seconds": secs,
                               "rel_logit_error": rel_error(m, base, held)}
        if ppl is not None:
            row["perplexity"] = ppl(m)
        rows.append(row)
        print(f"  {model_name} / {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                       if isinstance(v, float)), flush=True)
    return rows


def gpt_tiny_rows(quick: bool, factor: float) -> list[dict[str, Any]]:
    base, calib, held, text = trained_gpt_tiny(quick)

    def ppl(m: nn.Module) -> float:
        return float(ts.evaluate_lm(m, text, tokenizer=lambda s: list(s.encode("latin-1")))["perplexity"])

    rows = run_rows("gpt_tiny 2x64 (trained)", base, calib, held, ppl)
    outlier = copy.deepcopy(base)
    inject_outliers(outlier, calib, factor)
    rows += run_rows(f"gpt_tiny 2x64 (trained) + outliers x{factor:g}", outlier, calib, held, ppl)
    return rows


def hf_rows(factor: float) -> list[dict[str, Any]]:
    import transformers

    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, 1000, (4, 32), generator=g) for _ in range(8)]
    held = [torch.randint(0, 1000, (4, 32), generator=g) for _ in range(4)]
    rows = []
    torch.manual_seed(0)
    builds = {
        "HF Llama 4x256 (config)": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=1000, tie_word_embeddings=False)),
        "HF OPT 4x256 (config)": lambda: transformers.OPTForCausalLM(transformers.OPTConfig(
            hidden_size=256, ffn_dim=1024, num_hidden_layers=4, num_attention_heads=4, vocab_size=1000,
            word_embed_proj_dim=256, max_position_embeddings=64)),
    }
    for name, build in builds.items():
        base = build().eval()
        inject_outliers(base, calib, factor)
        rows += run_rows(f"{name} + outliers x{factor:g}", base, calib, held, None)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--outlier", type=float, default=40.0, help="factor of the injected outlier channels")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = gpt_tiny_rows(args.quick, args.outlier) + hf_rows(args.outlier)
    result = {"meta": {"threads": args.threads, "quick": args.quick, "torch": torch.__version__,
                       "loadavg_start": os.getloadavg(), "outlier_factor": args.outlier, "seed": 0,
                       "protocol": "gpt_tiny 2 x 64 trained 300 steps (batch 32 x 64 bytes, seed 0) on 120 kB of "
                                   "the stdlib corpus, 8 calibration batches of 16 x 64, perplexity on 20 kB of the "
                                   "validation split; HF models random from config, 8 calibration and 4 held-out "
                                   "batches of 4 x 32 random tokens (seed 1); outliers: 2 random channels per norm "
                                   "that feeds Linears, function-preserving; rel_logit_error = max |logits - fp32| / "
                                   "max |fp32| over the held-out batches"},
              "rows": rows}
    result["meta"]["seconds"] = time.perf_counter() - t0
    result["meta"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(["model", "variant", "rel logit error", "perplexity", "s"],
                [[r["model"], r["variant"], f"{r['rel_logit_error']:.4f}" if "rel_logit_error" in r else r["error"],
                  f"{r['perplexity']:.4f}" if "perplexity" in r else "-", f"{r.get('seconds', 0):.1f}"]
                 for r in rows]))
    print(f"wrote {args.out} in {result['meta']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

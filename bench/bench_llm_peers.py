"""GPTQ and RTN against llm-compressor's and Intel Neural Compressor's, in one run, on one
trained model and one calibration set: perplexity, wall time and peak memory per quantizer.

    python bench/bench_llm_peers.py --llmc-python /work/venv-llmc/bin/python \
        --inc-python /work/venv-inc/bin/python [--quick] [--threads 2]

The peers pin other versions of transformers than torchshrink's dev set, so each runs in its
own virtual environment (`python -m venv --system-site-packages DIR`, then
`DIR/bin/pip install -c constraints.txt llmcompressor` or `"neural-compressor[pt]"`, with
torch==2.13.0 in constraints.txt). A peer whose interpreter is not given is recorded as not run.

1. The driver trains a Llama-style LM from a LlamaForCausalLM config (byte vocabulary) on the
   stdlib corpus and saves it with save_pretrained, with the calibration and evaluation sets.
2. Each quantizer runs in a fresh child process (its venv's interpreter, this file with
   --child): load the folder, quantize (ours through `ts.quantize`, llm-compressor through
   `oneshot` + `GPTQModifier`, INC through `prepare`/`convert`), then perplexity with
   `ts.evaluate_lm` on the held-out bytes (strided windows), its wall time, and its peak RSS
   (VmHWM of the child, which includes the interpreter and imports: the imports-only
   baseline of each environment is reported beside it).

With --scale L,H,I,V: GPTQ int4 g128 on a random Llama of that size in each library instead,
its time and peak memory against 1.5 x the fp32 weights + 1 GiB (bench/results/llm_peers_scale.json).

Writes bench/results/llm_peers.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "llm_peers.json"
SRC = Path(__file__).resolve().parents[1] / "src"

# (name, kind, bits, group size or None for one scale per output channel, act-order)
GRIDS = [("int4 g128", 4, 128), ("int3 per-channel", 3, None)]
QUANTIZERS = {
    "ours": [("RTN", False), ("GPTQ", False), ("GPTQ act-order", True)],
    "llmcompressor": [("GPTQ", False), ("GPTQ act-order", True)],
    "inc": [("RTN", False), ("GPTQ", False), ("GPTQ act-order", True)],
}


def _rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux keeps that across exec,
    so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


# ------------------------------------------------------------------------------- the children

def _load(folder: str) -> Any:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()


def _ours(folder: str, calib: Any, algo: str, bits: int, group: int | None, act_order: bool) -> Any:
    import torchshrink as ts

    model = _load(folder)
    algorithm = "rtn" if algo == "RTN" else "gptq"
    cfg = ts.WeightOnly(bits=bits, group_size=group, algorithm=algorithm, desc_act=act_order,
                        ignore=("lm_head",))
    return ts.quantize(model, cfg, calibration=[c for c in calib] if algorithm != "rtn" else None, progress=False)


def _byte_processor() -> Any:
    """An offline byte-level tokenizer: llm-compressor wants a processor when given a data set
    (the data set here is already token ids, so the tokenizer itself is never used)."""
    import transformers
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tm

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(tm.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=alphabet[0], pad_token=alphabet[0])


def _llmcompressor(folder: str, calib: Any, algo: str, bits: int, group: int | None, act_order: bool) -> Any:
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    model = _load(folder)
    ids = torch.cat(list(calib))
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=True,
                               strategy="group" if group else "channel", group_size=group,
                               actorder="weight" if act_order else None)  # "group" was removed
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    oneshot(model=model, dataset=ds, recipe=GPTQModifier(config_groups={"g": scheme}, ignore=["lm_head"]),
            max_seq_length=ids.shape[1], num_calibration_samples=ids.shape[0], processor=_byte_processor())
    return model


def _inc(folder: str, calib: Any, algo: str, bits: int, group: int | None, act_order: bool) -> Any:
    import torch
    from neural_compressor.torch.quantization import GPTQConfig, RTNConfig, convert, prepare

    model = _load(folder)
    common = {"bits": bits, "use_sym": True, "group_size": group or -1}
    if algo == "RTN":
        return convert(prepare(model, RTNConfig(**common)))
    model = prepare(model, GPTQConfig(**common, act_order=act_order, static_groups=act_order and group is not None))
    with torch.no_grad():
        for ids in calib:
            model(ids)
    return convert(model)


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(SRC))
    import torchshrink as ts

    base_rss = _rss_mib()
    data = torch.load(Path(args.folder) / "bench_data.pt", weights_only=True)  # tensors and a str
    quantize = {"ours": _ours, "llmcompressor": _llmcompressor, "inc": _inc}[args.child]
    t = time.perf_counter()
    model = quantize(args.folder, data["calib"], args.algo, args.bits, args.group or None, args.act_order)
    secs = time.perf_counter() - t
    peak = _rss_mib()
    out = {"seconds": secs, "peak_rss_mib": peak, "rss_after_imports_mib": base_rss}
    if data["text"] is not None:
        out["perplexity"] = float(ts.evaluate_lm(model, data["text"],
                                                 tokenizer=lambda s: list(s.encode("latin-1")))["perplexity"])
    print("RESULT " + json.dumps(out))


# ------------------------------------------------------------------------------------ driver

def prepare_model(folder: Path, quick: bool, threads: int) -> dict[str, Any]:
    import torch
    import transformers
    from torch.utils.data import DataLoader

    import torchshrink as ts

    torch.set_num_threads(threads)
    splits = ts.data.load_text(max_bytes=300_000, block_size=128)
    train = DataLoader(splits.train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=4, vocab_size=256, max_position_embeddings=256,
                                   tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg)
    steps = 40 if quick else 400
    t = time.perf_counter()
    ts.fit(model, train, max_steps=steps, lr=3e-3, warmup_steps=30, progress=False, seed=0)
    train_s = time.perf_counter() - t
    model.eval().save_pretrained(folder)
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(splits.train), generator=g)[:64]
    calib = [splits.train[idx[i:i + 8]][0] for i in range(0, 64, 8)]  # 8 batches of 8 x 128 tokens
    text = bytes(splits.val.tensors[0].reshape(-1)[:40_000].tolist()).decode("latin-1")
    torch.save({"calib": calib, "text": text}, folder / "bench_data.pt")
    params = sum(p.numel() for p in model.parameters())
    fp32_ppl = ts.evaluate_lm(model, text, tokenizer=lambda s: list(s.encode("latin-1")))["perplexity"]
    meta = {"config": "LlamaForCausalLM(hidden 256, intermediate 768, 4 layers, 4 heads, vocab 256 bytes)",
            "params": params, "train_steps": steps, "train_seconds": train_s, "train_threads": threads,
            "fp32_perplexity": float(fp32_ppl),
            "calibration": "8 batches of 8 x 128 tokens from the training split (seed 1)",
            "evaluation": "ts.evaluate_lm strided windows over 40,000 bytes of the validation split"}
    (folder / "bench_meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def prepare_scale(folder: Path, layers: int, hidden: int, inter: int, vocab: int) -> dict[str, Any]:
    """A random Llama of the given size saved with save_pretrained, and 8 calibration batches of
    1 x 256 random tokens: memory and time do not depend on training."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                   num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                                   vocab_size=vocab, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, vocab, (1, 256), generator=g) for _ in range(8)]
    torch.save({"calib": calib, "text": None}, folder / "bench_data.pt")
    params = sum(p.numel() for p in model.parameters())
    return {"config": f"LlamaForCausalLM(hidden {hidden}, intermediate {inter}, {layers} layers, vocab {vocab}), "
                      "random weights", "params": params, "fp32_weight_mib": 4 * params / 2**20,
            "calibration": "8 batches of 1 x 256 random tokens (seed 1)"}


def run_child(python: str, which: str, folder: Path, algo: str, bits: int, group: int | None, act_order: bool,
              threads: int) -> dict[str, Any]:
    cmd = [python, __file__, "--child", which, "--folder", str(folder), "--algo", algo, "--bits", str(bits),
           "--group", str(group or 0), "--threads", str(threads)] + (["--act-order"] if act_order else [])
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)[-400:], "wall_s": time.perf_counter() - t}
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llmc-python", default=None, help="interpreter of a venv with llmcompressor")
    p.add_argument("--inc-python", default=None, help="interpreter of a venv with neural-compressor[pt]")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--model-dir", type=Path, default=None,
                   help="keep the trained model here; a folder holding one from an earlier run is reused "
                        "(training takes most of the run)")
    p.add_argument("--scale", default=None, metavar="LAYERS,HIDDEN,INTER,VOCAB",
                   help="instead of the quality table: GPTQ int4 g128 time and peak memory of each library on a "
                        "random Llama of this size (e.g. 12,768,2048,32000 for ~134M parameters)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--algo", default="GPTQ", help=argparse.SUPPRESS)
    p.add_argument("--bits", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--group", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--act-order", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    pythons = {"ours": sys.executable, "llmcompressor": args.llmc_python, "inc": args.inc_python}
    if args.scale:
        return scale_main(args, pythons)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    def write(meta: dict[str, Any]) -> dict[str, Any]:
        result = {"meta": {**meta, "threads": args.threads, "quick": args.quick, "seconds": time.perf_counter() - t0,
                           "loadavg_end": os.getloadavg(),
                           "settings": "symmetric int weights, lm_head left in fp32 by every library; act-order "
                                       "with static groups where grouped; 'ours' = ts.WeightOnly(algorithm=..., "
                                       "desc_act=...)"},
                  "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))  # after every row: a cut-off run keeps what it measured
        return result

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model_dir or Path(tmp) / "model"
        if (folder / "bench_meta.json").is_file():
            meta = {**json.loads((folder / "bench_meta.json").read_text()), "reused_model_dir": str(folder)}
        else:
            folder.mkdir(parents=True, exist_ok=True)
            meta = prepare_model(folder, args.quick, args.threads)
        print(f"trained {meta['params']:,} params in {meta['train_seconds']:.0f} s; fp32 perplexity "
              f"{meta['fp32_perplexity']:.4f}", flush=True)
        for grid, bits, group in GRIDS:
            for which, algos in QUANTIZERS.items():
                for algo, act in algos:
                    row: dict[str, Any] = {"grid": grid, "library": which, "quantizer": algo}
                    if pythons[which] is None:
                        row["error"] = "not run: no interpreter given (--llmc-python / --inc-python)"
                    else:
                        row.update(run_child(pythons[which], which, folder, algo, bits, group, act, args.threads))
                    rows.append(row)
                    write(meta)
                    print(f"  {grid} {which} {algo}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float)
                                                                   else f"{k} {v}" for k, v in row.items()
                                                                   if k not in ("grid", "library", "quantizer")),
                          flush=True)
    result = write(meta)
    from _common import table

    fp32 = meta["fp32_perplexity"]
    print(table(["grid", "library", "quantizer", "perplexity", "vs fp32", "s", "peak RSS MiB", "RSS after imports"],
                [[r["grid"], r["library"], r["quantizer"],
                  f"{r['perplexity']:.4f}" if "perplexity" in r else r.get("error", "")[:60],
                  f"{r['perplexity'] - fp32:+.4f}" if "perplexity" in r else "-",
                  f"{r['seconds']:.1f}" if "seconds" in r else "-",
                  f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "-",
                  f"{r['rss_after_imports_mib']:.0f}" if "rss_after_imports_mib" in r else "-"] for r in rows]))
    print(f"fp32 perplexity {fp32:.4f}; wrote {args.out} in {result['meta']['seconds']:.0f} s")
    return 0


def scale_main(args: argparse.Namespace, pythons: dict[str, str | None]) -> int:
    from _common import table

    layers, hidden, inter, vocab = (int(v) for v in args.scale.split(","))
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        meta = prepare_scale(folder, layers, hidden, inter, vocab)
        print(f"{meta['config']}: {meta['params']:,} params ({meta['fp32_weight_mib']:.0f} MiB fp32)", flush=True)
        for which in ("ours", "llmcompressor", "inc"):
            row: dict[str, Any] = {"library": which, "quantizer": "GPTQ int4 g128"}
            py = pythons[which]
            row.update(run_child(py, which, folder, "GPTQ", 4, 128, False, args.threads) if py else
                       {"error": "not run: no interpreter given (--llmc-python / --inc-python)"})
            rows.append(row)
            print(f"  {which}: {row}", flush=True)
    bar = 1.5 * meta["fp32_weight_mib"] + 1024
    out = args.out.with_name(args.out.stem + "_scale.json") if args.out == RESULTS else args.out
    result = {"meta": {**meta, "threads": args.threads, "seconds": time.perf_counter() - t0,
                       "loadavg_end": os.getloadavg(), "bar_mib": bar,
                       "protocol": "each library in a fresh child process; peak = VmHWM of the child (model load, "
                                   "imports and quantization included); seconds = load + quantize"},
              "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table(["library", "seconds", "peak RSS MiB", "after imports MiB", "bar MiB"],
                [[r["library"], f"{r['seconds']:.0f}" if "seconds" in r else r.get("error", "")[:60],
                  f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "-",
                  f"{r['rss_after_imports_mib']:.0f}" if "rss_after_imports_mib" in r else "-", f"{bar:.0f}"]
                 for r in rows]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Artifacts at scale: `ts.save` / `ts.load` of a ~125M-parameter Llama against safetensors.

One run, one machine, one model built from a config (no download, seed 0):
- save time: `safetensors.torch.save_file` of the fp32 state_dict (the reference), then
  `ts.save` of the same fp32 model, then `ts.save` of a WeightOnly int4 g128 RTN copy; each
  repeated (median reported) into a fresh file in one temporary directory. `ts.save` fsyncs
  its file before renaming it into place (a failed save keeps the old file) and safetensors
  does not, so the safetensors time is also given with one fsync added.
- file sizes, and which tensors the .tsz file lists as safetensors entries of their own.
- load: each load runs in a fresh child process (`python bench_save.py --child ...`), one at a
  time. After its imports the child resets the kernel's peak-RSS mark (`/proc/self/clear_refs`)
  and notes VmRSS; peak load memory = VmHWM after the load minus that baseline (ru_maxrss
  minus its value after imports is reported beside it). The child also returns a digest of
  every tensor it loaded, compared with the parent's model (bit-exactness).
- the bound the issue sets: load peak <= 1.2 x file bytes + the largest tensor's bytes.

    python bench/bench_save.py            # the full run (about 3 minutes on 1 thread)
    python bench/bench_save.py --layers 2 # a quick smoke run
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from _common import table  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "save.json"


def _proc_status(field: str) -> int:
    """A VmRSS/VmHWM line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(list(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def child(kind: str, path: str) -> None:
    torch.set_num_threads(1)
    import safetensors.torch  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401  (transformers imports its model code lazily)

    import torchshrink as ts
    import torchshrink.codec.entropy_encodings  # noqa: F401

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak counts from here
    base_rss = _proc_status("VmRSS")
    base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if kind == "ts":
        state = ts.load(path).state_dict()
    else:
        from safetensors.torch import load_file

        state = load_file(path)
    seconds = time.perf_counter() - t0
    peak = _proc_status("VmHWM") - base_rss
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_maxrss
    largest = max(t.numel() * t.element_size() for t in state.values())
    digest = _digest(state)  # reads every tensor: a lazily mapped one is paged in here
    touched = _proc_status("VmHWM") - base_rss
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "ru_maxrss_delta": maxrss, "largest_tensor": largest,
                      "peak_rss_after_reading": touched, "digest": digest}))


def _load_in_child(kind: str, path: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path)], check=True, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _timed(fn: Any, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _save_fsync(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(state, str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    torch.set_num_threads(1)
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    import torchshrink as ts

    load_before = os.getloadavg()
    cfg = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=args.layers, num_attention_heads=12,
               num_key_value_heads=12, vocab_size=32000, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    params = sum(p.numel() for p in model.parameters())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix="bench_save_", dir=os.environ.get("BENCH_TMP")))
    st_path, fp32_path, int4_path = tmp / "ref.safetensors", tmp / "fp32.tsz", tmp / "int4.tsz"
    rows: dict[str, Any] = {}
    st_times = _timed(lambda: save_file(state, str(st_path)), args.repeats)
    st_sync = _timed(lambda: _save_fsync(state, st_path), args.repeats)
    fp32_times = _timed(functools.partial(ts.save, model, fp32_path), args.repeats)
    st_digest = _digest(state)  # before quantizing, which may reuse the float weights' storage
    t0 = time.perf_counter()
    q = ts.quantize(model, ts.WeightOnly(bits=4, group_size=128), progress=False)  # edits model in place
    quantize_s = time.perf_counter() - t0
    int4_times = _timed(functools.partial(ts.save, q, int4_path), max(1, args.repeats - 1))
    int4_digest = _digest(q.state_dict())
    info = {name: ts.read_info(p) for name, p in (("fp32", fp32_path), ("int4", int4_path))}
    with safe_open(str(fp32_path), "pt") as f:
        fp32_keys = list(f.keys())
    with safe_open(str(int4_path), "pt") as f:
        int4_keys = list(f.keys())
    del q, model
    loads = {"safetensors fp32": _load_in_child("st", st_path), "ts fp32": _load_in_child("ts", fp32_path),
             "ts int4": _load_in_child("ts", int4_path)}
    sizes = {"safetensors fp32": st_path.stat().st_size, "ts fp32": fp32_path.stat().st_size,
             "ts int4": int4_path.stat().st_size}
    saves = {"safetensors fp32": st_times, "ts fp32": fp32_times, "ts int4": int4_times}
    ref = statistics.median(st_times)
    for name in saves:
        load = loads[name]
        bound = 1.2 * sizes[name] + load["largest_tensor"]
        want = st_digest if name != "ts int4" else int4_digest
        rows[name] = {
            "save_s": saves[name], "save_median_s": statistics.median(saves[name]),
            "save_vs_safetensors": statistics.median(saves[name]) / ref, "file_bytes": sizes[name],
            "load_s": load["seconds"], "load_peak_rss": load["peak_rss"], "load_ru_maxrss_delta": load["ru_maxrss_delta"],
            "peak_rss_after_reading": load["peak_rss_after_reading"],
            "largest_tensor": load["largest_tensor"], "rss_bound": bound, "rss_within_bound": load["peak_rss"] <= bound,
            "bit_exact": load["digest"] == want,
        }
    load_after = os.getloadavg()
    for p in (st_path, fp32_path, int4_path):
        p.unlink()
    tmp.rmdir()
    result = {
        "model": {"class": "LlamaForCausalLM", "config": cfg, "parameters": params, "seed": 0},
        "protocol": {"threads": 1, "repeats": args.repeats, "torch": torch.__version__, "python": platform.python_version(),
                     "machine": platform.machine(), "cpus": os.cpu_count(), "nice": os.nice(0),
                     "loadavg_before": load_before, "loadavg_after": load_after,
                     "rss": "fresh child per load; VmHWM after load minus VmRSS after imports (HWM reset by "
                            "/proc/self/clear_refs); bound 1.2 x file + largest tensor"},
        "safetensors_save_fsync_s": st_sync, "safetensors_save_fsync_median_s": statistics.median(st_sync),
        "int4_quantize_s": quantize_s,
        "entries": {"fp32": {"count": len(fp32_keys) - 1, "non_entry_bytes": info["fp32"].file_bytes - sum(
                        r.nbytes for r in info["fp32"].tensors if r.crc is not None)},
                    "int4": {"count": len(int4_keys) - 1, "stored_tensors": len(info["int4"].tensors)},
                    "int4_encodings": info["int4"].encoding_bytes()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    mb = 1e6
    print(f"LlamaForCausalLM {params / 1e6:.1f}M parameters ({args.layers} layers), 1 thread, load average "
          f"{load_before[0]:.2f} -> {load_after[0]:.2f}; safetensors save + fsync {statistics.median(st_sync):.2f} s")
    print(table(["file", "save s (median)", "x safetensors", "MB", "load s", "load peak RSS MB",
                 "peak after reading all MB", "bound MB", "ok", "bit-exact"],
                [[n, f"{r['save_median_s']:.2f}", f"{r['save_vs_safetensors']:.2f}", f"{r['file_bytes'] / mb:.1f}",
                  f"{r['load_s']:.2f}", f"{r['load_peak_rss'] / mb:.0f}", f"{r['peak_rss_after_reading'] / mb:.0f}",
                  f"{r['rss_bound'] / mb:.0f}",
                  r["rss_within_bound"], r["bit_exact"]] for n, r in rows.items()]))
    print(f"entries of their own: fp32 {len(fp32_keys) - 1} of {len(info['fp32'].tensors)} tensors, int4 "
          f"{len(int4_keys) - 1} of {len(info['int4'].tensors)}; int4 bytes by encoding "
          f"{info['int4'].encoding_bytes()}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

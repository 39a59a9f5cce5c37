"""Our entropy coder against NNCodec (Fraunhofer HHI's ISO/IEC 15938-17 / DeepCABAC coder) on the
same quantized tensors: the shared-weight indices of the Deep Compression LeNet files.

For every weight tensor of a Deep Compression file (pruned, k-means shared) the integer levels
it stores are handed to both coders: pruned positions are level 0, kept weights the signed rank
of their centroid (negative centroids -1, -2, ... outward from zero, positive ones +1, +2, ...),
which is the form DeepCABAC codes. NNCodec runs with quantization step 1 (qp 0), no dependent
quantization and its parameter optimization on, and must give the levels back exactly
(checked); our bytes are what the .tsz spends on that index tensor (its encoding chosen by the
writer). Both are compared with the order-0 entropy of the levels. NNCodec's bitstream carries
its own header; ours leaves shape and dtype to the manifest (counted in the file, not here).

NNCodec 2.1.3 cannot be installed beside this project's environment: it downgrades numpy to
1.26 and imports torchvision, whose wheels do not load beside torch 2.13.0. It runs here in its
own virtual environment, with torchvision replaced by an empty stand-in (NNCodec's coding path
never calls it; only its data-set helpers import it):

    python -m venv --system-site-packages /work/venv-nnc
    /work/venv-nnc/bin/pip install -c constraints.txt nncodec     # constraints.txt: torch==2.13.0
    python bench/bench_nncodec.py --nncodec-python /work/venv-nnc/bin/python

Writes bench/results/nncodec.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Runs inside NNCodec's environment: reads the levels, codes each, checks the round trip.
_WORKER = r'''
import importlib.machinery, json, sys, time, types
import numpy as np

class _Stub(types.ModuleType):
    """torchvision as NNCodec's imports see it: names resolve, nothing runs."""
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        m = (type(name, (), {"__init__": lambda self, *a, **k: None}) if name[:1].isupper()
             else _Stub(f"{self.__name__}.{name}"))
        setattr(self, name, m)
        return m
    def __call__(self, *a, **k):
        return _Stub(self.__name__ + "()")

for n in ("torchvision", "torchvision.datasets", "torchvision.transforms", "torchvision.models"):
    sys.modules[n] = _Stub(n)
    sys.modules[n].__spec__ = importlib.machinery.ModuleSpec(n, None)
from nncodec import tensor as nt
import nncodec

levels = np.load(sys.argv[1])
out = {"version": getattr(nncodec, "__version__", "2.1.3"), "tensors": {}}
for key in levels.files:
    lv = levels[key].astype(np.float32)
    t0 = time.perf_counter()
    bs = nt.encode(lv.copy(), args={"qp": 0, "use_dq": False, "param_opt": True, "row_skipping": True,
                                    "results": sys.argv[3], "tensor_id": "0"})
    enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = nt.decode(bs)
    dec = time.perf_counter() - t0
    out["tensors"][key] = {"bytes": len(bs), "lossless": bool(np.array_equal(back.reshape(lv.shape), lv)),
                           "encode_s": enc, "decode_s": dec}
json.dump(out, open(sys.argv[2], "w"))
'''


def signed_levels(indices: np.ndarray, centroids: np.ndarray, pruned: int) -> np.ndarray:
    """Index tensor -> signed integer levels: 0 where pruned, else the centroid's signed rank."""
    order = np.argsort(centroids, kind="stable")
    neg = int((centroids < 0).sum())
    rank = np.empty(len(centroids), dtype=np.int64)
    rank[order] = np.arange(len(centroids))
    # negative centroids -> -1, -2, ... (nearest zero first); the others -> +1, +2, ...
    level = np.where(rank < neg, rank - neg, rank - neg + 1)
    out = np.zeros(indices.shape, dtype=np.int64)
    kept = indices != pruned
    out[kept] = level[indices[kept]]
    return out


def entropy_bytes(a: np.ndarray) -> float:
    _, c = np.unique(a, return_counts=True)
    p = c / c.sum()
    return float(-(c * np.log2(p)).sum() / 8)


def file_levels(path: Path) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, str]]:
    """Per weight: its levels, the bytes the file spends on its indices, and that encoding."""
    sys.path.insert(0, str(ROOT / "src"))
    import torchshrink as ts
    from torchshrink.cluster.codebook import Codebook
    from torchshrink.nn import params, select_layers

    info = {r.key: r for r in ts.read_info(str(path)).tensors}
    model = ts.load(str(path))
    levels, ours, enc = {}, {}, {}
    for name, m in select_layers(model):
        cb = params.find(m, Codebook)
        if cb is None:
            continue
        idx = cb.indices.numpy().astype(np.int64)
        idx2 = idx.reshape(idx.shape[0], -1)  # rows x (inputs x kernel), as both coders scan it
        key = next(k for k in info if k.startswith(f"{name}.parametrizations.weight.") and k.endswith(".indices"))
        levels[name] = signed_levels(idx2, cb.codebook.detach().numpy().astype(np.float64), cb.k)
        ours[name], enc[name] = info[key].nbytes, info[key].encoding
    return levels, ours, enc


def make_file(model: str, out: Path, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "src"))
    from torchshrink.cli.compress import run_compress

    recipe = {"lenet300": "deep_compression_lenet300_64x", "lenet5": "deep_compression_lenet5"}[model]
    rep = run_compress(model_name=model, data_name="mnist5k", recipe=recipe, out=str(out), seed=seed, progress=False,
                       print_fn=lambda s: None)
    return {"recipe": recipe, "accuracy": rep["compressed"]["accuracy"], "file_bytes": rep["compressed"]["bytes"],
            "ratio": rep["ratio"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nncodec-python", required=True,
                    help="the python of a virtual environment with nncodec installed (see the module docstring)")
    ap.add_argument("--models", nargs="*", default=["lenet300", "lenet5"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--files", nargs="*", default=None,
                    help="code these Deep Compression .tsz files instead of making one per model on mnist5k")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "nncodec.json"))
    args = ap.parse_args()
    if not os.access(args.nncodec_python, os.X_OK):
        raise SystemExit(f"--nncodec-python {args.nncodec_python} is not an executable python; create the "
                         "environment as the module docstring says")
    t_start = time.perf_counter()
    result: dict[str, Any] = {"protocol": {"data": "given files" if args.files else "mnist5k", "seed": args.seed,
                                           "nncodec_settings": "qp 0 (step 1), use_dq False, param_opt, row_skipping",
                                           "levels": "0 pruned, signed centroid rank otherwise"}, "models": {}}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        jobs = [(Path(f).stem, Path(f)) for f in args.files] if args.files else \
            [(m, Path(d) / f"{m}.tsz") for m in args.models]
        for model, path in jobs:
            made = {"file": str(path), "file_bytes": path.stat().st_size} if args.files else \
                make_file(model, path, args.seed)
            levels, ours, enc = file_levels(path)
            npz = Path(d) / f"{model}.npz"
            np.savez(npz, **levels)
            got = Path(d) / f"{model}_nnc.json"
            run = subprocess.run([args.nncodec_python, "-c", _WORKER, str(npz), str(got), d],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"the NNCodec worker failed:\n{run.stderr[-3000:]}")
            nnc = json.loads(got.read_text())
            per = {}
            for name, lv in levels.items():
                n = nnc["tensors"][name]
                per[name] = {"shape": list(lv.shape), "kept": int((lv != 0).sum()), "ours_bytes": ours[name],
                             "ours_encoding": enc[name], "nncodec_bytes": n["bytes"], "nncodec_lossless": n["lossless"],
                             "order0_entropy_bytes": entropy_bytes(lv), "nncodec_encode_s": n["encode_s"],
                             "nncodec_decode_s": n["decode_s"]}
                rows.append([model, name, f"{per[name]['kept']:,} / {lv.size:,}", f"{per[name]['order0_entropy_bytes']:,.0f}",
                             f"{ours[name]:,} ({enc[name]})", f"{n['bytes']:,}" + ("" if n["lossless"] else " (LOSSY)"),
                             f"{ours[name] / n['bytes']:.3f}"])
            tot_o, tot_n = sum(ours.values()), sum(nnc["tensors"][k]["bytes"] for k in levels)
            rows.append([model, "all weights", "", f"{sum(entropy_bytes(v) for v in levels.values()):,.0f}",
                         f"{tot_o:,}", f"{tot_n:,}", f"{tot_o / tot_n:.3f}"])
            result["models"][model] = {"file": made, "tensors": per, "ours_total": tot_o, "nncodec_total": tot_n,
                                       "nncodec_version": nnc["version"]}
    sys.path.insert(0, str(ROOT / "bench"))
    from _common import table

    print(table(["model", "weight", "kept / elements", "H0 bytes", "ours bytes", "NNCodec bytes", "ours / NNCodec"], rows,
                title="coded bytes of the same integer levels (Deep Compression files"
                      + (")" if args.files else f", mnist5k, seed {args.seed})")))
    result["seconds"] = time.perf_counter() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

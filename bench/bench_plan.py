"""The joint per-layer planner against the alternatives, every row measured on a file read back.

At file-byte budgets of 1/30 and 1/60 of the fp32 file, on lenet300, lenet5 and resnet_small
trained on mnist5k with their bundled recipes (`torchshrink train`'s), each row is the best
within budget of:
- joint: `ts.plan(search="joint")` (option database, DP, apply, save, load, re-solve on a miss);
- uniform <family>: one setting of one family for every layer (pruning sparsity, weight-only
  bits, k-means bits, SVD parameter ratio), the best within budget on the validation split;
- menu: the best whole-model recipe of the old `ts.plan(search="menu")`;
- nncf: NNCF's mixed-precision weight compression (Hessian sensitivity), the smallest
  selection it can apply in PyTorch, carried over layer for layer into our file (its own
  state_dict bytes beside it); where it cannot reach the budget or cannot apply, the JSON says why.
Every row is run twice: without fine-tuning and with the same fine-tuning budget (--finetune
epochs at --finetune-lr, AdamW, cosine) after compressing. Choices use the validation split;
the test split is read once per row, on the file read back (ts.save + ts.load).

A latency section plans resnet_small and gpt_tiny to the same latency budget (joint with
per-layer inference-form latency vs the best uniform setting) and times what is read back;
the Pareto fronts (bytes vs metric, latency vs metric) go to docs/plan_pareto.png.

    python bench/bench_plan.py            # ~20 minutes on 2 busy cores
    python bench/bench_plan.py --quick    # smoke: short training, lenet300 only
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torchshrink as ts  # noqa: E402
from _common import table  # noqa: E402
from torchshrink.cli.baseline import Baseline, baseline  # noqa: E402
from torchshrink.config import Config  # noqa: E402
from torchshrink.plan.options import OptionDatabase  # noqa: E402
from torchshrink.recipe import FineTune, Recipe, Stage, compress  # noqa: E402

BUDGETS = (30, 60)  # the file may be 1/30 and 1/60 of the fp32 file
MODELS = ("lenet300", "lenet5", "resnet_small")
CALIB_BATCH = 64
# Baselines trained for fewer epochs than their bundled recipe (--epochs NAME=N), and the
# steps gpt_tiny trains for: a run on a busy machine states what it shortened.
EPOCHS: dict[str, int] = {}
GPT_STEPS = 600
# the row groups of a model section that run (--parts): a rerun of one group after a change
ALL_PARTS = PARTS = ("joint", "uniform", "menu", "nncf")


def read_back(model: nn.Module, like: nn.Module) -> tuple[int, nn.Module]:
    """The bytes of the file ts.save writes, and the model ts.load reads from it."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.tsz")
        ts.save(model, path)
        return os.path.getsize(path), ts.load(path, like=like)


def trained(name: str, quick: bool, cache: Path) -> Baseline:
    """The bundled-recipe baseline (`torchshrink train --model NAME --data mnist5k`), trained
    once and cached as an artifact, so a rerun measures the same model."""
    epochs = 2 if quick else EPOCHS.get(name)
    path = cache / f"{name}_mnist5k_{'quick' if epochs == 2 and quick else 'full' if epochs is None else f'e{epochs}'}.tsz"
    if path.exists():
        return baseline(model_name=None, data_name="mnist5k", checkpoint=str(path), progress=False)
    t0 = time.perf_counter()
    b = baseline(model_name=name, data_name="mnist5k", epochs=epochs, seed=0, progress=False)
    cache.mkdir(parents=True, exist_ok=True)
    ts.save(b.model.eval(), str(path), metadata={"train_seconds": time.perf_counter() - t0})
    return b


def uniform_grid(name: str) -> dict[str, list[Config]]:
    """One setting per family for every layer, from gentle to the strongest the method takes."""
    return {
        "prune": [ts.MagnitudePruning(sparsity=s) for s in (0.9, 0.95, 0.97, 0.98, 0.99, 0.995)],
        "quant": [ts.WeightOnly(bits=b, group_size=None) for b in (8, 4, 3, 2)],
        "cluster": [ts.KMeansSharing(bits=b) for b in (4, 3, 2, 1)],
        "lowrank": [ts.SvdFactorization(ratio=r) for r in (0.25, 0.1, 0.05, 0.03, 0.015)],
    }


class Bench:
    def __init__(self, b: Baseline, finetune: int, lr: float, name: str) -> None:
        self.b, self.finetune, self.lr, self.name = b, finetune, lr, name
        self.model = b.model.eval()
        self.calib = [x[:CALIB_BATCH] for x, _ in _take(b.train, 2)]
        self.base_bytes, _ = read_back(self.model, self.model)

    def val(self, m: nn.Module) -> float:
        return float(ts.evaluate(m, self.b.val)["accuracy"])

    def test(self, m: nn.Module) -> float:
        return float(self.b.accuracy(m))

    def run(self, configs: list[Config], ft: bool) -> nn.Module:
        stages = [Stage(c) for c in configs]
        if ft:
            stages[-1] = Stage(stages[-1].config, FineTune(epochs=self.finetune, lr=self.lr))
        return compress(copy.deepcopy(self.model), Recipe(tuple(stages)), train=self.b.train, val=self.b.val,
                        calibration=self.calib, progress=False, measure_file=False).model

    def row(self, label: str, m: nn.Module, seconds: float, **extra: Any) -> dict[str, Any]:
        nbytes, back = read_back(m, self.model)
        return {"method": label, "file_bytes": nbytes, "fraction_of_fp32": nbytes / self.base_bytes,
                "val_accuracy": self.val(back), "test_accuracy": self.test(back), "seconds": seconds, **extra}


def _take(loader: Any, n: int) -> list[Any]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def uniform_rows(bench: Bench, name: str, limits: dict[int, float]) -> dict[str, Any]:
    """Per family and budget: every setting measured on its file, the best (validation) within
    budget, then the same setting with the fine-tuning budget."""
    out: dict[str, Any] = {}
    done: dict[tuple[str, str], dict[str, Any]] = {}
    for family, grid in uniform_grid(name).items():
        tried = []
        for cfg in grid:
            t0 = time.perf_counter()
            try:
                m = bench.run([cfg], ft=False)
            except (ts.ShrinkError, ValueError) as e:
                tried.append({"setting": repr(cfg), "skipped": str(e).splitlines()[0][:200]})
                continue
            nbytes, back = read_back(m, bench.model)
            tried.append({"setting": _short(cfg), "config": cfg, "file_bytes": nbytes,
                          "val_accuracy": bench.val(back) if nbytes <= max(limits.values()) else None,
                          "seconds": time.perf_counter() - t0})
        fam: dict[str, Any] = {"tried": [{k: v for k, v in t.items() if k != "config"} for t in tried]}
        for k, limit in limits.items():
            fits = [t for t in tried if t.get("file_bytes") is not None and t["file_bytes"] <= limit]
            if not fits:
                small = min((t for t in tried if t.get("file_bytes")), key=lambda t: t["file_bytes"])
                fam[f"1/{k}"] = {"fits": False, "why": f"the smallest setting ({small['setting']}) makes "
                                 f"{small['file_bytes']:,} bytes > {limit:,.0f}"}
                continue
            best = max(fits, key=lambda t: t["val_accuracy"])
            entry: dict[str, Any] = {"fits": True, "setting": best["setting"]}
            for ft in (False, True):
                key = ("finetuned" if ft else "no_finetune", best["setting"])
                if key not in done:
                    t0 = time.perf_counter()
                    m = bench.run([best["config"]], ft=ft)
                    done[key] = bench.row(f"uniform {family}", m, time.perf_counter() - t0)
                entry[key[0]] = done[key]
            fam[f"1/{k}"] = entry
        out[family] = fam
        print(f"  uniform {family}: " + ", ".join(
            f"1/{k}: " + (f"{fam[f'1/{k}']['setting']} {fam[f'1/{k}']['no_finetune']['test_accuracy']:.1f}%"
                          if fam[f"1/{k}"]["fits"] else "nothing fits") for k in limits), flush=True)
    return out


def _short(cfg: Config) -> str:
    from torchshrink.plan.menu import _short as short

    return f"{type(cfg).__name__}({short(cfg)})"


def menu_rows(bench: Bench, limits: dict[int, float]) -> dict[str, Any]:
    """The old menu (7 whole-model recipes), run once with and once without fine-tuning; the
    best within each budget on validation, its file read back for the test split."""
    from torchshrink.plan.menu import default_candidates

    out: dict[str, Any] = {}
    loosest = max(limits.values())
    small: set[int] = set()
    for ft in (False, True):
        recipes = default_candidates()
        if ft:
            # Fine-tuning keeps each recipe's structure (masks, codebooks, grids), so a recipe
            # whose file is over budget without it is run again only when it is near the budget.
            over = [(i, r) for i, r in enumerate(recipes) if i not in small]
            out["finetune_not_run"] = [{"recipe": out["candidates"]["no_finetune"][i]["recipe"],
                                        "why": f"its file without fine-tuning is "
                                               f"{out['candidates']['no_finetune'][i]['file_bytes']} bytes, "
                                               f"over 1.05 x the loosest budget {loosest:,.0f}"} for i, _ in over]
            recipes = [Recipe(tuple(r.stages[:-1]) + (Stage(r.stages[-1].config,
                                                            FineTune(epochs=bench.finetune, lr=bench.lr)),))
                       for i, r in enumerate(recipes) if i in small]
            if not recipes:
                for k in limits:
                    out.setdefault(f"1/{k}", {})["finetuned"] = {
                        "fits": False, "why": "no recipe's file comes within 1.05 x the budget without "
                        "fine-tuning (see finetune_not_run)"}
                break
        t0 = time.perf_counter()
        res = ts.plan(bench.model, recipes, evaluate=bench.val, max_bytes=loosest,
                      train=bench.b.train, val=bench.b.val, calibration=bench.calib, progress=False,
                      latency_runs=3)
        secs = time.perf_counter() - t0
        key = "finetuned" if ft else "no_finetune"
        cands = [{"recipe": c.name, "file_bytes": c.file_bytes, "val_accuracy": c.metric, "skipped": c.skipped}
                 for c in res.candidates]
        out.setdefault("candidates", {})[key] = cands
        if not ft:
            small = {i for i, c in enumerate(res.candidates) if c.file_bytes is not None
                     and c.file_bytes <= 1.05 * loosest}
        for k, limit in limits.items():
            fits = [c for c in res.candidates if c.skipped is None and c.file_bytes is not None
                    and c.file_bytes <= limit]
            slot = out.setdefault(f"1/{k}", {})
            if not fits:
                least = min((c for c in res.candidates if c.file_bytes), key=lambda c: c.file_bytes or 0)
                slot[key] = {"fits": False, "why": f"the smallest recipe ({least.name}) makes {least.file_bytes:,} "
                             f"bytes > {limit:,.0f}"}
                continue
            best = max(fits, key=lambda c: (c.metric or 0.0, -(c.file_bytes or 0)))
            m = res.model if res.best is not None and best is res.best else \
                compress(copy.deepcopy(bench.model), Recipe.from_dict(best.recipe), train=bench.b.train,
                         calibration=bench.calib, progress=False, measure_file=False).model
            slot[key] = {"fits": True, **bench.row(f"menu: {best.name}", m, secs)}
    return out


def nncf_rows(bench: Bench, limits: dict[int, float]) -> dict[str, Any]:
    """NNCF's data-aware mixed precision (Hessian-input sensitivity, int8 backup). Its lowest
    primary mode, int2, is tried first; then int4 at ratio 1 (every layer it ranks at the
    primary precision), the smallest selection it applies in PyTorch."""
    try:
        import nncf
    except ImportError as e:
        return {"ran": False, "why": f"nncf is not installed: {e}"}
    out: dict[str, Any] = {"version": nncf.__version__}
    data = nncf.Dataset(bench.calib)

    def attempt(mode: Any, ratio: float) -> nn.Module:
        return nncf.compress_weights(copy.deepcopy(bench.model), mode=mode, ratio=ratio, group_size=-1,
                                     all_layers=True, dataset=data,
                                     sensitivity_metric=nncf.SensitivityMetric.HESSIAN_INPUT_ACTIVATION,
                                     backup_mode=nncf.BackupMode.INT8_ASYM)

    try:
        attempt(nncf.CompressWeightsMode.INT2_SYM, 1.0)
        out["int2"] = {"applied": True}
    except Exception as e:  # report NNCF's own failure, word for word
        out["int2"] = {"applied": False, "why": f"nncf.compress_weights(mode=INT2_SYM) fails in the PyTorch "
                       f"backend: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    t0 = time.perf_counter()
    try:
        q = attempt(nncf.CompressWeightsMode.INT4_SYM, 1.0)
    except Exception as e:
        out["int4"] = {"applied": False, "why": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        return out
    secs = time.perf_counter() - t0
    bits: dict[str, int] = {}
    for n, mod in q.named_modules():
        kind = type(mod).__name__
        if "WeightsDecompressor" in kind and ":weight" in n:
            # NNCF names a hook by the module path with ":" for "." ("layers:2:conv2:weight__0")
            layer = n.split("post_hooks.")[-1].split(":weight")[0].replace(":", ".")
            bits[layer] = 8 if kind.startswith("INT8") else 4
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    own = {"selection": bits, "nncf_state_dict_bytes": len(buf.getvalue()),
           "nncf_model_test_accuracy": bench.test(q), "seconds": secs}
    # The same per-layer choice in our file: symmetric per-channel int4 / int8 weight-only.
    configs = [ts.WeightOnly(bits=b, group_size=None, targets=tuple(n for n, v in bits.items() if v == b),
                             strict=True) for b in sorted(set(bits.values()), reverse=True)]
    m = bench.run(configs, ft=False)
    own["as_torchshrink_file"] = bench.row("nncf selection", m, secs)
    out["int4"] = {"applied": True, **own}
    for k, limit in limits.items():
        smallest = min(own["nncf_state_dict_bytes"], own["as_torchshrink_file"]["file_bytes"])
        out[f"1/{k}"] = {"fits": smallest <= limit, "why": None if smallest <= limit else
                         f"NNCF's mixed precision picks per layer between a primary mode and an int8 backup; "
                         f"int2 does not apply in PyTorch, and its smallest selection that does (int4 on every "
                         f"layer, ratio=1) makes {smallest:,} bytes > {limit:,.0f} (1/{k} of fp32)"}
    return out


def _db_cache(bench: Bench, cache: Path) -> Path:
    """Where the option database of this baseline and these calibration batches is kept: the
    database is a measurement of them, so a rerun of the rows (after a change to the solve or
    the verification) reuses it; its build time is in the JSON either way."""
    import hashlib

    h = hashlib.sha256()
    for x in bench.calib:
        h.update(x.numpy().tobytes())
    with tempfile.TemporaryDirectory() as d:
        ts.save(bench.model, os.path.join(d, "m.tsz"))
        h.update(Path(d, "m.tsz").read_bytes())
    return cache / f"db_{bench.name}_{h.hexdigest()[:16]}.json"


def joint_rows(bench: Bench, limits: dict[int, float], plot: Path | None, refine: int,
               cache: Path | None = None) -> dict[str, Any]:
    """The option database once, then each budget solved, applied, verified; with and without
    the fine-tuning budget; and again with the local search (`refine` validation evaluations)."""
    out: dict[str, Any] = {}
    db = None
    db_path = _db_cache(bench, cache) if cache is not None else None
    if db_path is not None and db_path.exists():
        db = OptionDatabase.from_dict(json.loads(db_path.read_text()))
        out["database_cached"] = str(db_path)
    first = True
    for variant, evals in (("joint", 0), ("joint + refine", refine)):
        for k, limit in limits.items():
            # the local search picks the plan; its fine-tuned row would repeat the plain one's
            for ft in ((False, True) if evals == 0 else (False,)):
                t0 = time.perf_counter()
                res = ts.plan(bench.model, evaluate=bench.val, max_bytes=limit, calibration=bench.calib,
                              train=bench.b.train, val=bench.b.val, search="joint", database=db,
                              calibration_batches=len(bench.calib), finetune=bench.finetune if ft else 0,
                              finetune_lr=bench.lr, pareto_points=6 if first else 0, verify_points=3,
                              refine=evals, progress=False)
                secs = time.perf_counter() - t0
                if first:
                    first = False
                    if db is None and db_path is not None:
                        db_path.write_text(json.dumps(res.database.to_dict()))
                    db = res.database
                    out["database_seconds"] = db.seconds  # the build's own time, cached or not
                    out["database_options"] = sum(len(v) for v in db.rows.values())
                    out["pareto"] = res.pareto
                    out["pareto_seconds"] = res.seconds["pareto"]
                    if plot is not None:
                        res.plot_pareto(plot, title=f"{bench.name}: joint plan, bytes vs validation accuracy")
                slot = out.setdefault(variant, {}).setdefault(f"1/{k}", {})
                key = "finetuned" if ft else "no_finetune"
                if res.model is None:
                    slot[key] = {"fits": False, "why": "no plan met the budget on its file after the retries",
                                 "tries": [c.to_dict() for c in res.candidates]}
                    continue
                split = {"database": res.seconds["database"], "solve": res.seconds.get("solve"),
                         "refine": res.seconds.get("refine"), "verify": res.seconds.get("verify")}
                # every verified plan: the cost model's prediction, its file, its validation metric
                tried = [{"predicted_bytes": c.predicted.get("bytes"), "file_bytes": c.file_bytes,
                          "val_accuracy": c.metric, "meets_budget": c.meets_budget}
                         for c in res.candidates if c.name.startswith("joint")]
                slot[key] = {"fits": True, **bench.row(variant, res.model, secs, seconds_split=split,
                                                       tries=len(tried), tries_detail=tried,
                                                       per_layer=res.per_layer, refinements=res.refinements,
                                                       recipe=res.recipe.to_dict() if res.recipe else None)}
    return out


def model_section(name: str, quick: bool, cache: Path, finetune: int, lr: float, plots: Path,
                  refine: int) -> dict[str, Any]:
    b = trained(name, quick, cache)
    bench = Bench(b, finetune, lr, name)
    limits = {k: bench.base_bytes / k for k in BUDGETS}
    out: dict[str, Any] = {"fp32_file_bytes": bench.base_bytes, "fp32_test_accuracy": bench.test(bench.model),
                           "fp32_val_accuracy": bench.val(bench.model), "budgets_bytes": limits}
    print(f"{name}: fp32 {bench.base_bytes:,} bytes, test {out['fp32_test_accuracy']:.2f}%", flush=True)
    for part, fn in (("joint", lambda: joint_rows(bench, limits, plots / f"plan_pareto_{name}.png", refine,
                                                  cache)),
                     ("uniform", lambda: uniform_rows(bench, name, limits)),
                     ("menu", lambda: menu_rows(bench, limits)),
                     ("nncf", lambda: nncf_rows(bench, limits))):
        if part not in PARTS:
            continue
        t0 = time.perf_counter()
        out[part] = fn()
        out[f"{part}_seconds"] = time.perf_counter() - t0
        print(f"  {part}: {out[f'{part}_seconds']:.0f} s", flush=True)
    return out


def latency_options(name: str, m: nn.Module) -> list[Any]:
    """The options that can make a layer faster in its inference form: SVD ranks (fewer MACs),
    int8 weight-only (codes cast once, output scaled), high sparsity (CSR kernels)."""
    from torchshrink.plan.options import LayerOption, _matrix

    rows, cols = _matrix(m)
    full = rows * cols / (rows + cols)
    out = [LayerOption(bits=8, group_size=None), LayerOption(sparsity=0.9), LayerOption(sparsity=0.95)]
    out += [LayerOption(rank=int(f * full)) for f in (0.5, 0.25, 0.125) if int(f * full) >= 1]
    return out


def _gpt(quick: bool, cache: Path) -> tuple[nn.Module, Any, Any, Callable[[nn.Module], float], Any]:
    """gpt_tiny trained on the default corpus (the stdlib's source) as bench_llm trains it."""
    from torch.utils.data import DataLoader

    splits = ts.data.load_text(max_bytes=300_000, block_size=64)
    train = DataLoader(splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(torch.utils.data.Subset(splits.val, range(min(256, len(splits.val)))), batch_size=128)
    steps = 60 if quick else GPT_STEPS
    path = cache / f"gpt_tiny_{steps}steps.tsz"
    if path.exists():
        model = ts.load(str(path), like=ts.models.create("gpt_tiny"))
    else:
        torch.manual_seed(0)
        model = ts.models.create("gpt_tiny")
        ts.fit(model, train, max_steps=steps, lr=3e-3, warmup_steps=50, progress=False, seed=0)
        cache.mkdir(parents=True, exist_ok=True)
        ts.save(model.eval(), str(path))

    def neg_loss(m: nn.Module) -> float:
        return -float(ts.evaluate(m, val)["loss"])

    test = DataLoader(torch.utils.data.Subset(splits.test, range(min(256, len(splits.test)))), batch_size=128)

    def test_neg_loss(m: nn.Module) -> float:
        return -float(ts.evaluate(m, test)["loss"])

    return model.eval(), train, splits.train.tensors[0][:8], neg_loss, test_neg_loss


def _time_interleaved(models: dict[str, nn.Module], x: Any, rounds: int, runs: int) -> dict[str, float]:
    """Median ms per model over `rounds` rounds, the models taking turns in each round."""
    from statistics import median

    from torchshrink.measure.latency import time_forward

    got: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            got[k].append(time_forward(m, x, runs=runs, warmup=2, threads=1).median_ms)
    return {k: median(v) for k, v in got.items()}


def _inference_back(m: nn.Module, like: nn.Module, x: Any) -> tuple[int, nn.Module, nn.Module]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.tsz")
        ts.save(m, path)
        return os.path.getsize(path), ts.load(path, like=like), ts.load(path, like=like, inference=True, example=x)


# The latency budget per case, as a fraction of fp32 in the same timing session. resnet_small's
# smallest plan of the latency menu (SVD ranks 1/8, int8, 95% sparsity) times at 0.63x of fp32
# (BatchNorm, ReLU and pooling do not shrink), so a 0.6x budget there is met by no method.
FRACTIONS = {"resnet_small": 0.7, "gpt_tiny": 0.6}


def latency_section(quick: bool, cache: Path, plots: Path, cases: list[str]) -> dict[str, Any]:
    """resnet_small (batch 16) and gpt_tiny (batch 8 x 64 tokens) at the same latency budget,
    a fraction of the fp32 model's inference-form latency: joint (per-layer inference-form
    latency in the database) vs each family's best uniform setting under that budget."""
    out: dict[str, Any] = {"fraction_of_fp32_latency": FRACTIONS, "threads": 1,
                           "timing": "medians of interleaved rounds (fp32 and every candidate taking turns)"}
    for name in cases:
        t0 = time.perf_counter()
        fraction = FRACTIONS[name]
        if name == "gpt_tiny":
            model, train, x, val_fn, test_fn = _gpt(quick, cache)
            calib = [x]
            grid = {"quant": [ts.WeightOnly(bits=8, group_size=None)],
                    "prune": [ts.MagnitudePruning(sparsity=s) for s in (0.9, 0.95)],
                    "lowrank": [ts.SvdFactorization(ratio=r) for r in (0.5, 0.25, 0.125)]}
            metric = "minus validation loss (nats/byte)"
        else:
            b = trained(name, quick, cache)
            model, train, x = b.model.eval(), b.train, next(iter(b.test))[0][:16]
            bench = Bench(b, 0, 1e-3, name)
            val_fn, test_fn, calib = bench.val, bench.test, bench.calib
            grid = {"quant": [ts.WeightOnly(bits=8, group_size=None)],
                    "prune": [ts.MagnitudePruning(sparsity=s) for s in (0.9, 0.95)],
                    "lowrank": [ts.SvdFactorization(ratio=r) for r in (0.5, 0.25, 0.125)]}
            metric = "accuracy %"
        # every uniform setting read back in its inference form; all of them and fp32 timed
        # taking turns, so the budget and the candidates see the same machine
        tried = []
        for family, cfgs in grid.items():
            for cfg in cfgs:
                m = compress(copy.deepcopy(model), Recipe((Stage(cfg),)), calibration=calib, progress=False,
                             measure_file=False).model
                nbytes, back, fast = _inference_back(m, model, x)
                tried.append({"family": family, "setting": _short(cfg), "file_bytes": nbytes, "val": val_fn(back),
                              "fast": fast, "back": back, "config": cfg})
        fp32_fast = ts.for_inference(model, example=x)
        timed = _time_interleaved({"fp32": fp32_fast, **{str(i): t["fast"] for i, t in enumerate(tried)}}, x, 3, 10)
        for i, t in enumerate(tried):
            t["latency_ms"] = timed[str(i)]
        limit = fraction * timed["fp32"]
        if limit <= 1.0:  # ts.plan reads a budget <= 1 as a fraction of its own baseline
            raise SystemExit(f"{name}: the latency budget {limit:.3f} ms is under 1 ms; use a larger example batch")
        # the budget as a fraction: the planner times each plan in turns with fp32 (drift-proof)
        res = ts.plan(model, evaluate=val_fn, max_latency=fraction, calibration=calib, example=x, train=train,
                      search="joint", options=latency_options, calibration_batches=len(calib), latency_runs=60,
                      pareto_points=6, verify_points=3, progress=False)
        res.plot_pareto(plots / f"plan_pareto_latency_{name}.png",
                        title=f"{name}: joint plan under a latency budget ({metric})")
        sec: dict[str, Any] = {"metric": metric, "example_shape": list(x.shape), "budget_ms": limit,
                               "fraction_of_fp32_latency": fraction,
                               "fp32_latency_ms_in_plan": res.baseline.latency_ms, "joint_seconds": res.seconds,
                               "joint_tries": [c.to_dict() for c in res.candidates], "pareto": res.pareto}
        finals: dict[str, nn.Module] = {"fp32": fp32_fast}
        rows: dict[str, Any] = {}
        if res.model is not None:
            nbytes, back, fast = _inference_back(res.model, model, x)
            finals["joint"] = fast
            rows["joint"] = {"file_bytes": nbytes, "val": val_fn(back), "test": test_fn(back),
                             "per_layer": res.per_layer}
        else:
            rows["joint"] = {"fits": False, "why": "no plan met the latency budget on its file after the retries"}
        fits = [t for t in tried if t["latency_ms"] <= limit]
        if fits:
            best = max(fits, key=lambda t: t["val"])
            finals["uniform"] = best["fast"]
            rows["uniform"] = {"setting": best["setting"], "file_bytes": best["file_bytes"], "val": best["val"],
                               "test": test_fn(best["back"])}
        else:
            rows["uniform"] = {"fits": False, "why": "no uniform setting is under the budget"}
        sec["uniform_tried"] = [{k: v for k, v in t.items() if k not in ("fast", "back", "config")} for t in tried]
        if FT_EPOCHS > 0:  # the same fine-tuning budget for both: FT_EPOCHS epochs at FT_LR
            ft_rows, ft_models = _latency_finetuned(model, train, calib, x, val_fn, test_fn, res, fraction, fits)
            rows.update(ft_rows)
            finals.update(ft_models)
        # the latency of what was read back, the variants taking turns
        # this machine's speed drifts between timing sessions (fp32 6.9-8.6 ms on resnet_small
        # within one run): the budget is judged as the ratio to fp32 in this same session
        timed = _time_interleaved(finals, x, 5, 20)
        for k, v in timed.items():
            rows.setdefault(k, {}).update(latency_ms=v, ratio_to_fp32=v / timed["fp32"],
                                          meets_budget=v / timed["fp32"] <= fraction)
        rows["fp32"].update(val=val_fn(model), test=test_fn(model))
        sec["rows"] = rows
        sec["seconds"] = time.perf_counter() - t0
        sec["loadavg"] = os.getloadavg()
        out[name] = sec
        print(f"latency {name}: budget {limit:.3f} ms; " + "; ".join(
            f"{k}: {r.get('latency_ms', float('nan')):.3f} ms ({r.get('ratio_to_fp32', float('nan')):.2f}x), "
            f"test {r.get('test', float('nan')):.4g}" for k, r in rows.items()), flush=True)
    return out


def _latency_finetuned(model: nn.Module, train: Any, calib: Any, x: Any, val_fn: Callable[[nn.Module], float],
                       test_fn: Callable[[nn.Module], float], res: Any, fraction: float,
                       fits: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """The latency rows again with the same fine-tuning budget: the joint plan re-solved on its
    database and fine-tuned; every uniform setting under the budget fine-tuned, the best kept
    on the validation metric. Both read back in their inference form."""
    rows: dict[str, Any] = {}
    models: dict[str, nn.Module] = {}
    ft = ts.plan(model, evaluate=val_fn, max_latency=fraction, calibration=calib, example=x, train=train,
                 search="joint", database=res.database, calibration_batches=len(calib), latency_runs=60,
                 finetune=FT_EPOCHS, finetune_lr=FT_LR, pareto_points=0, progress=False)
    if ft.model is not None:
        nbytes, back, fast = _inference_back(ft.model, model, x)
        models["joint, fine-tuned"] = fast
        rows["joint, fine-tuned"] = {"file_bytes": nbytes, "val": val_fn(back), "test": test_fn(back),
                                     "per_layer": ft.per_layer, "finetune_epochs": FT_EPOCHS}
    else:
        rows["joint, fine-tuned"] = {"fits": False, "why": "no plan met the latency budget on its file"}
    tuned = []
    for t in fits:
        cfg = t["config"]
        m = compress(copy.deepcopy(model), Recipe((Stage(cfg, FineTune(epochs=FT_EPOCHS, lr=FT_LR)),)),
                     train=train, calibration=calib, progress=False, measure_file=False).model
        nbytes, back, fast = _inference_back(m, model, x)
        tuned.append({"setting": t["setting"], "file_bytes": nbytes, "val": val_fn(back), "back": back,
                      "fast": fast})
    if tuned:
        best = max(tuned, key=lambda t: t["val"])
        models["uniform, fine-tuned"] = best["fast"]
        rows["uniform, fine-tuned"] = {"setting": best["setting"], "file_bytes": best["file_bytes"],
                                       "val": best["val"], "test": test_fn(best["back"]),
                                       "finetune_epochs": FT_EPOCHS,
                                       "tried": [{k: v for k, v in t.items() if k not in ("fast", "back")}
                                                 for t in tuned]}
    else:
        rows["uniform, fine-tuned"] = {"fits": False, "why": "no uniform setting is under the budget"}
    return rows, models


def _section(kind: str, what: str, quick: bool, cache: Path, finetune: int, lr: float, plots: Path,
             refine: int, epochs: dict[str, int], gpt_steps: int, parts: Path) -> dict[str, Any]:
    """One model's rows or one latency case; also written to `parts` as soon as it is done,
    so a run cut short keeps what it finished (--merge builds the JSON from the parts)."""
    import traceback

    global GPT_STEPS, FT_EPOCHS, FT_LR
    FT_EPOCHS, FT_LR = finetune, lr  # a spawned process does not see main()'s globals
    EPOCHS.update(epochs)
    GPT_STEPS = gpt_steps
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        t0 = time.perf_counter()
        out = model_section(what, quick, cache, finetune, lr, plots, refine) if kind == "model" else \
            latency_section(quick, cache, plots, [what])
        (out if kind == "model" else out[what])["section_seconds"] = time.perf_counter() - t0
        (out if kind == "model" else out[what])["section_loadavg_end"] = os.getloadavg()
        parts.mkdir(parents=True, exist_ok=True)
        (parts / f"{kind}_{what}.json").write_text(json.dumps(out, default=str))
        return out
    except Exception as e:  # one broken section is a result to report; the others still count
        err = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        print(f"{kind} {what} FAILED: {err['error']}", flush=True)
        return err if kind == "model" else {what: err}


def summary(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, r in results.items():
        for k in BUDGETS:
            key = f"1/{k}"

            def cell(entry: dict[str, Any] | None, ft: str) -> str:
                if not entry:
                    return "-"
                e = entry.get(ft, entry) if "fits" in entry else entry.get(ft)
                if e is None:
                    return "-"
                if not e.get("fits"):
                    return "no fit"
                return f"{e['test_accuracy']:.1f}"

            uni = {f: r["uniform"][f].get(key) for f in r["uniform"]}
            best_u = {ft: max(((e[ft]["test_accuracy"], f) for f, e in uni.items() if e and e.get("fits")),
                              default=None) for ft in ("no_finetune", "finetuned")}
            nn_ = r["nncf"].get(key)
            for ft in ("no_finetune", "finetuned"):
                bu = best_u[ft]
                rows.append([name, key, "no" if ft == "no_finetune" else f"{FT_EPOCHS} ep",
                             f"{r['fp32_test_accuracy']:.1f}", cell(r["joint"]["joint"].get(key), ft),
                             cell(r["joint"]["joint + refine"].get(key), ft),
                             "no fit" if bu is None else f"{bu[0]:.1f} ({bu[1]})",
                             cell(r["menu"].get(key), ft),
                             ("no fit" if nn_ and not nn_["fits"] else "-") if ft == "no_finetune" else "-"])
    return rows


FT_EPOCHS = 1
FT_LR = 1e-3


def main(argv: list[str] | None = None) -> int:
    global FT_EPOCHS, FT_LR, GPT_STEPS, PARTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2-epoch baselines, lenet300 only")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--finetune", type=int, default=1, help="fine-tuning epochs, the same for every row")
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "torchshrink_bench_plan"))
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--epochs", action="append", default=[], metavar="NAME=N",
                    help="train baseline NAME for N epochs instead of its bundled recipe (stated in the JSON)")
    ap.add_argument("--gpt-steps", type=int, default=600, help="training steps of gpt_tiny (latency section)")
    ap.add_argument("--merge", action="store_true", help="write the JSON and table from the finished parts only")
    ap.add_argument("--jobs", type=int, default=1, help="sections (models, latency cases) run in this many processes")
    ap.add_argument("--refine", type=int, default=12, help="validation evaluations of the local search row")
    ap.add_argument("--parts", nargs="*", default=list(PARTS), choices=ALL_PARTS,
                    help="row groups of each model section to run, with --jobs 1 (the others are left out "
                    "of the JSON)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "plan.json"))
    args = ap.parse_args(argv)
    PARTS = tuple(args.parts)
    FT_EPOCHS, FT_LR = args.finetune, args.finetune_lr
    EPOCHS.update({k: int(v) for k, v in (e.split("=", 1) for e in args.epochs)})
    GPT_STEPS = args.gpt_steps
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # --models with no names: no model section (the latency cases alone)
    models = args.models if args.models is not None else (["lenet300"] if args.quick else list(MODELS))
    t0 = time.perf_counter()
    plots = Path(args.out).parent if args.quick else ROOT / "docs"
    plots.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    cache = Path(args.cache)
    parts = cache / (("parts_quick" if args.quick else "parts") + ("" if set(PARTS) == set(ALL_PARTS) else
                                                                   "_" + "_".join(PARTS)))
    lat_cases = [] if args.skip_latency else (["resnet_small"] if args.quick else ["resnet_small", "gpt_tiny"])
    jobs: list[tuple[str, str]] = [("model", m) for m in models] + [("latency", c) for c in lat_cases]
    if args.merge:
        got = []
        for kind, what in jobs:
            f = parts / f"{kind}_{what}.json"
            got.append(json.loads(f.read_text()) if f.exists() else
                       {"error": f"not run: the run was cut short before this section finished ({f} missing)"}
                       if kind == "model" else {what: {"error": "not run: the run was cut short before it finished"}})
    elif args.jobs > 1:
        # sections in their own processes (one torch thread each): on a shared machine a run
        # gets more of it; the latency rows are interleaved medians either way
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
            futs = [ex.submit(_section, kind, what, args.quick, cache, args.finetune, args.finetune_lr, plots,
                              args.refine, EPOCHS, GPT_STEPS, parts) for kind, what in jobs]
            got = [f.result() for f in futs]
    else:
        got = [_section(kind, what, args.quick, cache, args.finetune, args.finetune_lr, plots, args.refine,
                        EPOCHS, GPT_STEPS, parts) for kind, what in jobs]
    results = {what: r for (kind, what), r in zip(jobs, got) if kind == "model" and "error" not in r}
    failed = {f"{kind} {what}": r for (kind, what), r in zip(jobs, got)
              if "error" in r or (kind == "latency" and "error" in r.get(what, {}))}
    latency = {"fraction_of_fp32_latency": FRACTIONS, "threads": 1,
               "timing": "medians of interleaved rounds (fp32 and every candidate taking turns)"}
    for (kind, what), r in zip(jobs, got):
        if kind == "latency":
            latency[what] = r[what]
    out: dict[str, Any] = {
        "protocol": {"data": "mnist5k (3500 train / 500 val / 1000 test)", "threads": 1, "seed": 0,
                     "finetune_epochs": args.finetune, "finetune_lr": args.finetune_lr,
                     "calibration": f"2 training batches of {CALIB_BATCH}", "quick": args.quick,
                     "baseline_epochs_overridden": EPOCHS, "gpt_tiny_steps": GPT_STEPS,
                     "selection": "validation split; test split read once per row on the file read back",
                     "machine": platform.platform(), "torch": torch.__version__},
        "models": results}
    if failed:
        out["failed"] = failed
    if lat_cases:
        out["latency"] = latency
        out["protocol"]["jobs"] = args.jobs
    out["seconds"] = time.perf_counter() - t0
    out["protocol"]["loadavg_end"] = os.getloadavg()
    out["protocol"]["parts"] = list(PARTS)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    if set(PARTS) != set(ALL_PARTS):  # the table needs every group; the JSON has what ran
        print(f"wrote {args.out} ({out['seconds']:.0f} s; parts {', '.join(PARTS)})")
        return 0
    print(table(["model", "budget", "fine-tune", "fp32 %", "joint %", "joint+refine %", "best uniform %", "menu %",
                 "nncf"],
                summary(results), title="test accuracy on files read back (mnist5k)"))
    for name, r in results.items():
        j = r["joint"]
        split = next((e["no_finetune"]["seconds_split"] for k in BUDGETS for e in [j["joint"].get(f"1/{k}", {})]
                      if e.get("no_finetune", {}).get("fits")), None)
        print(f"{name}: planner wall time: option database {j['database_seconds']:.1f} s "
              f"({j['database_options']} options)" + (f", solve {split['solve']:.2f} s, verify {split['verify']:.1f} s"
                                                      if split else "") + f", pareto {j['pareto_seconds']:.1f} s")
    for name, sec in out.get("latency", {}).items():
        if isinstance(sec, dict) and "rows" in sec:
            print(f"latency {name} ({sec['metric']}), budget {sec['budget_ms']:.2f} ms: " + "; ".join(
                f"{k} {r.get('latency_ms', float('nan')):.2f} ms, test {r.get('test', float('nan')):.4g}"
                + (f" ({r['setting']})" if "setting" in r else "") for k, r in sec["rows"].items()))
    print(f"wrote {args.out} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

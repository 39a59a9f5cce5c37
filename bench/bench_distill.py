"""Knowledge distillation benchmark: three experiments, each student against itself without a teacher.

1. Hinton et al. (2015) on mnist5k: a 2x1200 MLP teacher with dropout; 2x300 and 2x30
   students trained on hard labels only vs distilled (soft targets at temperature T mixed with
   the hard labels), same epochs, 3 seeds; mean test errors and their spread.
2. Recovery after 95% global magnitude pruning of a trained lenet300: plain fine-tuning vs
   fine-tuning with the dense model as teacher (`make_distill_loss`), same epochs, 3 seeds, on
   a small labeled set (500 images) and on the full training set.
3. gpt_tiny: a 4-block teacher trained first, then a 2-block student (fresh, and in the full
   run also initialized from teacher blocks 0 and 2) trained with and without the teacher for
   the same steps; validation loss.

    python bench/bench_distill.py            # full run (~10 min on 2 busy cores)
    python bench/bench_distill.py --quick    # smoke run with shorter training

Writes bench/results/distill.json and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchshrink as ts
from torchshrink.distill import fewer_blocks, make_distill_loss, mlp

# Running the script puts bench/ on sys.path; tests load this file by path, so add it here too.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "distill.json"

FULL = {"teacher_epochs": 30, "student_epochs": 60, "lenet_epochs": 20, "finetune_epochs": 20,
        "finetune_samples": 500, "gpt_bytes": 80_000, "gpt_embd": 64, "gpt_teacher_steps": 800,
        "gpt_student_steps": 420, "gpt_teacher_init": 1}
QUICK = {"teacher_epochs": 20, "student_epochs": 40, "lenet_epochs": 20, "finetune_epochs": 20,
         "finetune_samples": 500, "gpt_bytes": 80_000, "gpt_embd": 64, "gpt_teacher_steps": 400,
         "gpt_student_steps": 420, "gpt_teacher_init": 0}

# Distillation settings per student (Hinton et al.: smaller students prefer lower T and, on
# small data, keep some weight on the hard labels).
HINTON_STUDENTS = {"2x300": {"hidden": 300, "temperature": 4.0, "alpha": 0.7},
                   "2x30": {"hidden": 30, "temperature": 4.0, "alpha": 0.7}}
SEEDS = (1, 2, 3)


def _loaders(splits: ts.data.Splits, seed: int, batch_size: int = 128) -> tuple[DataLoader, DataLoader, DataLoader]:
    # Fresh loaders per run: a shared shuffling generator would make results depend on run order.
    return ts.data.loaders(splits, batch_size=batch_size, seed=seed)


def _errors(model: nn.Module, loader: DataLoader) -> int:
    n = sum(len(b[1]) for b in loader)
    return round(n * (1 - ts.evaluate(model, loader)["accuracy"] / 100))


def _spread(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "runs": values}


def hinton(cfg: dict[str, int], log: Any = print) -> dict[str, Any]:
    splits = ts.data.load("mnist5k", seed=0)
    n_test = len(splits.test)
    tr, va, te = _loaders(splits, 0)
    torch.manual_seed(0)
    teacher = mlp(784, [1200, 1200], 10, dropout=0.5, input_dropout=0.2)
    t0 = time.perf_counter()
    ts.fit(teacher, tr, val=va, epochs=cfg["teacher_epochs"], lr=1e-3, progress=False, seed=0)
    teacher_err = _errors(teacher, te)
    log(f"  teacher 2x1200: {teacher_err} test errors / {n_test} ({time.perf_counter() - t0:.0f} s)")
    out: dict[str, Any] = {"test_samples": n_test, "teacher": {"hidden": [1200, 1200], "dropout": 0.5,
                                                                "test_errors": teacher_err}, "students": {}}
    for label, s in HINTON_STUDENTS.items():
        rows: dict[str, list[float]] = {"hard": [], "distilled": []}
        for seed in SEEDS:
            for mode in ("hard", "distilled"):
                tr, va, te = _loaders(splits, seed)
                torch.manual_seed(seed)
                student = mlp(784, [s["hidden"], s["hidden"]], 10)  # no dropout: the same student both ways
                if mode == "hard":
                    ts.fit(student, tr, val=va, epochs=cfg["student_epochs"], lr=3e-3, progress=False, seed=seed)
                else:
                    ts.apply(student, ts.Distillation(teacher=teacher, temperature=s["temperature"], alpha=s["alpha"],
                                                      epochs=cfg["student_epochs"], lr=3e-3, seed=seed,
                                                      teacher_outputs="cached"),
                             train=tr, val=va, progress=False)
                rows[mode].append(float(_errors(student, te)))
            log(f"  {label} seed {seed}: hard {rows['hard'][-1]:.0f}  distilled {rows['distilled'][-1]:.0f} errors")
        out["students"][label] = {**s, "hard_errors": _spread(rows["hard"]),
                                  "distilled_errors": _spread(rows["distilled"])}
    return out


def prune_recovery(cfg: dict[str, int], log: Any = print) -> dict[str, Any]:
    """Fine-tune a 95%-pruned lenet300 with and without the dense model as teacher. The main
    comparison fine-tunes on a small labeled set (`finetune_samples`, as when little data is at
    hand at compression time); the full training set is reported beside it."""
    splits = ts.data.load("mnist5k", seed=0)
    tr, va, te = _loaders(splits, 0)
    torch.manual_seed(0)
    dense = ts.models.create("lenet300")
    ts.fit(dense, tr, val=va, epochs=cfg["lenet_epochs"], lr=1e-3, progress=False, seed=0)
    dense_acc = ts.evaluate(dense, te)["accuracy"]
    pruned = ts.prune(copy.deepcopy(dense), ts.MagnitudePruning(sparsity=0.95, scope="global"))
    pruned_acc = ts.evaluate(pruned, te)["accuracy"]
    sparsity = _sparsity(pruned)
    log(f"  lenet300 dense {dense_acc:.1f}%  95% pruned {pruned_acc:.1f}% (weight sparsity {sparsity:.3f})")
    n = cfg["finetune_samples"]
    small = TensorDataset(*(t[:n] for t in splits.train.tensors))
    out: dict[str, Any] = {"dense_accuracy": dense_acc, "pruned_accuracy": pruned_acc, "sparsity": sparsity,
                           "scope": "global", "finetune_epochs": cfg["finetune_epochs"], "temperature": 4.0,
                           "alpha": 0.7, "lr": 3e-3, "sets": {}}
    for set_name, data, batch in ((f"{n} labeled", small, 64), (f"all {len(splits.train)}", splits.train, 128)):
        rows: dict[str, list[float]] = {"plain": [], "distilled": []}
        for seed in SEEDS:
            for mode in ("plain", "distilled"):
                model = copy.deepcopy(pruned)
                loader = DataLoader(data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed))
                loss = make_distill_loss(dense, {"temperature": 4.0, "alpha": 0.7}) if mode == "distilled" else None
                ts.fit(model, loader, epochs=cfg["finetune_epochs"], lr=3e-3, loss=loss,
                       callbacks=[loss] if loss is not None else [], progress=False, seed=seed)
                assert abs(_sparsity(model) - sparsity) < 1e-6  # masks keep the zeros through fine-tuning
                rows[mode].append(ts.evaluate(model, te)["accuracy"])
            log(f"  fine-tune on {set_name}, seed {seed}: plain {rows['plain'][-1]:.1f}%  "
                f"distilled {rows['distilled'][-1]:.1f}%")
        out["sets"][set_name] = {"samples": len(data), "plain_accuracy": _spread(rows["plain"]),
                                 "distilled_accuracy": _spread(rows["distilled"])}
    return out


def _sparsity(model: nn.Module) -> float:
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def gpt(cfg: dict[str, int], log: Any = print) -> dict[str, Any]:
    splits = ts.data.load_text(max_bytes=cfg["gpt_bytes"], block_size=64)
    tr = DataLoader(splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    va = DataLoader(splits.val, batch_size=128)
    torch.manual_seed(0)
    teacher = ts.models.create("gpt_tiny", n_layer=4, n_embd=cfg["gpt_embd"])
    t0 = time.perf_counter()
    ts.fit(teacher, tr, max_steps=cfg["gpt_teacher_steps"], lr=3e-3, warmup_steps=50, progress=False, seed=0)
    teacher_loss = ts.evaluate(teacher, va)["loss"]
    log(f"  gpt_tiny teacher (4 blocks): val loss {teacher_loss:.3f} ({time.perf_counter() - t0:.0f} s)")
    inits = {"fresh": lambda: ts.models.create("gpt_tiny", n_layer=2, n_embd=cfg["gpt_embd"])}
    if cfg["gpt_teacher_init"]:
        inits["teacher blocks 0, 2"] = lambda: fewer_blocks(teacher)
    out: dict[str, Any] = {"corpus_bytes": cfg["gpt_bytes"], "n_embd": cfg["gpt_embd"], "teacher_blocks": 4,
                           "student_blocks": 2, "teacher_steps": cfg["gpt_teacher_steps"],
                           "student_steps": cfg["gpt_student_steps"], "teacher_val_loss": teacher_loss,
                           "temperature": 2.0, "alpha": 0.5, "students": {}}
    for init_name, build in inits.items():
        torch.manual_seed(1)
        init = build()
        lr = 3e-3 if init_name == "fresh" else 1e-3  # a copied init is fine-tuned more gently
        row: dict[str, float] = {"init_val_loss": ts.evaluate(init, va)["loss"], "lr": lr}
        for mode in ("hard", "distilled"):
            student = copy.deepcopy(init)
            tr = DataLoader(splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))
            loss = make_distill_loss(teacher, {"temperature": 2.0, "alpha": 0.5}) if mode == "distilled" else None
            ts.fit(student, tr, max_steps=cfg["gpt_student_steps"], lr=lr, loss=loss, progress=False, seed=1)
            row[f"{mode}_val_loss"] = ts.evaluate(student, va)["loss"]
            log(f"  student (2 blocks, {init_name} init) {mode}: val loss {row[f'{mode}_val_loss']:.3f}")
        out["students"][init_name] = row
    return out


def _table(rows: list[list[str]]) -> str:
    """Plain columns; the first row is the header."""
    return table(rows[0], rows[1:], style="plain")


def render(res: dict[str, Any]) -> str:
    h = res["hinton"]
    n = h["test_samples"]
    rows = [["mnist5k student", "T", "alpha", "hard-label errors", "distilled errors", "gain"]]
    for label, s in h["students"].items():
        he, de = s["hard_errors"], s["distilled_errors"]
        rows.append([label, f"{s['temperature']:g}", f"{s['alpha']:g}",
                     f"{he['mean']:.1f} +- {he['std']:.1f} ({100 * he['mean'] / n:.2f}%)",
                     f"{de['mean']:.1f} +- {de['std']:.1f} ({100 * de['mean'] / n:.2f}%)",
                     f"{he['mean'] - de['mean']:+.1f}"])
    out = [f"Hinton-style distillation, {n} test images, mean +- std over seeds {list(SEEDS)}; "
           f"teacher 2x1200 dropout: {h['teacher']['test_errors']} errors", _table(rows), ""]
    p = res["prune"]
    rows = [["fine-tuning set", "plain fine-tune %", "distilled fine-tune %", "gain"]]
    for set_name, r in p["sets"].items():
        pa, da = r["plain_accuracy"], r["distilled_accuracy"]
        rows.append([set_name, f"{pa['mean']:.2f} +- {pa['std']:.2f}", f"{da['mean']:.2f} +- {da['std']:.2f}",
                     f"{da['mean'] - pa['mean']:+.2f}"])
    out += [f"lenet300, 95% global magnitude pruning (sparsity {p['sparsity']:.3f}): dense {p['dense_accuracy']:.2f}%, "
            f"pruned {p['pruned_accuracy']:.2f}%; {p['finetune_epochs']} fine-tune epochs, teacher = dense model "
            f"(T={p['temperature']:g}, alpha={p['alpha']:g})", _table(rows), ""]
    g = res["gpt"]
    rows = [["student init", "init val loss", "hard-label val loss", "distilled val loss", "gain"]]
    for init_name, r in g["students"].items():
        rows.append([init_name, f"{r['init_val_loss']:.4f}", f"{r['hard_val_loss']:.4f}",
                     f"{r['distilled_val_loss']:.4f}", f"{r['hard_val_loss'] - r['distilled_val_loss']:+.4f}"])
    out += [f"gpt_tiny (n_embd {g['n_embd']}) on {g['corpus_bytes']} bytes of stdlib source: teacher "
            f"{g['teacher_blocks']} blocks, {g['teacher_steps']} steps, val loss {g['teacher_val_loss']:.4f} "
            f"nats/byte; students {g['student_blocks']} blocks, {g['student_steps']} steps "
            f"(T={g['temperature']:g}, alpha={g['alpha']:g})", _table(rows)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter training (smoke run)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    res: dict[str, Any] = {"mode": "quick" if args.quick else "full", "settings": cfg, "seeds": list(SEEDS),
                           "torch": torch.__version__, "python": platform.python_version(), "threads": args.threads}
    print("[1/3] Hinton-style MLP distillation on mnist5k", flush=True)
    res["hinton"] = hinton(cfg)
    print("[2/3] recovery after 95% magnitude pruning of lenet300", flush=True)
    res["prune"] = prune_recovery(cfg)
    print("[3/3] gpt_tiny half-depth student", flush=True)
    res["gpt"] = gpt(cfg)
    res["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print()
    print(render(res))
    print(f"\nwrote {args.out} in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`torchshrink demo`: train LeNet-300-100 on the bundled MNIST sample, compress it with a
recipe, save, reload, and print before/after, every "after" number taken on the reloaded file."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torchshrink.cli.options as options
from torchshrink.cli.baseline import (
    DATA_SEED,
    fit_kwargs,
    loaders,
    test_loader,
    train_recipe,
    training_overrides,
)
from torchshrink.cli.paths import prepare_output, prepare_output_dir

NAME = "demo"
HELP = "train LeNet-300-100 on the bundled MNIST sample, compress it, print before/after"

DEMO_RECIPE = "deep_compression_lenet300"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "--out-dir", dest="out", default="demo_out",
                   help="directory the artifacts go to (default ./demo_out; --out-dir is the same)")
    options.add_training(p, what="baseline")
    p.add_argument("--recipe", default=DEMO_RECIPE,
                   help=f"compression recipe: a YAML file or a bundled name (default {DEMO_RECIPE})")
    options.add_html(p)
    options.add_json(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout)

    result = run_demo(out_dir=args.out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      recipe=args.recipe, progress=not args.quiet, print_fn=say, html=args.html)
    if args.json:
        print(json.dumps({"before": result["before"].to_dict(), "after": result["after"].to_dict(),
                          "inference": result["inference"].to_dict(),
                          "compression": result["compression"], "seconds": result["seconds"],
                          "files": result["files"]}, indent=2))
    return 0


def run_demo(*, out_dir: str | os.PathLike[str] = "demo_out", epochs: int | None = None,
             lr: float | None = None, batch_size: int | None = None, recipe: str = DEMO_RECIPE,
             progress: bool = True, runs: int = 100, print_fn: Callable[[str], None] = print,
             html: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Train LeNet-300-100 on mnist5k, compress it, save, reload, and print before/after.

    The recipe, the training options and the output directory are checked before training.
    """
    import torchshrink as ts
    from torchshrink import data, models
    from torchshrink.train import seed_everything

    t0 = time.perf_counter()
    rec = ts.load_recipe(recipe)
    base_recipe = training_overrides(train_recipe("lenet300"), epochs=epochs, lr=lr, batch_size=batch_size)
    out = prepare_output_dir(out_dir, "--out")
    if html is not None:
        prepare_output(html, "--html")
    splits = data.load("mnist5k", seed=DATA_SEED)
    train_loader, val_loader, _ = loaders(splits, base_recipe, seed=0)
    test = test_loader(splits)

    def accuracy(m: Any) -> float:
        return float(ts.evaluate(m, test)["accuracy"])

    seed_everything(0)
    model = models.create("lenet300")
    fit_kw = fit_kwargs(base_recipe)
    fit_kw.update(epochs=int(base_recipe["epochs"]), progress=progress, desc="train lenet300")
    print_fn(f"training LeNet-300-100 on mnist5k ({len(splits.train)} train / {len(splits.test)} test images)...")
    ts.fit(model, train_loader, val=val_loader, **fit_kw)
    example = models.example_input(model, 1)
    base_path = out / "lenet300_fp32.tsz"
    ts.save(model, base_path, metadata={"data": "mnist5k", "data_seed": DATA_SEED, "test_accuracy": accuracy(model)})
    before = ts.measure(ts.load(base_path), example=example, evaluate=accuracy, metric_name="accuracy",
                        batch_sizes=(1, 64), threads=1, runs=runs, artifact=base_path)

    print_fn("compressing...")
    result = ts.compress(model, rec, train=train_loader, val=val_loader, example=example, evaluate=accuracy,
                         progress=progress)
    compressed = result.model
    how = f"recipe {recipe}"
    small_path = out / "lenet300_compressed.tsz"
    ts.save(compressed, small_path, metadata={"data": "mnist5k", "data_seed": DATA_SEED,
                                              "test_accuracy": accuracy(compressed)})
    reloaded = ts.load(small_path)
    after = ts.measure(reloaded, example=example, evaluate=accuracy, metric_name="accuracy",
                       batch_sizes=(1, 64), threads=1, runs=runs, artifact=small_path)
    # What a deployment serving the file sees: the inference form (`ts.load(..., inference=True)`),
    # each layer in the form timed fastest at batch 1 (compact CSR with codebook indices, dense...).
    served = ts.for_inference(reloaded, example=example)
    # The fp32 model is timed again right beside it: minutes of training lie between the
    # first measurement and this one, and a shared machine's load changes in that time.
    beside = ts.measure(ts.load(base_path), example=example, evaluate=accuracy, metric_name="accuracy",
                        batch_sizes=(1, 64), threads=1, runs=runs, artifact=base_path)
    inference = ts.measure(served, example=example, evaluate=accuracy, metric_name="accuracy",
                           batch_sizes=(1, 64), threads=1, runs=runs)
    if html is not None:
        from torchshrink.report import report as html_report

        html_report(small_path, before=base_path, out=html, example=example, evaluate=accuracy, stages=result,
                    recipe=rec, runs=runs)
    seconds = time.perf_counter() - t0
    print_fn("")
    print_fn(f"LeNet-300-100 on mnist5k; compression: {how}")
    print_fn(f"accuracy on the {len(splits.test)} test images, measured on the files reloaded from {out}/")
    print_fn(ts.compare(before, after, labels=("fp32 baseline", "compressed")))
    print_fn("")
    print_fn("served: the inference form of the same file (ts.load(path, inference=True, example=x)), "
             "each layer in the form measured fastest at batch 1:")
    print_fn(ts.compare(beside, inference, labels=("fp32 baseline", "inference form")))
    forms = getattr(served, "torchshrink_inference", {})
    print_fn("layers: " + ", ".join(f"{k}: {r['chosen']}" for k, r in forms.items()))
    if html is not None:
        print_fn(f"wrote the report page {html}")
    print_fn(f"demo finished in {seconds:.0f} s")
    return {"before": before, "after": after, "inference": inference, "compression": how,
            "seconds": seconds, "files": [str(base_path), str(small_path)] + ([str(html)] if html is not None else [])}

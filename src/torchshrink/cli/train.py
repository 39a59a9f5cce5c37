"""`torchshrink train`: train a reference model on a data set and save it as an artifact."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torchshrink.cli.options as options
from torchshrink.cli.baseline import (
    DATA_SEED,
    build_model,
    check_data_name,
    check_model_name,
    data_names,
    fit_kwargs,
    loaders,
    model_names,
    test_loader,
    train_recipe,
    training_overrides,
)
from torchshrink.cli.paths import prepare_output
from torchshrink.errors import ArtifactError

NAME = "train"
HELP = "train a reference model on a data set and save it as an artifact"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="reference model: " + ", ".join(model_names()))
    p.add_argument("--data", required=True, help="data set: " + ", ".join(data_names()))
    options.add_training(p)
    options.add_seed(p)
    p.add_argument("--out", required=True,
                   help="artifact file to write (e.g. lenet300.tsz); missing directories are created")
    options.add_json(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    result = train_and_save(args.model, args.data, out=args.out, epochs=args.epochs, lr=args.lr,
                            batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model} on {args.data}: test accuracy {result['accuracy']:.2f}% "
              f"({result['samples']} test samples), {result['epochs']} epochs in {result['seconds']:.1f} s")
        print(f"wrote {result['file']} ({result['bytes']:,} bytes)")
    return 0


def train_and_save(model_name: str, data_name: str, *, out: str, epochs: int | None = None,
                   lr: float | None = None, batch_size: int | None = None, seed: int = 0,
                   progress: bool = True) -> dict[str, Any]:
    """Train, evaluate on the test split, save with the accuracy in the metadata, and check that
    the saved file reproduces that accuracy."""
    import torchshrink as ts
    from torchshrink import data
    from torchshrink.train import seed_everything

    check_model_name(model_name)
    check_data_name(data_name)
    recipe = training_overrides(train_recipe(model_name), epochs=epochs, lr=lr, batch_size=batch_size)
    prepare_output(out, "--out")
    splits = data.load(data_name, seed=DATA_SEED)
    seed_everything(seed)
    model = build_model(model_name, splits.input_shape, splits.num_classes)
    train_loader, val_loader, _ = loaders(splits, recipe, seed)
    fit_kw = fit_kwargs(recipe)
    fit_kw.update(epochs=int(recipe["epochs"]), seed=seed, progress=progress, desc=f"train {model_name}")
    result = ts.fit(model, train_loader, val=val_loader, **fit_kw)
    metrics = ts.evaluate(model, test_loader(splits))
    metadata = {"data": data_name, "data_seed": DATA_SEED, "input_shape": list(splits.input_shape),
                "split": "test", "test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"],
                "train": {k: v for k, v in recipe.items() if _plain(v)} | {"seed": seed}}
    nbytes = ts.save(model, out, metadata=metadata)
    reloaded = ts.evaluate(ts.load(out), test_loader(splits))
    if reloaded["accuracy"] != metrics["accuracy"]:
        raise ArtifactError(f"{out!r} reloads with accuracy {reloaded['accuracy']} but the trained model "
                            f"had {metrics['accuracy']}; the artifact does not round-trip this model")
    return {"model": model_name, "data": data_name, "accuracy": metrics["accuracy"], "loss": metrics["loss"],
            "samples": len(splits.test), "epochs": result.epochs, "seconds": result.seconds,
            "file": str(out), "bytes": nbytes}


def _plain(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None

"""The `torchshrink` command: train, eval, inspect, demo (and, as families land, compress,
export, bench, plan).

Adding a subcommand is one block: an arguments function and a run function registered with
`@command(...)`. Each family puts its block in its own marked section at the bottom of this
file, so parallel work does not collide:

    def _export_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("file")

    @command("export", help="write an ONNX file", arguments=_export_args)
    def cmd_export(args: argparse.Namespace) -> int:
        ...
        return 0

Errors the user can fix (a ShrinkError: unknown names, bad files, bad data) print one line
`error: ...` on stderr and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from torchshrink.errors import ArtifactError, ConfigError, ShrinkError, did_you_mean

__all__ = ["main", "command", "build_parser", "run_demo", "train_recipe", "DATA_SEED", "EVAL_BATCH_SIZE"]

# `train` and `eval` must see the same test split and batches, or `eval` could not reproduce
# the accuracy `train` reported; both read these (and the seed stored in the artifact).
DATA_SEED = 0
EVAL_BATCH_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: dict[str, Command] = {}


def command(name: str, *, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None
            ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register a subcommand: `run(args) -> exit code`; `arguments(parser)` adds its options."""

    def deco(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in _COMMANDS:
            raise ValueError(f"subcommand {name!r} is registered twice")
        _COMMANDS[name] = Command(name, help, arguments or (lambda p: None), run)
        return run

    return deco


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchshrink",
        description="Compress trained PyTorch models and measure the result honestly.",
    )
    from torchshrink import __version__

    parser.add_argument("--version", action="version", version=f"torchshrink {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in _COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `torchshrink` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on usage errors; in-process callers want a code
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args))
    except ShrinkError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# --------------------------------------------------------------------------------------------
# shared helpers


def _model_names() -> list[str]:
    from torchshrink import models

    return models.names()


def _check_model_name(name: str) -> None:
    if name not in _model_names():
        raise ConfigError(f"unknown model {name!r}." + did_you_mean(name, _model_names())
                          + " Run `torchshrink inspect --help` for the list.")


def _load_data(name: str, seed: int = DATA_SEED) -> Any:
    from torchshrink import data

    return data.load(name, seed=seed)


def _test_loader(splits: Any, split: str = "test") -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(getattr(splits, split), batch_size=EVAL_BATCH_SIZE)


def _build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The reference model sized for the data: LeNet-300-100 adapts its input layer (digits are
    8x8); the others need the 1x28x28 input they were designed for."""
    import math

    from torchshrink import models

    _check_model_name(name)
    if name == "gpt_tiny":
        raise ConfigError("`torchshrink train` trains image classifiers; gpt_tiny is a language model. "
                          "Train it from Python with ts.fit and ts.data.load_text")
    kwargs: dict[str, Any] = {}
    if num_classes != 10:
        kwargs["num_classes"] = num_classes
    if name == "lenet300" and tuple(input_shape) != (1, 28, 28):
        kwargs["in_features"] = math.prod(input_shape)
    model = models.create(name, **kwargs)
    expected = getattr(model, "input_shape", None)
    if name != "lenet300" and expected is not None and tuple(expected) != tuple(input_shape):
        raise ConfigError(f"model {name!r} expects inputs of shape {tuple(expected)} but the data has "
                          f"{tuple(input_shape)}; use a 28x28 data set (mnist5k, fashion_mnist, synthetic) "
                          "or lenet300, which adapts to any input size")
    return model


_FALLBACK_RECIPE: dict[str, Any] = {"epochs": 20, "lr": 1e-3, "batch_size": 128, "optimizer": "adamw",
                                    "weight_decay": 0.0, "schedule": "cosine"}


def train_recipe(model_name: str) -> dict[str, Any]:
    """Training defaults for a reference model: `torchshrink.train.default_recipe` where it
    exists, else AdamW lr 1e-3, batch 128, cosine schedule, 20 epochs."""
    from torchshrink import train as train_mod

    recipe = dict(_FALLBACK_RECIPE)
    default = getattr(train_mod, "default_recipe", None)
    if callable(default):
        given = default(model_name)
        if dataclasses.is_dataclass(given) and not isinstance(given, type):
            given = dataclasses.asdict(given)
        if isinstance(given, Mapping):
            recipe.update({k: v for k, v in given.items() if v is not None})
    return recipe


def _fit_kwargs(recipe: Mapping[str, Any]) -> dict[str, Any]:
    import inspect

    from torchshrink.train import fit

    accepted = set(inspect.signature(fit).parameters)
    return {k: v for k, v in recipe.items() if k in accepted and k not in ("batch_size", "model", "train")}


def _loaders(splits: Any, recipe: Mapping[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """data.loaders with the recipe's loader options (batch size, augmentation shift)."""
    import inspect

    from torchshrink import data

    accepted = set(inspect.signature(data.loaders).parameters)
    kw = {k: v for k, v in recipe.items() if k in accepted and k not in ("splits", "eval_batch_size", "seed")}
    return data.loaders(splits, eval_batch_size=EVAL_BATCH_SIZE, seed=seed, **kw)


def _evaluate_file(path: str, data_name: str | None, split: str = "test") -> dict[str, Any]:
    """Load an artifact and compute its accuracy on the split `train` reported on."""
    from torchshrink.codec.container import load, read_info
    from torchshrink.train import evaluate

    info = read_info(path)
    meta = info.metadata or {}
    data_name = data_name or meta.get("data")
    if not data_name:
        raise ConfigError(f"{path!r} does not record its data set; pass --data (one of "
                          f"{', '.join(_data_names())})")
    if data_name not in _data_names():
        raise ConfigError(f"unknown data set {data_name!r}." + did_you_mean(data_name, _data_names()))
    seed = int(meta.get("data_seed", DATA_SEED))
    splits = _load_data(data_name, seed)
    model = load(path)
    try:
        metrics = evaluate(model, _test_loader(splits, split))
    except RuntimeError as e:
        from torchshrink.errors import DataError

        raise DataError(f"{path!r} cannot run on data set {data_name!r} (inputs of shape "
                        f"{tuple(splits.input_shape)}): {e}") from e
    return {"file": path, "bytes": info.file_bytes, "data": data_name, "split": split,
            "samples": len(getattr(splits, split)), "accuracy": metrics["accuracy"], "loss": metrics["loss"],
            "trained_accuracy": meta.get("test_accuracy") if split == "test" else None}


def _data_names() -> list[str]:
    from torchshrink import data

    return data.names()


def _reference_or_file(target: str) -> tuple[str, nn.Module, Any]:
    """('model' | 'file', model, ArtifactInfo or None) for a model name or an artifact path."""
    from torchshrink import models

    if os.path.isfile(target):
        from torchshrink.codec.container import load, read_info

        info = read_info(target)
        return "file", load(target), info
    if os.path.isdir(target):
        raise ArtifactError(f"{target!r} is a directory, not an artifact file")
    if target in models.names():
        return "model", models.create(target), None
    looks_like_path = os.sep in target or "." in target
    hint = (" No such file, and it is not a reference model name either."
            if looks_like_path else " (or give the path of an artifact file)")
    raise ConfigError(f"unknown model {target!r}." + did_you_mean(target, models.names()) + hint)


# --------------------------------------------------------------------------------------------
# train


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="reference model: " + ", ".join(_model_names()))
    p.add_argument("--data", required=True, help="data set: " + ", ".join(_data_names()))
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the model's recipe)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's recipe)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size")
    p.add_argument("--seed", type=int, default=0, help="seed for initialization and shuffling (default 0)")
    p.add_argument("--out", required=True, help="artifact file to write (e.g. lenet300.tsz)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("train", help="train a reference model on a data set and save it as an artifact", arguments=_train_args)
def cmd_train(args: argparse.Namespace) -> int:
    result = train_and_save(args.model, args.data, out=args.out, epochs=args.epochs, lr=args.lr,
                            batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    if args.json:
        _print_json(result)
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
    from torchshrink.codec.container import load, save
    from torchshrink.train import evaluate, fit, seed_everything

    _check_model_name(model_name)
    if data_name not in _data_names():
        raise ConfigError(f"unknown data set {data_name!r}." + did_you_mean(data_name, _data_names()))
    recipe = train_recipe(model_name)
    for key, value in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size)):
        if value is not None:
            recipe[key] = value
    if recipe["epochs"] < 1:
        raise ConfigError(f"--epochs must be >= 1, got {recipe['epochs']}")
    if recipe["batch_size"] < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {recipe['batch_size']}")
    splits = _load_data(data_name)
    seed_everything(seed)
    model = _build_model(model_name, splits.input_shape, splits.num_classes)
    train_loader, val_loader, _ = _loaders(splits, recipe, seed)
    fit_kw = _fit_kwargs(recipe)
    fit_kw.update(epochs=int(recipe["epochs"]), seed=seed, progress=progress, desc=f"train {model_name}")
    result = fit(model, train_loader, val=val_loader, **fit_kw)
    metrics = evaluate(model, _test_loader(splits))
    metadata = {"data": data_name, "data_seed": DATA_SEED, "input_shape": list(splits.input_shape), "split": "test", "test_accuracy": metrics["accuracy"],
                "test_loss": metrics["loss"], "train": {k: v for k, v in recipe.items() if _plain(v)} | {"seed": seed}}
    nbytes = save(model, out, metadata=metadata)
    reloaded = evaluate(load(out), _test_loader(splits))
    if reloaded["accuracy"] != metrics["accuracy"]:
        raise ArtifactError(f"{out!r} reloads with accuracy {reloaded['accuracy']} but the trained model "
                            f"had {metrics['accuracy']}; the artifact does not round-trip this model")
    return {"model": model_name, "data": data_name, "accuracy": metrics["accuracy"], "loss": metrics["loss"],
            "samples": len(splits.test), "epochs": result.epochs, "seconds": result.seconds,
            "file": out, "bytes": nbytes}


def _plain(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


# --------------------------------------------------------------------------------------------
# eval


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="artifact written by `torchshrink train` or ts.save")
    p.add_argument("--data", default=None, help="data set (default: the one recorded in the file)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="split to evaluate (default test)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


@command("eval", help="evaluate a saved artifact's accuracy on a data set", arguments=_eval_args)
def cmd_eval(args: argparse.Namespace) -> int:
    result = _evaluate_file(args.file, args.data, args.split)
    if args.json:
        _print_json(result)
    else:
        print(f"{args.file}: accuracy {result['accuracy']:.2f}% on {result['data']} {result['split']} "
              f"({result['samples']} samples), loss {result['loss']:.4f}")
    return 0


# --------------------------------------------------------------------------------------------
# inspect


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="FILE|MODEL",
                   help="an artifact file, or a reference model name: " + ", ".join(_model_names()))
    p.add_argument("--json", action="store_true", help="print the result as JSON")


@command("inspect", help="params, nonzeros, MACs and bytes of a model or an artifact", arguments=_inspect_args)
def cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from torchshrink import models
    from torchshrink.measure import measure

    kind, model, info = _reference_or_file(args.target)
    shape = (info.metadata or {}).get("input_shape") if info is not None else None
    if shape:  # trained on data of another size than the reference input (lenet300 on 8x8 digits)
        example = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0))
    else:
        try:
            example = models.example_input(model, 1)
        except ConfigError as e:
            raise ConfigError(f"cannot build an example input for {type(model).__name__}; "
                              "measure it from Python with ts.measure(model, example=...)") from e
    report = measure(model, example=example, latency=False, artifact=info.path if info is not None else None)
    out = report.to_dict()
    for key in ("latency", "latency_runs", "metric", "metric_name"):
        out.pop(key, None)
    out["source"] = kind
    if info is not None:
        out["bytes"] = info.file_bytes
        out["manifest"] = {
            "format_version": info.format_version,
            "library_version": info.library_version,
            "model_name": info.model_name,
            "history": info.history,
            "metadata": info.metadata,
            "header_bytes": info.header_bytes,
            "payload_bytes": info.payload_bytes,
            "encoding_bytes": info.encoding_bytes(),
        }
    if args.json:
        _print_json(out)
        return 0
    print(report.table())
    if info is not None:
        print(f"\nfile {info.path}: {info.file_bytes:,} bytes (header {info.header_bytes:,}, payload "
              f"{info.payload_bytes:,}), format v{info.format_version}, written by torchshrink {info.library_version}")
        enc = ", ".join(f"{k} {v:,} B" for k, v in sorted(info.encoding_bytes().items()))
        print(f"  encodings: {enc or '-'}")
        if info.history:
            print("  applied: " + "; ".join(str(h.get("method", h)) if isinstance(h, dict) else str(h)
                                            for h in info.history))
        if info.metadata:
            print("  metadata: " + json.dumps(info.metadata, sort_keys=True))
        # the per-layer table, like Deep Compression's Table 2
        from torchshrink.cli_compress import inspect_table

        print("\n" + inspect_table(info.path))
    return 0


# --------------------------------------------------------------------------------------------
# demo


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="demo_out", help="where the artifacts go (default ./demo_out)")
    p.add_argument("--epochs", type=int, default=None, help="baseline training epochs (default: recipe)")
    p.add_argument("--recipe", default=None, help="compression recipe YAML (default: the best bundled one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@command("demo", help="train LeNet-300-100 on the bundled MNIST sample, compress it, print before/after",
         arguments=_demo_args)
def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(out_dir=args.out_dir, epochs=args.epochs, recipe=args.recipe, progress=not args.quiet)
    return 0


DEMO_RECIPE = "recipes/deep_compression_lenet300.yaml"
# Deep Compression's per-layer pruning rates for LeNet-300-100 (Han et al. 2016, Table 2).
_DEMO_SPARSITY = {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}


def _find_recipe(recipe: str | None) -> Path | None:
    candidates = [Path(recipe)] if recipe else [Path(DEMO_RECIPE),
                                                Path(__file__).resolve().parents[2] / DEMO_RECIPE]
    for c in candidates:
        if c.is_file():
            return c
    if recipe:
        raise ConfigError(f"recipe file {recipe!r} does not exist")
    return None


def _compress(model: nn.Module, recipe_path: Path | None, *, train: Any, val: Any, example: Any,
              evaluate: Callable[[nn.Module], float], progress: bool) -> tuple[nn.Module, str]:
    """The best compression the project has now: the recipe runner when there is one, else
    Deep Compression's pruning stage with fine-tuning, else nothing (said so)."""
    import torchshrink as ts

    compress = getattr(ts, "compress", None)
    load_recipe = getattr(ts, "load_recipe", None)
    if recipe_path is not None and callable(compress) and callable(load_recipe):
        result = compress(model, load_recipe(str(recipe_path)), train=train, val=val, example=example,
                          evaluate=evaluate, progress=progress)
        return getattr(result, "model", result), f"recipe {recipe_path}"
    from torchshrink.registry import get_method

    try:
        method = get_method("magnitude_pruning")
    except ConfigError:
        return model, "none (no compression method is available yet): baseline saved and measured only"
    from torchshrink.api import apply
    from torchshrink.train import fit

    config = method.config(sparsity=0.9, per_layer=dict(_DEMO_SPARSITY))  # type: ignore[call-arg]
    model = apply(model, config, example=example, train=train, val=val, progress=progress)
    fit(model, train, val=val, epochs=10, lr=1e-4, progress=progress, desc="fine-tune")
    return model, ("magnitude pruning fc1/fc2/fc3 = 92/91/74% + 10 epochs fine-tuning "
                   f"(no recipe runner or {DEMO_RECIPE} yet)")


def run_demo(*, out_dir: str | os.PathLike[str] = "demo_out", epochs: int | None = None,
             recipe: str | None = None, progress: bool = True, runs: int = 100,
             print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Train LeNet-300-100 on mnist5k, compress it, save, reload, and print before/after.

    Every number of the "after" column is taken on the model reloaded from the saved file.
    """
    import copy

    from torchshrink import data, models
    from torchshrink.codec.container import load, save
    from torchshrink.measure import compare, measure, time_forward
    from torchshrink.nn.params import materialize
    from torchshrink.train import evaluate, fit, seed_everything

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe_path = _find_recipe(recipe)
    splits = data.load("mnist5k", seed=DATA_SEED)
    base_recipe = train_recipe("lenet300")
    if epochs is not None:
        base_recipe["epochs"] = epochs
    train_loader, val_loader, _ = _loaders(splits, base_recipe, seed=0)
    test_loader = _test_loader(splits)

    def accuracy(m: nn.Module) -> float:
        return evaluate(m, test_loader)["accuracy"]

    seed_everything(0)
    model = models.create("lenet300")
    fit_kw = _fit_kwargs(base_recipe)
    fit_kw.update(epochs=int(base_recipe["epochs"]), progress=progress, desc="train lenet300")
    print_fn(f"training LeNet-300-100 on mnist5k ({len(splits.train)} train / {len(splits.test)} test images)...")
    fit(model, train_loader, val=val_loader, **fit_kw)
    example = models.example_input(model, 1)
    base_path = out / "lenet300_fp32.tsz"
    save(model, base_path, metadata={"data": "mnist5k", "data_seed": DATA_SEED, "test_accuracy": accuracy(model)})
    before = measure(load(base_path), example=example, evaluate=accuracy, metric_name="accuracy",
                     batch_sizes=(1, 64), threads=1, runs=runs, artifact=base_path)

    print_fn("compressing...")
    compressed, how = _compress(model, recipe_path, train=train_loader, val=val_loader, example=example,
                                evaluate=accuracy, progress=progress)
    small_path = out / "lenet300_compressed.tsz"
    save(compressed, small_path, metadata={"data": "mnist5k", "data_seed": DATA_SEED,
                                           "test_accuracy": accuracy(compressed)})
    reloaded = load(small_path)
    after = measure(reloaded, example=example, evaluate=accuracy, metric_name="accuracy",
                    batch_sizes=(1, 64), threads=1, runs=runs, artifact=small_path)
    # What a deployment that decodes the file once would see: plain dense weights, no per-call
    # mask or codebook gather.
    decoded = materialize(copy.deepcopy(reloaded))
    decoded_latency = time_forward(decoded, example, runs=runs, warmup=10, threads=1)
    seconds = time.perf_counter() - t0
    print_fn("")
    print_fn(f"LeNet-300-100 on mnist5k; compression: {how}")
    print_fn(f"accuracy on the {len(splits.test)} test images, measured on the files reloaded from {out}/")
    print_fn(compare(before, after, labels=("fp32 baseline", "compressed")))
    if before.latency.get(1) is not None and after.layers and any(r.execution != "dense" for r in after.layers):
        print_fn(f"decoded once to dense fp32 (ts.nn.params.materialize), the compressed model takes "
                 f"{decoded_latency.median_ms:.4f} ms at batch 1 (baseline {before.latency[1].median_ms:.4f} ms)")
    print_fn(f"demo finished in {seconds:.0f} s")
    return {"before": before, "after": after, "decoded_latency": decoded_latency, "compression": how,
            "seconds": seconds,
            "files": [str(base_path), str(small_path)]}


# --------------------------------------------------------------------------------------------
# Families add their subcommands below, each in its own section.
# --- compress (issue 5) ---
from torchshrink.cli_compress import cmd_compress as _cmd_compress  # noqa: E402
from torchshrink.cli_compress import compress_args as _compress_args  # noqa: E402

command("compress", help="train or load a baseline, run a recipe, write the compressed file, report",
        arguments=_compress_args)(_cmd_compress)

# --- plan ---
from torchshrink.cli_plan import cmd_plan as _cmd_plan  # noqa: E402
from torchshrink.cli_plan import plan_args as _plan_args  # noqa: E402

command("plan", help="measure candidate recipes and keep the best within a size/latency budget",
        arguments=_plan_args)(_cmd_plan)
# --- export (issue 8) ---
from torchshrink.cli_export import cmd_export as _cmd_export  # noqa: E402
from torchshrink.cli_export import export_args as _export_args  # noqa: E402

command("export", help="write an ONNX (or torch.export .pt2) file and check it against PyTorch",
        arguments=_export_args)(_cmd_export)
# --- bench ---
from torchshrink.cli_export import bench_args as _bench_args  # noqa: E402
from torchshrink.cli_export import cmd_bench as _cmd_bench  # noqa: E402

command("bench", help="latency in PyTorch and ONNX Runtime, side by side (median and spread)",
        arguments=_bench_args)(_cmd_bench)
# --- plan ---

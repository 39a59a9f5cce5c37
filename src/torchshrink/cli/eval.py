"""`torchshrink eval`: a saved artifact's accuracy on the split `train` reported on."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torchshrink.cli.options as options
from torchshrink.cli.baseline import (
    DATA_SEED,
    artifact_metadata,
    check_data_name,
    data_names,
    test_loader,
)
from torchshrink.errors import ConfigError, DataError

NAME = "eval"
HELP = "evaluate a saved artifact's accuracy on a data set"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="artifact written by `torchshrink train` or ts.save")
    p.add_argument("--data", default=None, help="data set (default: the one recorded in the file)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="split to evaluate (default test)")
    options.add_json(p)


def run(args: argparse.Namespace) -> int:
    result = evaluate_file(args.file, args.data, args.split)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.file}: accuracy {result['accuracy']:.2f}% on {result['data']} {result['split']} "
              f"({result['samples']} samples), loss {result['loss']:.4f}")
    return 0


def evaluate_file(path: str, data_name: str | None, split: str = "test") -> dict[str, Any]:
    """Load an artifact and compute its accuracy on the split `train` reported on."""
    import torchshrink as ts
    from torchshrink import data

    info = ts.read_info(path)
    meta = artifact_metadata(info)
    data_name = data_name or meta.get("data")
    if not data_name:
        raise ConfigError(f"{path!r} does not record its data set; pass --data (one of {', '.join(data_names())})")
    check_data_name(data_name)
    splits = data.load(data_name, seed=int(meta.get("data_seed", DATA_SEED)))
    model = ts.load(path)
    try:
        metrics = ts.evaluate(model, test_loader(splits, split))
    except RuntimeError as e:
        raise DataError(f"{path!r} cannot run on data set {data_name!r} (inputs of shape "
                        f"{tuple(splits.input_shape)}): {e}") from e
    trained = meta.get("test_accuracy") if split == "test" else None
    return {"file": path, "bytes": info.file_bytes, "data": data_name, "split": split,
            "samples": len(getattr(splits, split)), "accuracy": metrics["accuracy"], "loss": metrics["loss"],
            "trained_accuracy": trained}

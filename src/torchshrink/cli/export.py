"""`torchshrink export`: write an ONNX (or torch.export .pt2) file and check it against PyTorch.

    torchshrink export lenet.tsz --out lenet.onnx

The target is an artifact file or a reference model name. When the artifact records the data
set it was trained on, its test split is the check data, so the parity check also compares
accuracy in PyTorch and in the runtime.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torchshrink.cli.options as options
from torchshrink.cli.baseline import artifact_metadata, check_data_name, reference_or_file
from torchshrink.cli.paths import prepare_output
from torchshrink.errors import ConfigError, did_you_mean

NAME = "export"
HELP = "write an ONNX (or torch.export .pt2) file and check it against PyTorch"

# The file suffix each format writes; --out must carry it, so a name never lies about its content.
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2"}


def target(name: str, data: str | None, batch: int) -> tuple[Any, Any, Any]:
    """(model, example batch, labelled check loader or None) for a file or a model name."""
    from torch.utils.data import DataLoader

    from torchshrink import data as ts_data
    from torchshrink import models
    from torchshrink.cli.baseline import DATA_SEED

    kind, model, info = reference_or_file(name)
    meta = artifact_metadata(info) if info is not None else {}
    data_name = data or meta.get("data")
    loader = None
    if data_name:
        check_data_name(data_name)
        splits = ts_data.load(data_name, seed=int(meta.get("data_seed", DATA_SEED)))
        loader = DataLoader(splits.test, batch_size=250)
        example = splits.test.tensors[0][:batch]
    else:
        example = models.example_input(model, batch)
    return model.eval(), example, loader


def output_format(out: str, given: str | None) -> str:
    """The format for `--out` and `--format`: from the suffix when not given; a suffix that is
    not the format's is an error (`--out m.tflite` must not silently hold ONNX)."""
    suffix = Path(out).suffix.lower()
    if given is not None and given not in SUFFIXES:
        raise ConfigError(f"unsupported export format {given!r}; supported formats: {', '.join(SUFFIXES)}."
                          + did_you_mean(given, SUFFIXES))
    fmt = given or next((f for f, s in SUFFIXES.items() if s == suffix), None)
    if fmt is None or SUFFIXES[fmt] != suffix:
        wanted = (f"{SUFFIXES[fmt]} for --format {fmt}" if fmt is not None
                  else " or ".join(f"{s} ({f})" for f, s in SUFFIXES.items()))
        raise ConfigError(f"--out {out!r}: the suffix {suffix or '(none)'!r} does not name an export format; "
                          f"use {wanted}")
    return fmt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="artifact file (.tsz) or reference model name")
    p.add_argument("--out", required=True,
                   help="file to write: model.onnx or model.pt2 (the suffix must match --format)")
    p.add_argument("--format", default=None, help=f"{', '.join(SUFFIXES)} (default: from the --out suffix)")
    p.add_argument("--data", default=None, help="data set for the check (default: the one the artifact records)")
    p.add_argument("--trace-batch", type=options.positive_int, default=None,
                   help="example batch size used for tracing and the check (default 2 for onnx/pt2, whose "
                        "file keeps a dynamic batch; 1 for the edge formats, whose files keep this batch size)")
    p.add_argument("--opset", type=options.positive_int, default=None, help="ONNX opset (default 18)")
    options.add_json(p)


def run(args: argparse.Namespace) -> int:
    from torchshrink.export import export

    fmt = output_format(args.out, args.format)
    if not (fmt == "coreml" and Path(args.out).is_dir()):  # an .mlpackage is a directory, replaced whole
        prepare_output(args.out, "--out")
    batch = args.trace_batch or (2 if fmt in ("onnx", "pt2") else 1)
    model, example, loader = target(args.target, args.data, batch)
    result = export(model, args.out, example=example, format=fmt, check_data=loader,  # type: ignore[arg-type]
                    opset=args.opset)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"wrote {result.path} ({result.bytes:,} bytes, {result.format}, {result.form} form)")
        if result.swapped:
            print(f"  export forms: {len(result.swapped)} layers ({', '.join(sorted(set(result.swapped.values())))})")
        if result.parity is not None:
            print(f"  check: {result.parity.summary()}")
    return 0


# The edge runtimes (export/litert.py, export/executorch.py), each behind its extra.
SUFFIXES.update({"tflite": ".tflite", "pte": ".pte", "coreml": ".mlpackage"})

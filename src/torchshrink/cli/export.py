"""`torchshrink export`: write an ONNX, .pt2, LiteRT (.tflite), ExecuTorch (.pte) or Core ML
(.mlpackage) file, or a folder a browser runs (--format web), and check it against PyTorch.

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
from torchshrink.cli.paths import prepare_output, prepare_output_dir
from torchshrink.errors import ConfigError, did_you_mean

NAME = "export"
HELP = "write an ONNX, .pt2, LiteRT, ExecuTorch or Core ML file (or a web folder) and check it"

# The file suffix each format writes; --out must carry it, so a name never lies about its content.
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "tflite": ".tflite", "pte": ".pte", "coreml": ".mlpackage"}
# Formats that write a folder, not a file: --out names the directory.
FOLDER_FORMATS = ("web",)
FORMS = ("inference", "training")


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
    if given in FOLDER_FORMATS:
        return given
    if given is not None and given not in SUFFIXES:
        known = (*SUFFIXES, *FOLDER_FORMATS)
        raise ConfigError(f"unsupported export format {given!r}; supported formats: {', '.join(known)}."
                          + did_you_mean(given, known))
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
                   help="file to write: model.onnx, .pt2, .tflite, .pte or .mlpackage (the suffix must match "
                        "--format); a folder for --format web")
    p.add_argument("--format", default=None,
                   help=f"{', '.join((*SUFFIXES, *FOLDER_FORMATS))} (default: from the --out suffix)")
    p.add_argument("--data", default=None, help="data set for the check (default: the one the artifact records)")
    p.add_argument("--trace-batch", type=options.positive_int, default=None,
                   help="example batch size used for tracing and the check (default 2 for onnx/pt2, whose "
                        "file keeps a dynamic batch; 1 for the edge formats, whose files keep this batch size)")
    p.add_argument("--opset", type=options.positive_int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--form", choices=FORMS, default="inference",
                   help="export the inference form (default: the model as `ts.for_inference(prefer=\"memory\")` "
                        "serves it, each layer in its most compact form, which the file keeps packed) or the "
                        "training form as loaded")
    options.add_json(p)
    add_web_arguments(p)


def add_web_arguments(p: argparse.ArgumentParser) -> None:
    web = p.add_argument_group("--format web (a folder: the ONNX file and a page that runs it in ONNX Runtime Web)")
    web.add_argument("--ort-web", default=None, metavar="DIR",
                     help="a local onnxruntime-web npm package or node_modules (default: ./node_modules, then "
                          "the torchshrink npm cache)")
    web.add_argument("--npm-install", action="store_true",
                     help="run `npm install onnxruntime-web` into the torchshrink npm cache when it is not found")
    web.add_argument("--inputs", default=None, metavar="JSON", help="the page's inputs.json (default: the example batch)")


def web_options(args: argparse.Namespace, fmt: str) -> dict[str, Any]:
    """export_web's options from the command line; set for another format, they are an error."""
    given = {"ort_web": args.ort_web, "npm_install": args.npm_install or None, "inputs": args.inputs}
    given = {k: v for k, v in given.items() if v is not None}
    if given and fmt not in FOLDER_FORMATS:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"{flags}: options of --format web only, not of {fmt}")
    return given


def run(args: argparse.Namespace) -> int:
    from torchshrink.export import export

    fmt = output_format(args.out, args.format)
    web = web_options(args, fmt)
    if fmt in FOLDER_FORMATS or (fmt == "coreml" and Path(args.out).is_dir()):
        # a folder (an .mlpackage is one too) is replaced whole by the export
        prepare_output_dir(Path(args.out).absolute().parent, "--out")
    else:
        prepare_output(args.out, "--out")
    # onnx, pt2 and web keep a dynamic batch; the edge formats' files keep the traced one
    batch = args.trace_batch or (2 if fmt in ("onnx", "pt2", "web") else 1)
    model, example, loader = target(args.target, args.data, batch)
    if args.form == "inference":
        from torchshrink.infer import for_inference

        # The fewest bytes per layer: packed codes and codebooks export as packed codes and
        # codebooks, so the file is as small as the training form's; the file's runtime picks
        # its own kernels, so PyTorch's fastest form on this machine is not the export's concern.
        model = for_inference(model, example=example, prefer="memory")
    result = export(model, args.out, example=example, format=fmt, check_data=loader,  # type: ignore[arg-type]
                    opset=args.opset, **web)
    if args.json:
        print(json.dumps({**result.to_dict(), "from_form": args.form}, indent=2))
    else:
        print(f"wrote {result.path} ({result.bytes:,} bytes, {result.format}, {result.form} form, "
              f"from the {args.form} form)"
              + (f"; serve it: python -m http.server --directory {result.path}" if fmt in FOLDER_FORMATS else ""))
        if result.swapped:
            print(f"  export forms: {len(result.swapped)} layers ({', '.join(sorted(set(result.swapped.values())))})")
        if result.parity is not None:
            print(f"  check: {result.parity.summary()}")
    return 0


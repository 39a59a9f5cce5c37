"""`torchshrink inspect`: params, nonzeros, MACs and bytes of a reference model or an artifact."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import torchshrink.cli.options as options
from torchshrink.cli.baseline import model_names, reference_or_file
from torchshrink.errors import ArtifactError, ConfigError

NAME = "inspect"
HELP = "params, nonzeros, MACs and bytes of a model or an artifact"

# An example input is allocated from the file's `input_shape`; a crafted file must not make
# that a multi-gigabyte tensor. 2**24 floats (64 MiB) is far above any reference model's input.
MAX_INPUT_ELEMENTS = 2**24
MAX_INPUT_DIMS = 6


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="FILE|MODEL",
                   help="an artifact file, or a reference model name: " + ", ".join(model_names()))
    options.add_json(p)


def input_shape(info: Any) -> tuple[int, ...] | None:
    """The per-sample input shape an artifact records (None: not recorded), checked."""
    meta = info.metadata if isinstance(info.metadata, dict) else {}
    shape = meta.get("input_shape")
    if shape is None:
        return None
    ok = (isinstance(shape, list) and 1 <= len(shape) <= MAX_INPUT_DIMS
          and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape))
    if not ok:
        raise ArtifactError(f"{info.path!r} records input_shape {shape!r}; expected a list of 1 to "
                            f"{MAX_INPUT_DIMS} positive integers such as [1, 28, 28]")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ArtifactError(f"{info.path!r} records input_shape {shape!r} ({math.prod(shape):,} values per "
                            f"sample, limit {MAX_INPUT_ELEMENTS:,}); measure it from Python with "
                            "ts.measure(model, example=...)")
    return tuple(shape)


def run(args: argparse.Namespace) -> int:
    import torch

    from torchshrink import models
    from torchshrink.cli.tables import inspect_table
    from torchshrink.measure import measure

    kind, model, info = reference_or_file(args.target)
    shape = input_shape(info) if info is not None else None
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
        print(json.dumps(out, indent=2))
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
        print("\n" + inspect_table(info.path))  # the per-layer table, like Deep Compression's Table 2
    return 0

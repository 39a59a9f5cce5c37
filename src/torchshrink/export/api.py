"""`ts.export(model, path, example=x, format="onnx")`: write the file, then prove it runs.

The file is written next to its destination and moved into place only after the parity check
passes, so a failed export never leaves a file that looks valid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, ParamSpec

import torch
from torch import nn

from torchshrink.errors import ConfigError, did_you_mean
from torchshrink.export.check import (
    ParityError,
    ParityReport,
    compare,
    float_tolerance,
    sample_batches,
)
from torchshrink.export.paths import output_path
from torchshrink.export.prepare import Prepared, cast_inputs, prepare

__all__ = ["export", "ExportResult", "FORMATS", "Format"]

Format = Literal["onnx", "pt2", "web", "tflite", "pte", "coreml", "compressed-tensors"]
FORMATS: tuple[str, ...] = ("onnx", "pt2", "web", "tflite", "pte", "coreml", "compressed-tensors")
EDGE_FORMATS = ("tflite", "pte")  # export/edge.py: static shapes, checked in their own runtimes
FLOAT_ROWS = 64  # check samples for float forms
QUANTIZED_ROWS = 256  # and for quantized forms (a top-1 agreement rate needs more)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: str
    format: Format
    bytes: int
    form: Literal["float", "half", "quantized"]
    swapped: dict[str, str]  # layer -> export form (quantized layers in their ONNX forms)
    parity: ParityReport | None
    exporter: str = "torchscript"  # or "dynamo" where the TorchScript trace could not be used
    edge_form: str | None = None  # tflite/pte: float32, int8_static, int8_dynamic, weight_only, float16

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["parity"] = self.parity.to_dict() if self.parity else None
        return d


def _inputs(example: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example, torch.Tensor):
        return (example,)
    if isinstance(example, (tuple, list)) and example and all(isinstance(t, torch.Tensor) for t in example):
        return tuple(example)
    raise ConfigError(f"example must be an input tensor or a tuple of input tensors, got "
                      f"{type(example).__name__}; e.g. example=torch.randn(1, 1, 28, 28)")


def _check_args(fmt: str, path: str | os.PathLike[str]) -> Path:
    if fmt not in FORMATS:
        raise ConfigError(f"unsupported export format {fmt!r}; supported formats: {', '.join(FORMATS)}."
                          + did_you_mean(str(fmt), FORMATS))
    return output_path(path, folder="compressed-tensors" if fmt == "compressed-tensors" else None)


_AXES = {"batch": 0, "sequence": 1}


def _dynamic(dynamic: Sequence[str] | Mapping[str, int] | None, dynamic_batch: bool) -> dict[str, int]:
    if dynamic is None:
        return {"batch": 0} if dynamic_batch else {}
    if isinstance(dynamic, str):
        dynamic = (dynamic,)
    if isinstance(dynamic, Mapping):
        bad = {k: v for k, v in dynamic.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise ConfigError(f"dynamic axes map a name to an input dimension (an int >= 0), got {bad}; "
                              "e.g. dynamic={'batch': 0, 'sequence': 1}")
        return {str(k): int(v) for k, v in dynamic.items()}
    unknown = [a for a in dynamic if a not in _AXES]
    if unknown:
        raise ConfigError(f"unknown dynamic axis {unknown[0]!r}; named axes are {', '.join(_AXES)}, or pass "
                          "a mapping of names to dimensions (dynamic={'tokens': 1})" + did_you_mean(unknown[0], _AXES))
    return {a: _AXES[a] for a in dynamic}


_P = ParamSpec("_P")


def _float_reference(fn: Callable[_P, ExportResult]) -> Callable[_P, ExportResult]:
    """Run `fn` with the model's int4-kernel layers on their exact float path: runtimes compute
    the file in float, and the bfloat16 rounding of PyTorch's int4 CPU kernel is not part of
    the function the file must match."""

    @functools.wraps(fn)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> ExportResult:
        model = args[0] if args else kwargs.get("model")
        try:
            from torchshrink.quant.exact import exact_arithmetic
        except ImportError:  # the quantization family is not installed
            return fn(*args, **kwargs)
        with exact_arithmetic(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
            return fn(*args, **kwargs)

    return run


@_float_reference
def export(model: nn.Module, path: str | os.PathLike[str], *, example: Any = None, format: Format = "onnx",
           check: bool = True, check_data: Iterable[Any] | None = None, opset: int | None = None,
           dynamic_batch: bool = True, dynamic: Sequence[str] | Mapping[str, int] | None = None,
           dynamic_axes: Mapping[str, int] | None = None, **web: Any) -> ExportResult:
    """Export `model` to `path` and run the parity check; raise on failure.

    format: "onnx" (ONNX Runtime and every ONNX consumer; quantized layers become QDQ /
    integer-matmul graphs, low-bit weights stay packed) or "pt2" (a torch.export program,
    loadable with torch.export.load and no model code), or an edge runtime's file: "tflite"
    (LiteRT), "pte" (ExecuTorch, XNNPACK) or "coreml" (.mlpackage), each behind its extra.
    example: one input batch (tensor, tuple, or a dict of keyword tensors such as
        {"input_ids": ids, "attention_mask": mask}, which become graph inputs of those names;
        Hugging Face models are exported without their key/value cache), used for tracing and
        as a check input.
    dynamic / dynamic_axes: axes left free in the file, by name: ("batch", "sequence") or a
        mapping {name: dim}; default the batch axis only (`dynamic_batch`). A dynamic sequence
        is checked in ONNX Runtime at a second, shorter length.
    check_data: optional loader of (x, y) or x batches for the check; with labels, quantized
    forms must also match PyTorch's accuracy within 0.2 points.
    format="web": `path` is a folder holding the ONNX file and a static page that runs it in
        ONNX Runtime Web; `**web` takes export_web's options (inputs=, ort_web=, npm_install=).
    format="compressed-tensors": `path` is a folder that transformers and vLLM load (see
    export.compressed_tensors); no example is needed, the check decodes the written weights.
    Raises ConfigError (bad format or path), UnsupportedModelError (graph cannot be exported;
    names the operator) or ParityError (the file computes something else).
    """
    if example is None and format != "compressed-tensors":
        raise ConfigError(f"format={format!r} traces the model: pass example= (one input batch, e.g. "
                          "example=torch.randn(1, 1, 28, 28))")
    if format == "web":  # a folder: the ONNX file, a static page, ONNX Runtime Web (export/web.py)
        from torchshrink.export.web import export_web

        return export_web(model, path, example=example, check=check, check_data=check_data, opset=opset,
                          dynamic_batch=dynamic_batch, dynamic=dynamic, dynamic_axes=dynamic_axes, **web)
    if web:
        raise ConfigError(f"{', '.join(sorted(web))}: options of format='web' only, not of {format!r}")
    out = _check_args(format, path)
    if format == "compressed-tensors":
        from torchshrink.export.compressed_tensors import export_compressed_tensors

        ct = export_compressed_tensors(model, out, check=check)
        form: Literal["float", "half", "quantized"] = "quantized" if ct.packed else "float"
        return ExportResult(ct.path, format, ct.bytes, form, {**ct.packed, **dict.fromkeys(ct.dense, "dense")},
                            None, "torchshrink")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected an nn.Module to export, got {type(model).__name__}")
    if dynamic is not None and dynamic_axes is not None:
        raise ConfigError("pass dynamic= or dynamic_axes=, not both (they are the same option)")
    axes = _dynamic(dynamic if dynamic is not None else dynamic_axes, dynamic_batch)
    from torchshrink.export.inputs import positional

    model, inputs, names = positional(model, example)
    inputs = _inputs(inputs)
    if format in EDGE_FORMATS:
        return _export_edge(model, out, inputs, format, check, check_data)
    if format == "coreml":
        from torchshrink.export.coreml import package_bytes, write_mlpackage

        # No Core ML runtime off Apple platforms: the check is on the program's weights (coreml.py).
        stored = write_mlpackage(model, inputs, out)
        return ExportResult(str(out), format, package_bytes(out), "float", stored, None, "coremltools",
                            "+".join(sorted({f for v in stored.values() for f in v.split("+")})) or "float32")
    reference = prepare(model, swap=False, upcast=False).module if format == "pt2" else None
    prep = prepare(model, swap=format == "onnx")
    trace_inputs = cast_inputs(inputs, torch.float32) if prep.half else inputs
    # Same directory (so the final rename is atomic) and same suffix (torch.export.save wants .pt2).
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=f".tmp{out.suffix}",
                               dir=out.parent if str(out.parent) else ".")
    os.close(fd)
    try:
        if format == "onnx":
            parity, exporter = _export_onnx(model, prep, inputs, trace_inputs, tmp, opset, axes, names, check,
                                            check_data)
        else:
            assert reference is not None
            parity, exporter = _export_pt2(model, reference, inputs, tmp, "batch" in axes, check, check_data), "torch.export"
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    form = "quantized" if prep.quantized else (
        "half" if prep.half else "float")
    return ExportResult(str(out), format, out.stat().st_size, form, prep.swapped, parity, exporter)


def _export_edge(model: nn.Module, out: Path, inputs: tuple[torch.Tensor, ...], fmt: Format, check: bool,
                 check_data: Iterable[Any] | None) -> ExportResult:
    from torchshrink.export.edge import export_edge

    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=f".tmp{out.suffix}",
                               dir=out.parent if str(out.parent) else ".")
    os.close(fd)
    try:
        parity, exporter, form, swapped = export_edge(fmt, model, inputs, tmp, check=check, check_data=check_data,
                                                      rows=FLOAT_ROWS, quantized_rows=QUANTIZED_ROWS)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    kind: Literal["float", "half", "quantized"] = "float" if form == "float32" else (
        "half" if form == "float16" else "quantized")
    return ExportResult(str(out), fmt, out.stat().st_size, kind, swapped, parity, exporter, form)


def _raise_if_failed(model: nn.Module, report: ParityReport, fmt: str) -> ParityReport:
    if not report.passed:
        raise ParityError(
            f"exported {fmt} file of {type(model).__name__} does not match the PyTorch model: "
            f"{report.summary()}. Nothing was written. If the model is quantized, pass check_data= with "
            "labelled batches from the task so agreement is measured on real inputs"
        )
    return report


def _shorter(inputs: tuple[torch.Tensor, ...], dim: int) -> tuple[torch.Tensor, ...] | None:
    """The inputs cut to a shorter length along `dim` (a second sequence length for the check)."""
    lengths = {t.shape[dim] for t in inputs if t.dim() > dim}
    if len(lengths) != 1 or next(iter(lengths)) < 2:
        return None
    n = max(1, next(iter(lengths)) // 2)
    return tuple(t.narrow(dim, 0, n) if t.dim() > dim else t for t in inputs)


def _export_onnx(model: nn.Module, prep: Prepared, inputs: tuple[torch.Tensor, ...],
                 trace_inputs: tuple[torch.Tensor, ...], tmp: str, opset: int | None, axes: dict[str, int],
                 names: list[str] | None, check: bool, check_data: Iterable[Any] | None
                 ) -> tuple[ParityReport | None, str]:
    """TorchScript export first; a float model it cannot export, or whose file does not run at a
    second input shape, goes through the dynamo exporter. The first failure is the one reported."""
    from torchshrink.errors import UnsupportedModelError

    exporters = ["torchscript"] if prep.quantized or prep.half is not None else ["torchscript", "dynamo"]
    first: Exception | None = None
    for exporter in exporters:
        try:
            return _export_onnx_with(exporter, model, prep, inputs, trace_inputs, tmp, opset, axes, names, check,
                                     check_data), exporter
        except (UnsupportedModelError, _ShapeFixed) as e:
            first = first or e
            if exporter == "dynamo" or not _dynamo_available():
                break
    assert first is not None
    raise first


class _ShapeFixed(ParityError):
    """The file does not run at another input shape: worth the other exporter. A file that runs
    and computes something else is not retried: that is a wrong export form, reported as such."""


def _dynamo_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxscript") is not None


def _export_onnx_with(exporter: str, model: nn.Module, prep: Prepared, inputs: tuple[torch.Tensor, ...],
                      trace_inputs: tuple[torch.Tensor, ...], tmp: str, opset: int | None, axes: dict[str, int],
                      names: list[str] | None, check: bool, check_data: Iterable[Any] | None) -> ParityReport | None:
    from torchshrink.export.onnx import DEFAULT_OPSET, OrtRunner, store_half, write_onnx
    from torchshrink.export.prepare import call

    out_ref = call(prep.module, trace_inputs)
    outs = out_ref if isinstance(out_ref, (tuple, list)) else (out_ref,)
    write_onnx(prep.module, trace_inputs, tmp, n_outputs=len(outs), opset=opset or DEFAULT_OPSET,
               input_names=names, dynamic=axes, exporter=exporter)
    reference = prepare(model, swap=False, upcast=False).module  # the model as the user runs it
    if prep.half is not None:
        out_model = call(reference, inputs)
        out_model = out_model if isinstance(out_model, (tuple, list)) else (out_model,)
        store_half(tmp, half=prep.half, input_half=[t.dtype == prep.half for t in inputs],
                   output_half=[o.dtype == prep.half for o in out_model], all_half=prep.all_half)
    if not check:
        return None
    # Half-precision layers compute in half in PyTorch, so the reference is only that accurate.
    tol = float_tolerance(prep.half) if prep.half is not None else None
    # Agreement is a rate: 256 rows make one flipped near-tie cost 0.4 points, not 1.6.
    rows = QUANTIZED_ROWS if prep.quantized else FLOAT_ROWS
    batches = sample_batches(inputs, data=check_data, rows=rows)
    if "sequence" in axes:
        short = _shorter(inputs, axes["sequence"])
        if short is not None:
            batches.append((short, None))
    try:
        report = compare(reference, OrtRunner(tmp), batches, kind="quantized" if prep.quantized else "float",
                         runtime="onnxruntime", tolerance=tol)
    except ParityError:
        raise
    except Exception as e:  # ONNX Runtime rejects a shape the trace baked in
        raise _ShapeFixed(f"the exported ONNX file of {type(model).__name__} does not run on the check inputs "
                          f"in ONNX Runtime ({str(e).strip().splitlines()[0][:300]}); an input shape was "
                          "fixed at export. Nothing was written") from e
    return _raise_if_failed(model, report, "ONNX")


def _export_pt2(model: nn.Module, reference: nn.Module, inputs: tuple[torch.Tensor, ...], tmp: str,
                dynamic_batch: bool, check: bool, check_data: Iterable[Any] | None) -> ParityReport | None:
    from torchshrink.export.pt2 import Pt2Runner, write_pt2

    write_pt2(reference, inputs, tmp, dynamic_batch=dynamic_batch)
    if not check:
        return None
    report = compare(reference, Pt2Runner(tmp), sample_batches(inputs, data=check_data), kind="float",
                     runtime="torch.export")
    return _raise_if_failed(model, report, "pt2")

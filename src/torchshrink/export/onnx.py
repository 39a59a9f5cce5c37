"""ONNX export with a dynamic batch dimension, loud failures and an ONNX Runtime runner.

PyTorch's TorchScript-based exporter (`dynamo=False`) comes first: it needs no extra package
and it lets the export forms in qdq.py emit exact QDQ / MatMulInteger / packed-weight subgraphs
through autograd-Function symbolics. Float models it cannot trace, or whose trace does not match
at a second input shape (a sequence length baked in by library code), go through the
torch.export-based exporter (onnxscript) instead.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchshrink.errors import UnsupportedModelError

__all__ = ["DEFAULT_OPSET", "axes_for", "write_onnx", "OrtRunner", "store_half"]

# 18 gives BitwiseAnd/BitwiseOr (packed weights) and LayerNormalization; the TorchScript exporter
# goes up to 20.
DEFAULT_OPSET = 18
_FIXES = ("replace the operation with ones ONNX has, export with format='pt2' (torch.export "
          "keeps every PyTorch op), or try another opset=")


def io_names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def _op_in(message: str) -> str | None:
    m = re.search(r"operator '([\w:.]+)'", message) or re.search(r"\b((?:aten|prim|quantized|onnx)::\w+)",
                                                                   message)
    return m.group(1) if m else None


def _translate(model: nn.Module, e: Exception, opset: int) -> UnsupportedModelError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    op = _op_in(str(e))
    what = type(model).__name__
    if op is not None:
        return UnsupportedModelError(
            f"cannot export {what} to ONNX: operator '{op}' has no ONNX conversion at opset {opset} "
            f"({msg}). To fix: {_FIXES}"
        )
    return UnsupportedModelError(f"cannot export {what} to ONNX: the graph could not be traced ({msg}). "
                                 f"To fix: {_FIXES}")


def _control_flow_error(model: nn.Module, w: warnings.WarningMessage) -> UnsupportedModelError:
    where = f"{os.path.basename(str(w.filename))}:{w.lineno}"
    return UnsupportedModelError(
        f"cannot export {type(model).__name__} to ONNX: operator 'aten::Bool' (a tensor converted to a "
        f"Python bool) at {where} makes the forward depend on input values; the traced graph would "
        "hard-code one branch. To fix: use torch.where or tensor ops instead of Python `if` on tensors, "
        "or export with format='pt2' using torch.cond."
    )


# Library code (torch's own modules, transformers) converts tensors to Python bools in shape
# and argument checks, not on input values; a trace there is checked by the parity run at a
# second batch size (and sequence length), not refused up front.
_LIBRARY_DIRS = tuple(os.path.dirname(os.path.abspath(p)) + os.sep for p in (torch.__file__,))


def _library_file(filename: str) -> bool:
    f = os.path.abspath(filename)
    return f.startswith(_LIBRARY_DIRS) or f"{os.sep}transformers{os.sep}" in f


def axes_for(names: Sequence[str], tensors: Sequence[torch.Tensor], dynamic: dict[str, int]
             ) -> dict[str, dict[int, str]]:
    """{graph input: {dim: axis name}} for the named dynamic axes each tensor has."""
    out: dict[str, dict[int, str]] = {}
    for n, t in zip(names, tensors):
        dims = {d: axis for axis, d in dynamic.items() if d < t.dim()}
        if dims:
            out[n] = dims
    return out


def write_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path, *,
               n_outputs: int, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
               input_names: Sequence[str] | None = None, dynamic: dict[str, int] | None = None,
               exporter: str = "torchscript") -> None:
    """Trace `module` on `inputs` and write the ONNX graph to `path` (overwriting).

    dynamic: {axis name: dim} made dynamic on every input that has the dim (the batch axis also
    on the outputs); by default {"batch": 0} when `dynamic_batch`.
    exporter: "torchscript" (torch.jit trace; the quantized export forms need it) or "dynamo"
    (torch.export, then onnxscript; follows shapes symbolically through library code).
    Raises UnsupportedModelError naming the operator when the graph cannot be exported.
    """
    in_names = list(input_names) if input_names else io_names("input", len(inputs))
    out_names = io_names("output", n_outputs)
    if dynamic is None:
        dynamic = {"batch": 0} if dynamic_batch else {}
    axes: dict[str, dict[int, str]] | None = axes_for(in_names, inputs, dynamic) or None
    if axes is not None and "batch" in dynamic:
        axes.update({n: {dynamic["batch"]: "batch"} for n in out_names})
    # Folding would unpack packed low-bit weights into the file; ORT folds them at load instead.
    fold = not any(getattr(m, "keeps_packed", False) for m in module.modules())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        try:
            if exporter == "dynamo":
                _dynamo_export(module, inputs, path, in_names, out_names, axes, opset)
            else:
                torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=opset,
                                  input_names=in_names, output_names=out_names, dynamic_axes=axes,
                                  do_constant_folding=fold)
        except torch.onnx.errors.UnsupportedOperatorError as e:
            raise _translate(module, e, opset) from e
        except (RuntimeError, TypeError, ValueError, torch.onnx.errors.OnnxExporterError,
                NotImplementedError, AttributeError, IndexError) as e:
            raise _translate(module, e, opset) from e
    for w in caught:
        if (issubclass(w.category, torch.jit.TracerWarning) and "Python boolean" in str(w.message)
                and not _library_file(str(w.filename))):
            Path(path).unlink(missing_ok=True)
            raise _control_flow_error(module, w)


def _dynamo_export(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path, in_names: list[str],
                   out_names: list[str], axes: dict[str, dict[int, str]] | None, opset: int) -> None:
    import logging

    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        program = torch.onnx.export(module, inputs, dynamo=True, input_names=in_names, output_names=out_names,
                                    dynamic_axes=axes, opset_version=max(opset, 18), verbose=False)
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
    if program is None:
        raise RuntimeError("the dynamo ONNX exporter returned no program")
    program.save(str(path), external_data=False)


def store_half(path: str | Path, *, half: torch.dtype, input_half: Sequence[bool],
               output_half: Sequence[bool], all_half: bool) -> None:
    """Rewrite a graph traced in float32 from a half-precision model: float initializers are
    stored in `half` behind a Cast (ORT folds it at load), and half-precision inputs/outputs keep
    their dtype through Casts at the graph boundary.

    With `all_half` (the model had no float32 tensors) every float initializer is stored in
    half, including those the exporter derived (BatchNorm folded into a conv, which PyTorch
    computes in half anyway); otherwise only those exactly representable in half, so layers
    kept in float32 on purpose stay float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mp = onnx.load(str(path))
    graph = mp.graph
    elem = TensorProto.FLOAT16 if half == torch.float16 else TensorProto.BFLOAT16
    np_half = np.float16
    new_inits, casts = [], []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or half != torch.float16:
            new_inits.append(init)
            continue
        arr = numpy_helper.to_array(init)
        exact = np.array_equal(arr.astype(np_half).astype(np.float32), arr)
        in_range = bool(np.all(np.abs(arr) <= np.finfo(np_half).max))
        if arr.size < 2 or not in_range or not (exact or all_half):
            new_inits.append(init)
            continue
        stored = numpy_helper.from_array(arr.astype(np_half), init.name + "__fp16")
        new_inits.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "__upcast"))
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    in_casts = []
    for inp, is_h in zip(graph.input, input_half):
        if not is_h:
            continue
        inner = inp.name + "__f32"
        for node in graph.node:
            node.input[:] = [inner if i == inp.name else i for i in node.input]
        inp.type.tensor_type.elem_type = elem
        in_casts.append(helper.make_node("Cast", [inp.name], [inner], to=TensorProto.FLOAT,
                                         name=inp.name + "__upcast"))
    out_casts = []
    for out, is_h in zip(graph.output, output_half):
        if not is_h:
            continue
        inner = out.name + "__f32"
        for node in graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        out.type.tensor_type.elem_type = elem
        out_casts.append(helper.make_node("Cast", [inner], [out.name], to=elem, name=out.name + "__downcast"))
    nodes = [*casts, *in_casts, *graph.node, *out_casts]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(mp)
    onnx.save(mp, str(path))


_NP_OF_ORT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
              "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


class OrtRunner:
    """Runs an ONNX file in ONNX Runtime (CPU) on torch tensors."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own pybind exception types
            raise UnsupportedModelError(f"ONNX Runtime cannot load {str(path)!r}: {e}") from e
        self.inputs = [(i.name, _NP_OF_ORT.get(i.type, np.float32)) for i in self.session.get_inputs()]

    def feeds(self, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
        return {name: t.detach().cpu().numpy().astype(dt, copy=False) for (name, dt), t in zip(self.inputs, inputs)}

    def run_numpy(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        return self.session.run(None, feeds)

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(None, self.feeds(inputs))]

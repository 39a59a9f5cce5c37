"""`.pte` programs for ExecuTorch with the XNNPACK delegate, run with `executorch.runtime`
(the `executorch` extra).

- float32: torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch.
- static int8: our StaticInt8 layers as PT2E Q/DQ patterns (edge.py) with the int8 weight
  constant behind dequantize_per_channel, exactly what `convert_pt2e` would emit, but holding
  our calibrated scales and zero points and our weight codes (no XNNPACKQuantizer, no second
  calibration). The partitioner lowers them to XNNPACK's qs8 kernels.

Dynamic int8, weight-only and float16 layers are refused, naming the layer: XNNPACK's
dynamic and 4-bit paths quantize from float weights with their own quantizer, so the file would
not hold our numbers. Export those to LiteRT, ONNX or .pt2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchshrink.errors import UnsupportedModelError
from torchshrink.export.edge import EdgePrepared, FixedBatchRunner, edge_prepare, require

__all__ = ["write_pte", "ExecuTorchRunner", "EXTRA", "set_threads", "executorch_target"]

EXTRA = "executorch"


def _check_forms(prep: EdgePrepared) -> str:
    other = {n: k for n, k in prep.kinds.items() if k not in ("int8_static", "sparse")}
    if other:
        name, kind = next(iter(other.items()))
        raise UnsupportedModelError(
            f"the ExecuTorch export carries float32 and static int8 with our scales; layer {name!r} is {kind} "
            f"({len(other)} such layers). Use ts.StaticInt8 for ExecuTorch, or export to format='tflite', "
            "'onnx' or 'pt2', which carry that form")
    return "int8_static" if prep.quantized else "float32"


# Ops XNNPACK runs quantized only with one grid on input and output.
_SAME_GRID = (torch.ops.aten.max_pool2d.default,)


def _requantize_between_grids(program: torch.export.ExportedProgram) -> None:
    """Where dequantize(grid A) -> max-pool -> quantize(grid B) with A != B (our layers
    calibrate their input and output grids separately), insert quantize/dequantize on grid A after
    the op. That is exact (a max-pool keeps values on grid A) and it gives XNNPACK what it needs: a
    quantized max-pool whose input and output share one grid, then a separate requantization."""
    qd = torch.ops.quantized_decomposed
    q_op, dq_op = qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default
    graph = program.graph_module.graph
    node: Any
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != q_op:
            continue
        mid: Any = node.args[0]
        src: Any = mid.args[0] if getattr(mid, "op", None) == "call_function" and mid.args else None
        if getattr(mid, "target", None) not in _SAME_GRID or getattr(src, "target", None) != dq_op \
                or tuple(src.args[1:3]) == tuple(node.args[1:3]):
            continue
        with graph.inserting_after(mid):
            q = graph.call_function(q_op, (mid, *src.args[1:]))
        with graph.inserting_after(q):
            dq = graph.call_function(dq_op, (q, *src.args[1:]))
        for k in ("val", "tensor_meta"):
            if k in mid.meta:
                dq.meta[k] = mid.meta[k]
        if "val" in mid.meta:
            q.meta["val"] = mid.meta["val"].to(src.args[0].meta["val"].dtype) if "val" in src.args[0].meta \
                else mid.meta["val"]
        node.replace_input_with(mid, dq)
    graph.lint()
    program.graph_module.recompile()


def write_pte(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path) -> EdgePrepared:
    """Lower `model` (static shapes: those of `inputs`) to XNNPACK and write the `.pte` file."""
    require("executorch.exir", extra=EXTRA, fmt="pte")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    prep = edge_prepare(model, fold_weights=True)
    _check_forms(prep)
    try:
        program = torch.export.export(prep.module, inputs)
        _requantize_between_grids(program)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        buffer = lowered.to_executorch().buffer
    except Exception as e:  # torch.export and exir raise many types
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(f"ExecuTorch cannot lower {type(model).__name__}: {first}. "
                                    "Export to format='onnx' or 'pt2' instead") from e
    Path(path).write_bytes(buffer)
    return prep


class ExecuTorchRunner:
    """Runs a `.pte` program with ExecuTorch's Python runtime on torch tensors."""

    def __init__(self, path: str | Path, *, batch: int | None = None) -> None:
        runtime = require("executorch.runtime", extra=EXTRA, fmt="pte")
        program = runtime.Runtime.get().load_program(str(path))
        self.method = program.load_method("forward")
        meta = self.method.metadata
        self.batch = batch or int(meta.input_tensor_meta(0).sizes()[0])
        self._fixed = FixedBatchRunner(self._run_arrays, self.batch)

    def feeds(self, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return [t.detach().contiguous() for t in inputs]

    def run_numpy(self, feeds: list[torch.Tensor]) -> list[np.ndarray]:
        return [o.numpy() for o in self.method.execute(feeds)]

    def _run_arrays(self, arrays: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        return self.run_numpy([torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        return self._fixed(inputs)


def set_threads(threads: int | None) -> None:
    """Size ExecuTorch's process-wide XNNPACK thread pool (the Python runtime has no per-program
    option)."""
    if threads is None:
        return
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(int(threads))


def executorch_target(path: str | Path, inputs: tuple[torch.Tensor, ...], *, threads: int | None,
                      label: str = "executorch") -> Any:
    """A latency.Target timing one execute of the program's forward method."""
    from torchshrink.export.latency import Target

    set_threads(threads)
    runner = ExecuTorchRunner(path)
    feeds = runner.feeds(inputs)
    return Target(label, "executorch", int(inputs[0].shape[0]), lambda: runner.run_numpy(feeds))

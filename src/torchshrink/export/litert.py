"""`.tflite` files through litert-torch, run in the ai-edge-litert Interpreter (the `litert` extra).

The forms a LiteRT file carries, each with our numbers:

- float32: `litert_torch.convert` as is.
- static int8: our StaticInt8 layers as PT2E Q/DQ patterns (edge.py) holding our calibrated
  activation scales/zero points and our int8 weight codes; the converter's STATIC Q/DQ mode
  folds them into int8 FULLY_CONNECTED / CONV_2D kernels. Such files take int8 inputs and give
  int8 outputs when the first/last layer is quantized: the runner quantizes and dequantizes
  with the tensors' own parameters.
- dynamic-range int8 (our DynamicInt8), weight-only int8 (WeightOnly bits=8, per channel) and
  float16 (Cast): the float program, then ai-edge-quantizer's matching recipe on the file. The
  quantizer recomputes symmetric max-abs scales from the weights; our weights already lie on
  such a grid, so it finds our codes again. That is checked after every export: each of our
  layers' weights, decoded from the file, must equal ours (codes exactly, scales to a float32
  rounding), or the export fails.

Weight-only int4 is not carried: the quantizer's blockwise int4 needs every input dimension
divisible by the block, and LiteRT's CPU kernels run it only on FULLY_CONNECTED; export int4
models to ONNX or .pt2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchshrink.errors import UnsupportedModelError
from torchshrink.export.check import ParityError
from torchshrink.export.edge import EdgePrepared, FixedBatchRunner, edge_prepare, require

__all__ = ["write_tflite", "LiteRTRunner", "tflite_form", "EXTRA", "litert_target"]

EXTRA = "litert"
# ai-edge-quantizer recipes, by our layer kind: (bits, compute in integers, explicit dequantize)
_RECIPES = {"int8_dynamic": (8, True, False), "weight_only": (8, False, True), "float16": (16, False, True)}


def tflite_form(prep: EdgePrepared) -> str:
    """The one compressed form of the prepared model: float32, int8_static or a recipe kind."""
    kinds = set(prep.kinds.values()) - {"sparse"}  # sparse layers are dense in LiteRT
    if not kinds:
        return "float32"
    if len(kinds) > 1:
        raise UnsupportedModelError(f"a LiteRT file carries one compressed form per model; this one mixes "
                                    f"{', '.join(sorted(kinds))} ({_by_kind(prep)}); export it with format='onnx'")
    kind = kinds.pop()
    if kind == "weight_only":
        odd = {n: (b, prep.groups[n]) for n, b in prep.bits.items() if b != 8 or prep.groups[n] is not None}
        if odd:
            name, (b, g) = next(iter(odd.items()))
            raise UnsupportedModelError(
                f"LiteRT export carries weight-only int8 per channel; layer {name!r} is int{b}"
                f"{f' in groups of {g}' if g else ''}. Use WeightOnly(bits=8, granularity='channel'), or "
                "export to format='onnx' or 'pt2', which keep low-bit weights packed")
    if kind not in ("int8_static", *_RECIPES):
        raise UnsupportedModelError(f"layers {_by_kind(prep)} have no LiteRT form; export with format='onnx'")
    return kind


def _by_kind(prep: EdgePrepared) -> str:
    out: dict[str, list[str]] = {}
    for n, k in prep.kinds.items():
        out.setdefault(k, []).append(n)
    return "; ".join(f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in sorted(out.items()))


def _quiet() -> Any:
    import contextlib
    import io
    import logging

    for name in ("litert_torch", "absl", "jax", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # litert-torch prints a progress bar per stage to stdout.
    return contextlib.redirect_stdout(io.StringIO())


def _recipe(kind: str) -> Any:
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    bits, integer, explicit = _RECIPES[kind]
    rm = recipe_manager.RecipeManager()
    half = kind == "float16"
    config = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(
            num_bits=bits, symmetric=True,
            granularity=qtyping.QuantGranularity.TENSORWISE if half else qtyping.QuantGranularity.CHANNELWISE,
            dtype=qtyping.TensorDataType.FLOAT if half else qtyping.TensorDataType.INT),
        compute_precision=qtyping.ComputePrecision.INTEGER if integer else qtyping.ComputePrecision.FLOAT,
        explicit_dequantize=explicit)
    # Our dynamic int8 quantizes Linear layers only; the other kinds cover every layer we compressed.
    op = "FULLY_CONNECTED" if kind == "int8_dynamic" else "*"
    rm.add_quantization_config(regex=".*", operation_name=op, op_config=config,
                               algorithm_key=AlgorithmName.FLOAT_CASTING if half else
                               AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    return rm.get_quantization_recipe()


def write_tflite(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path) -> EdgePrepared:
    """Convert `model` (traced at the inputs' shapes, which the file keeps) and write `path`."""
    litert_torch = require("litert_torch", extra=EXTRA, fmt="tflite")
    prep = edge_prepare(model, fold_weights=False)
    kind = tflite_form(prep)
    quant_config = None
    if kind == "int8_static":
        # The quantizer is never run (our layers already hold their grids); it only switches the
        # converter to STATIC Q/DQ mode, which folds the Q/DQ pairs into integer kernels.
        from litert_torch.quantize.pt2e_quantizer import (
            PT2EQuantizer,
            get_symmetric_quantization_config,
        )
        from litert_torch.quantize.quant_config import QuantConfig

        quant_config = QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True)))
    try:
        with _quiet():
            converted = litert_torch.convert(prep.module, inputs, quant_config=quant_config, runtime_constant_folding=True)
            converted.export(str(path))
    except Exception as e:  # the converter raises ValueError/RuntimeError from MLIR and torch.export
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(f"litert-torch cannot convert {type(model).__name__}: {first}. "
                                    "Export to format='onnx' instead, or simplify the unsupported operator") from e
    if kind in _RECIPES:
        from ai_edge_quantizer import quantizer

        with _quiet():
            data = quantizer.Quantizer(Path(path).read_bytes(), _recipe(kind)).quantize().quantized_model
        Path(path).write_bytes(bytes(data))
    check_weights(path, prep, kind)
    return prep


def _tflite_layouts(w: torch.Tensor) -> list[np.ndarray]:
    """Our weight in each layout LiteRT stores it: FC (out, in); CONV_2D OHWI; DEPTHWISE 1HW(O)."""
    a = w.detach().float().numpy()
    if a.ndim == 4:
        return [a.transpose(0, 2, 3, 1), a.transpose(1, 2, 3, 0)]
    return [a]


def _decoded(interp: Any, detail: dict[str, Any]) -> np.ndarray | None:
    """A constant tensor's values as float32 (int8 codes times their per-channel scales)."""
    try:
        value = interp.get_tensor(detail["index"])
    except ValueError:
        return None
    if value.dtype == np.int8:
        qp = detail["quantization_parameters"]
        scales = np.asarray(qp["scales"], dtype=np.float32)
        if scales.size == 0:
            return None
        shape = [1] * value.ndim
        shape[int(qp["quantized_dimension"])] = -1
        return value.astype(np.float32) * scales.reshape(shape if scales.size > 1 else [1] * value.ndim)
    if value.dtype == np.float16:
        return value.astype(np.float32)
    return None


def check_weights(path: str | Path, prep: EdgePrepared, kind: str) -> None:
    """Every compressed layer's weight, decoded from the file, is ours (see the module doc)."""
    if kind == "float32":
        return
    ai_edge_litert = require("ai_edge_litert.interpreter", extra=EXTRA, fmt="tflite")
    interp = ai_edge_litert.Interpreter(model_path=str(path))
    stored = [d for d in interp.get_tensor_details() if d["dtype"] in (np.int8, np.float16)]
    decoded = [(d, _decoded(interp, d)) for d in stored]
    for name, w in prep.weights.items():
        if prep.kinds[name] == "sparse":
            continue
        ok = False
        for want in _tflite_layouts(w):
            for _, got in decoded:
                if got is not None and got.shape == want.shape and np.allclose(got, want, rtol=2e-7, atol=0):
                    ok = True
                    break
            if ok:
                break
        if not ok:
            raise ParityError(f"the LiteRT file does not hold layer {name!r}'s {kind} weights as torchshrink "
                                  "computed them (the converter re-quantized them differently); nothing was written")


class LiteRTRunner:
    """Runs a `.tflite` file in the ai-edge-litert Interpreter (CPU, XNNPACK) on torch tensors,
    quantizing int8 inputs and dequantizing int8 outputs with the tensors' own parameters."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        ai_edge_litert = require("ai_edge_litert.interpreter", extra=EXTRA, fmt="tflite")
        self.interp = ai_edge_litert.Interpreter(model_path=str(path), num_threads=threads or 1)
        self.interp.allocate_tensors()
        self.inputs = self.interp.get_input_details()
        self.outputs = self.interp.get_output_details()
        self.batch = int(self.inputs[0]["shape"][0])
        self._fixed = FixedBatchRunner(self.run_numpy, self.batch)

    def feeds(self, inputs: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, ...]:
        return tuple(self._encode(d, t.detach().cpu().numpy()) for d, t in zip(self.inputs, inputs))

    @staticmethod
    def _encode(detail: dict[str, Any], a: np.ndarray) -> np.ndarray:
        if detail["dtype"] == np.int8:
            scale, zero = detail["quantization"]
            return np.clip(np.round(a / scale) + zero, -128, 127).astype(np.int8)
        return a.astype(detail["dtype"], copy=False)

    def run_numpy(self, feeds: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        for d, a in zip(self.inputs, feeds):
            self.interp.set_tensor(d["index"], a if a.dtype == d["dtype"] else self._encode(d, a))
        self.interp.invoke()
        out = []
        for d in self.outputs:
            v = self.interp.get_tensor(d["index"])
            if d["dtype"] == np.int8:
                scale, zero = d["quantization"]
                v = (v.astype(np.float32) - zero) * scale
            out.append(np.asarray(v, dtype=np.float32))
        return out

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        return self._fixed(inputs)


def litert_target(path: str | Path, inputs: tuple[torch.Tensor, ...], *, threads: int | None,
                  label: str = "litert") -> Any:
    """A latency.Target timing one invoke of the file (inputs converted once, outside the timing)."""
    from torchshrink.export.latency import Target

    runner = LiteRTRunner(path, threads=threads)
    feeds = runner.feeds(inputs)
    return Target(label, "litert", int(inputs[0].shape[0]), lambda: runner.run_numpy(feeds))

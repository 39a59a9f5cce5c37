"""What the edge exporters (LiteRT, ExecuTorch) share.

Both start from a torch.export graph, and both lower quantization written the way PyTorch's
PT2E flow writes it: `quantized_decomposed.quantize_per_tensor` / `dequantize_per_tensor`
around activations and an int8 weight behind `dequantize_per_channel`. So our static int8
layers are rewritten into exactly that pattern, carrying *our* calibrated scales and zero
points and our integer weight codes: no second calibration, no re-quantization by the
runtime's tools.

- `edge_prepare`: an eval-mode copy of the model in which each compressed layer is either a
  PT2E Q/DQ form (static int8) or a plain float layer holding the exact values our layer
  computes with (dynamic int8, weight-only, float16, sparse), with the layer's kind recorded so
  the exporter can apply the runtime's own form for it (or refuse it, naming the layer).
- `FixedBatchRunner`: edge programs have static shapes; the parity check's batches are run
  through them in slices of the traced batch size.
- `require`: the lazy import of an optional runtime, with the extra to install.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from torchshrink.errors import ConfigError, UnsupportedModelError
from torchshrink.export import rules
from torchshrink.export.qdq import EXPORT_RULES, QDQConv2d, QDQLinear, QuantDequant, rule_for
from torchshrink.nn import params, select_layers, set_module

__all__ = ["require", "EdgePrepared", "edge_prepare", "PT2EQuantDequant", "PT2ELinear", "PT2EConv2d",
           "FixedBatchRunner", "layer_kinds"]


def require(module: str, *, extra: str, fmt: str) -> ModuleType:
    """Import an optional runtime package, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"format={fmt!r} needs the {module.split('.')[0]!r} package, which is not installed: "
                          f"pip install 'torchshrink[{extra}]'") from e


def _decomposed() -> Any:
    # Registers the quantized_decomposed ops (PT2E's Q/DQ vocabulary) with the dispatcher.
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    return torch.ops.quantized_decomposed


def _int8_grid(scale: float, zero: int, signed: bool) -> tuple[float, int]:
    """PT2E writes activations on int8; our uint8 grid (s, z) is the same grid as (s, z - 128)."""
    return float(scale), int(zero) if signed else int(zero) - 128


class PT2EQuantDequant(nn.Module):
    """quantize_per_tensor -> dequantize_per_tensor on an int8 grid."""

    def __init__(self, scale: float, zero_point: int) -> None:
        super().__init__()
        self.scale, self.zero_point = float(scale), int(zero_point)

    @classmethod
    def from_qdq(cls, q: Any) -> PT2EQuantDequant:
        s, z = _int8_grid(q.scale_value, int(q.zero_point), q.qmin < 0)
        return cls(s, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _decomposed()
        q = qd.quantize_per_tensor(x, self.scale, self.zero_point, -128, 127, torch.int8)
        return qd.dequantize_per_tensor(q, self.scale, self.zero_point, -128, 127, torch.int8)


class _PT2EWeights(nn.Module):
    """int8 weight codes (per output channel, symmetric) and the float bias of a static int8 layer.

    `fold_weights`: the weight enters the graph as the int8 constant behind dequantize_per_channel
    (what ExecuTorch's XNNPACK partitioner matches); otherwise as the float grid behind
    quantize_per_channel -> dequantize_per_channel (what the LiteRT converter folds into an int8
    tensor). Both carry the same codes and scales."""

    input_qdq: PT2EQuantDequant | None
    output_qdq: PT2EQuantDequant | None
    weight_q: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero: torch.Tensor

    def _init_weights(self, src: Any, fold_weights: bool, bias_shape: tuple[int, ...]) -> None:
        self.fold_weights = fold_weights
        wq = src.weight_q.to(torch.int8)
        if bool((src.weight_zero != 0).any()):
            raise UnsupportedModelError("PT2E static int8 needs symmetric weights (zero point 0)")
        self.qmin = -127 if int(wq.min()) >= -127 else -128
        self.register_buffer("weight_q", wq)
        self.register_buffer("weight_scale", src.weight_scale.float().clone())
        self.register_buffer("weight_zero", torch.zeros(wq.shape[0], dtype=torch.int64))
        bias: torch.Tensor | None = None
        if src.bias_q is not None and src.bias_scale is not None:
            bias = src.bias_q.to(torch.float32) * src.bias_scale
        elif src.bias_float is not None:
            bias = src.bias_float.detach().reshape(-1).float()
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.input_qdq = PT2EQuantDequant.from_qdq(src.input_qdq) if src.input_qdq is not None else None
        self.output_qdq = PT2EQuantDequant.from_qdq(src.output_qdq) if src.output_qdq is not None else None

    def dequantized_weight(self) -> torch.Tensor:
        qd = _decomposed()
        args = (self.weight_scale, self.weight_zero, 0, self.qmin, 127, torch.int8)
        if self.fold_weights:
            return qd.dequantize_per_channel(self.weight_q, *args)
        shape = (-1,) + (1,) * (self.weight_q.dim() - 1)
        grid = self.weight_q.to(torch.float32) * self.weight_scale.reshape(shape)
        return qd.dequantize_per_channel(qd.quantize_per_channel(grid, *args), *args)

    def _wrap(self, x: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.input_qdq is not None:
            x = self.input_qdq(x)
        y = op(x)
        return self.output_qdq(y) if self.output_qdq is not None else y


class PT2ELinear(_PT2EWeights):
    def __init__(self, src: Any, *, fold_weights: bool) -> None:
        super().__init__()
        self._init_weights(src, fold_weights, (-1,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._wrap(x, lambda v: F.linear(v, self.dequantized_weight(), self.bias))


class PT2EConv2d(_PT2EWeights):
    def __init__(self, src: Any, *, fold_weights: bool) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = src.stride, src.padding, src.dilation, src.groups
        self._init_weights(src, fold_weights, (1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._wrap(x, lambda v: F.conv2d(v, self.dequantized_weight(), self.bias, self.stride, self.padding,
                                                self.dilation, self.groups))


def _to_pt2e(module: nn.Module, fold_weights: bool) -> nn.Module:
    """The ONNX QDQ forms in `module` (the static int8 export rule's output) as PT2E forms."""
    if isinstance(module, QDQLinear):
        return PT2ELinear(module, fold_weights=fold_weights)
    if isinstance(module, QDQConv2d):
        return PT2EConv2d(module, fold_weights=fold_weights)
    if isinstance(module, QuantDequant):
        return PT2EQuantDequant.from_qdq(module)
    for name, child in list(module.named_children()):
        setattr(module, name, _to_pt2e(child, fold_weights))
    return module


def _onnx_only(module: nn.Module) -> str | None:
    """The first module left that only the ONNX exporter understands (custom symbolics)."""
    from torchshrink.export.packed import CodebookLayer, PackedWeightConv, PackedWeightLinear
    from torchshrink.export.qdq import DynamicInt8Linear

    for m in module.modules():
        if isinstance(m, (QDQLinear, QDQConv2d, QuantDequant, DynamicInt8Linear, PackedWeightLinear,
                          PackedWeightConv, CodebookLayer)):
            return type(m).__name__
    return None


def layer_kinds() -> dict[str, str]:
    """Our layer class name -> the compressed form it stands for (the capability table's rows)."""
    return {"StaticInt8Layer": "int8_static", "DynamicInt8Linear": "int8_dynamic",
            "WeightOnlyLayer": "weight_only", "CastLayer": "float16", "SparseLinear": "sparse"}


def _float_twin(m: Any) -> nn.Module:
    """A standard Linear/Conv holding exactly the values `m` computes with."""
    eff = m.ts_effective_weights()
    op = getattr(m, "op", None) or {"kind": "linear", "in": int(m.in_features), "out": int(m.out_features)}
    return rules._conv_like(op, eff["weight"].float(), eff["bias"].float() if "bias" in eff else None)


@dataclasses.dataclass
class EdgePrepared:
    module: nn.Module
    kinds: dict[str, str]  # layer name -> its compressed form (see layer_kinds), compressed layers only
    weights: dict[str, torch.Tensor]  # layer name -> the weight our layer computes with (torch layout)
    bits: dict[str, int]  # weight-only layers: layer name -> bits
    groups: dict[str, int | None]  # weight-only layers: group size (None: per channel)
    quantized: bool  # integer activations somewhere (the quantized parity criteria apply)
    swapped: dict[str, str]  # layer name -> the form it was exported as


def edge_prepare(model: nn.Module, *, fold_weights: bool) -> EdgePrepared:
    """An eval-mode copy of `model` for torch.export: parametrizations baked, static int8 layers as
    PT2E Q/DQ forms with our grids, other compressed layers as float twins (see the module doc)."""
    rules.load()
    m = copy.deepcopy(model).eval()
    params.materialize(m)
    if any(t.dtype in (torch.float16, torch.bfloat16) for t in [*m.parameters(), *m.buffers()]):
        m = m.float()  # the exporters store half weights themselves where the format can
    kinds: dict[str, str] = {}
    weights: dict[str, torch.Tensor] = {}
    bits: dict[str, int] = {}
    groups: dict[str, int | None] = {}
    swapped: dict[str, str] = {}
    names = layer_kinds()
    root_rule = rule_for(m)
    if root_rule is not None:
        raise UnsupportedModelError(f"{type(m).__name__} is itself a quantized layer; wrap it in a model "
                                    "(nn.Sequential(layer)) to export it")
    quantized = False
    from torchshrink.quant.cast import CastLayer  # no export rule: ONNX stores half weights itself

    mod: Any
    for name, mod in select_layers(m, types=(*EXPORT_RULES, CastLayer)):
        kind = names.get(type(mod).__name__)
        rule = rule_for(mod)
        if rule is None and kind is None:
            continue
        if kind == "int8_static" and getattr(mod, "act_bits", 8) == 8:
            assert rule is not None
            new = _to_pt2e(rule.convert(mod), fold_weights)
            if getattr(mod, "float_output", False):
                # The edge delegates only lower fully quantized layers; a float output is the
                # float layer on the int8 weight grid, fed the quantized input.
                assert isinstance(new, _PT2EWeights) and new.input_qdq is not None
                new = nn.Sequential(new.input_qdq, _float_twin(mod))
            quantized = True
        elif kind is not None and kind != "int8_static":
            new = _float_twin(mod)
            if kind == "weight_only":
                bits[name] = int(mod.bits)
                groups[name] = mod.group_size if mod.granularity == "group" else None
        else:
            assert rule is not None
            new = _to_pt2e(rule.convert(mod), fold_weights)
            left = _onnx_only(new)
            if left is not None:
                raise UnsupportedModelError(f"layer {name!r} ({type(mod).__name__}) has no edge-runtime form "
                                            f"(its export form {left} is ONNX-only); export it with format='onnx'")
            quantized |= rule.quantized
            kind = kind or type(mod).__name__
        weights[name] = mod.ts_effective_weights()["weight"].detach().float() \
            if hasattr(mod, "ts_effective_weights") else getattr(new, "weight", torch.zeros(0)).detach().float()
        kinds[name] = kind
        swapped[name] = type(new).__name__
        set_module(m, name, new.eval())
    return EdgePrepared(m.eval(), kinds, weights, bits, groups, quantized, swapped)


class FixedBatchRunner:
    """Runs a static-shape program (traced at batch `batch`) on inputs of any batch size, slice by
    slice; the last slice is padded with copies of its first row and the padding dropped."""

    def __init__(self, run: Callable[[tuple[np.ndarray, ...]], list[np.ndarray]], batch: int) -> None:
        self.run, self.batch = run, batch

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        arrays = tuple(t.detach().cpu().numpy() for t in inputs)
        n = arrays[0].shape[0]
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, self.batch):
            chunk = tuple(a[start:start + self.batch] for a in arrays)
            k = chunk[0].shape[0]
            if k < self.batch:
                chunk = tuple(np.concatenate([c, np.repeat(c[:1], self.batch - k, axis=0)]) for c in chunk)
            parts.append([np.asarray(o)[:k] for o in self.run(chunk)])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _rebatch(batches: list[Any], size: int) -> list[Any]:
    out = []
    for xs, y in batches:
        for start in range(0, int(xs[0].shape[0]), size):
            out.append((tuple(t[start:start + size] for t in xs), None if y is None else y[start:start + size]))
    return out


def export_edge(fmt: str, model: nn.Module, inputs: tuple[torch.Tensor, ...], tmp: str, *, check: bool,
                check_data: Any, rows: int, quantized_rows: int) -> tuple[Any, str, str, dict[str, str]]:
    """Write `tmp` in an edge format and run the parity check in its runtime:
    (parity report or None, exporter name, form, swapped layers)."""
    from torchshrink.export.check import ParityError, compare, float_tolerance, sample_batches
    from torchshrink.export.prepare import prepare

    runner: Callable[[tuple[torch.Tensor, ...]], list[np.ndarray]]
    if fmt == "tflite":
        from torchshrink.export.litert import LiteRTRunner, tflite_form, write_tflite

        prep = write_tflite(model, inputs, tmp)
        form, runtime, exporter = tflite_form(prep), "litert", "litert-torch"
        make_runner: Callable[[], Any] = lambda: LiteRTRunner(tmp, threads=1)  # noqa: E731
    elif fmt == "pte":
        from torchshrink.export.executorch import ExecuTorchRunner, write_pte

        prep = write_pte(model, inputs, tmp)
        form = "int8_static" if prep.quantized else "float32"
        runtime, exporter = "executorch", "executorch (XNNPACK)"
        make_runner = lambda: ExecuTorchRunner(tmp)  # noqa: E731
    else:
        raise ConfigError(f"not an edge format: {fmt!r}")
    if not check:
        return None, exporter, form, prep.swapped
    reference = prepare(model, swap=False, upcast=False).module  # the model as the user runs it
    runner = make_runner()
    batches = sample_batches(inputs, data=check_data, rows=quantized_rows if form != "float32" else rows)
    # The file runs at its traced batch size; so does the reference, since a dynamic int8 layer's
    # activation grid depends on the whole batch it sees.
    batches = _rebatch(batches, int(inputs[0].shape[0]))
    # Weight-only files compute in float on our exact weights, so the float bound applies; int8
    # activations round differently per runtime, so those forms are checked by top-1 agreement.
    kind: Literal["float", "quantized"] = "quantized" if form.startswith("int8") else "float"
    # PyTorch computes a Cast model in half precision, so the reference is only that accurate.
    tol = float_tolerance(torch.float16) if form == "float16" else None
    report = compare(reference, runner, batches, kind=kind, runtime=runtime, tolerance=tol)
    if not report.passed:
        raise ParityError(f"exported {fmt} file of {type(model).__name__} does not match the PyTorch model: "
                          f"{report.summary()}. Nothing was written")
    return report, exporter, form, prep.swapped

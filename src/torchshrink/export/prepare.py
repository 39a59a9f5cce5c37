"""Turning a compressed model into a plain, exportable copy (the user's model is never touched).

1. deep copy, eval mode;
2. bake parametrizations (masks, codebooks, fake quant) into plain weights;
3. half-precision weights are upcast to float32 for tracing; the ONNX writer stores them back
   as float16 initializers (`Prepared.half` tells it to);
4. swap modules that have an export rule (qdq.EXPORT_RULES, filled by rules.py) for their
   export-time forms.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from torchshrink.export import rules
from torchshrink.export.qdq import EXPORT_RULES, rule_for
from torchshrink.nn import params, select_layers, set_module

__all__ = ["Prepared", "prepare", "is_half", "cast_inputs"]

_HALF = (torch.float16, torch.bfloat16)


@dataclasses.dataclass
class Prepared:
    module: nn.Module
    quantized: bool  # integer activations somewhere: use the quantized parity criteria
    half: torch.dtype | None  # the model's half dtype, if its weights were half precision
    all_half: bool  # no float32 tensors at all (a model.half() model)
    swapped: dict[str, str]  # layer name -> export form, for the report


def _model_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers that say what precision the model computes in: not those of
    modules whose half-precision tensors are a kernel's operand layout (`half_operands`, the
    int4 kernel's bf16 scales), which export in float32 by their own rule."""
    return [t for mod in model.modules() if not getattr(mod, "half_operands", False)
            for t in [*mod.parameters(recurse=False), *mod.buffers(recurse=False)]]


def is_half(model: nn.Module) -> torch.dtype | None:
    for t in _model_tensors(model):
        if t.dtype in _HALF:
            return t.dtype
    return None


def cast_inputs(inputs: tuple[torch.Tensor, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)


def prepare(model: nn.Module, *, swap: bool = True, upcast: bool = True) -> Prepared:
    """An eval-mode copy of `model` with parametrizations baked in, half-precision tensors in
    float32 (when `upcast`) and quantized layers in their export forms (when `swap`)."""
    rules.load()
    m = copy.deepcopy(model).eval()
    packed = _pack_codebooks(m) if swap else {}
    params.materialize(m)
    half = is_half(m)
    all_half = half is not None and all(t.dtype in _HALF for t in _model_tensors(m) if t.is_floating_point())
    if half is not None and upcast:
        m = m.float()
    quantized = False
    swapped: dict[str, str] = dict(packed)
    if swap and EXPORT_RULES:
        done: list[str] = []
        root_rule = rule_for(m)
        if root_rule is not None:
            m = root_rule.convert(m).eval()
            return Prepared(m, root_rule.quantized, half, all_half, {"": type(m).__name__})
        for name, mod in select_layers(m, types=tuple(EXPORT_RULES)):
            if any(name.startswith(d + ".") for d in done):
                continue  # inside a module already swapped as a whole
            rule = rule_for(mod)
            if rule is None:
                continue
            new = rule.convert(mod)
            set_module(m, name, new.eval())
            done.append(name)
            swapped[name] = type(new).__name__
            quantized |= rule.quantized
    return Prepared(m, quantized, half, all_half, swapped)


def call(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    with torch.no_grad():
        return model(*inputs)


def _pack_codebooks(model: nn.Module) -> dict[str, str]:
    """Layers whose weight ends in a k-means Codebook keep it as packed indices plus the table
    (a Deep Compression LeNet-300-100 file is several times smaller than with float weights).
    Only when the codebook is the last parametrization (anything after it changes the values)
    and the layer is a plain Linear/Conv (no other tensor is parametrized)."""
    from torchshrink.export.packed import CodebookLayer, CodebookWeight

    try:
        from torchshrink.cluster.codebook import Codebook
        from torchshrink.cluster.product_codebook import ProductCodebook
        from torchshrink.export.product_codebook import ProductCodebookWeight
    except ImportError:
        return {}
    swapped: dict[str, str] = {}
    for name, mod in select_layers(model):
        chain = params.chain(mod)
        # a shared bias is read as its (float) value by CodebookLayer
        others = [t for t in getattr(mod, "parametrizations", {})
                  if t != "weight" and not (t == "bias" and isinstance(params.chain(mod, "bias")[-1], Codebook))]
        if not chain or not isinstance(chain[-1], (Codebook, ProductCodebook)) or others:
            continue
        cb = chain[-1]
        if isinstance(cb, ProductCodebook):
            set_module(model, name, CodebookLayer(mod, ProductCodebookWeight(cb)).eval())
            swapped[name] = "CodebookLayer (product)"
            continue
        table = torch.cat([cb.codebook.detach().float(), cb.codebook.detach().new_zeros(1)])
        set_module(model, name, CodebookLayer(mod, CodebookWeight(cb.indices, table)).eval())
        swapped[name] = "CodebookLayer"
    return swapped

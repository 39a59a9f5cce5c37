"""Per-layer diagnostics: which quantized layer loses the signal.

`quant_diagnostics(float_model, quantized_model, batches)` runs both models on the same
inputs and, for every quantized layer, reports the weight SQNR (float weight vs the weight the
layer really computes with), the output SQNR and the relative output error (the layer's
output in the quantized model vs the same layer in the float model, so errors accumulated
from earlier layers show up where they surface). Exclude the worst layers with `ignore=`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from torchshrink.batches import call_model, logits_of
from torchshrink.nn import params
from torchshrink.quant.cast import CastLayer
from torchshrink.quant.dynamic import DynamicInt8Linear
from torchshrink.quant.fake import FakeQuant, sqnr_db
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.qat import ActQuantized
from torchshrink.quant.static import StaticInt8Layer
from torchshrink.quant.weight_only import WeightOnlyLayer

__all__ = ["LayerDiagnostic", "QuantDiagnostics", "quant_diagnostics"]

_QUANT_MODULES = (StaticInt8Layer, DynamicInt8Linear, WeightOnlyLayer, CastLayer, ActQuantized)


@dataclasses.dataclass(frozen=True)
class LayerDiagnostic:
    name: str
    scheme: str
    execution: str
    weight_sqnr_db: float
    output_sqnr_db: float
    output_rel_error: float


@dataclasses.dataclass(frozen=True)
class QuantDiagnostics:
    layers: list[LayerDiagnostic]
    model_output_sqnr_db: float

    def worst(self, n: int = 3) -> list[LayerDiagnostic]:
        """The n layers with the lowest output SQNR (candidates for `ignore=`)."""
        return sorted(self.layers, key=lambda r: r.output_sqnr_db)[:n]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self.layers]

    def __str__(self) -> str:
        head = ("layer", "scheme", "weight SQNR dB", "output SQNR dB", "rel. out err", "execution")
        rows = [(r.name, r.scheme, f"{r.weight_sqnr_db:.1f}", f"{r.output_sqnr_db:.1f}",
                 f"{r.output_rel_error:.4f}", r.execution) for r in self.layers]
        rows.append(("(model output)", "", "", f"{self.model_output_sqnr_db:.1f}", "", ""))
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in (head, *rows)]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _scheme(m: nn.Module) -> str:
    if isinstance(m, WeightOnlyLayer):
        g = f"/g{m.group_size}" if m.group_size else f"/{m.granularity}"
        return f"w{m.bits}{g}"
    if isinstance(m, DynamicInt8Linear):
        return "w8a8 dynamic"
    if isinstance(m, StaticInt8Layer):
        return f"w8a{m.act_bits} static"
    if isinstance(m, CastLayer):
        return m.dtype_name
    if isinstance(m, ActQuantized):
        inner = _scheme(m.layer)
        return f"{inner}+a{m.bits}" if inner else f"a{m.bits}"
    fq = params.find(m, FakeQuant) if params.is_parametrized(m) else None
    return f"w{fq.bits} fake" if fq is not None else ""


def _effective_weight(m: nn.Module) -> torch.Tensor | None:
    if isinstance(m, ActQuantized):
        return _effective_weight(m.layer)
    fn = getattr(m, "ts_effective_weights", None)
    if fn is not None:
        return fn()["weight"]
    w = getattr(m, "weight", None)
    return w.detach() if isinstance(w, torch.Tensor) else None


def _quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, _QUANT_MODULES) or (params.is_parametrized(m) and params.has(m, FakeQuant)):
            out.append((name, m))
            inside.append(name)
    return out


@torch.no_grad()
def quant_diagnostics(reference: nn.Module, quantized: nn.Module, batches: Iterable[Any], *,
                      limit: int = 2) -> QuantDiagnostics:
    """Compare `quantized` with the float `reference` (keep a copy before quantizing:
    `ref = copy.deepcopy(model)`) layer by layer over up to `limit` batches."""
    layers = _quantized_layers(quantized)
    q_mods = dict(quantized.named_modules())
    if any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and isinstance(q_mods.get(n), nn.Identity)
           for n, m in reference.named_modules()):
        # The quantizer folded BatchNorm: compare against the folded float model, whose conv
        # weights and outputs are the ones the quantized layers approximate.
        reference = copy.deepcopy(reference)
        fold_batchnorm(reference)
    ref_mods = dict(reference.named_modules())
    outs: dict[str, dict[str, list[torch.Tensor]]] = {"ref": {}, "q": {}}
    handles = []
    for name, m in layers:
        if name not in ref_mods:
            continue
        for key, mod in (("q", m), ("ref", ref_mods[name])):
            def hook(_m: nn.Module, _a: Any, out: torch.Tensor, key: str = key, name: str = name) -> None:
                outs[key].setdefault(name, []).append(out.detach().float())
            handles.append(mod.register_forward_hook(hook))
    final_ref, final_q = [], []
    modes = reference.training, quantized.training
    reference.eval()
    quantized.eval()
    try:
        for i, batch in enumerate(batches):
            if i >= limit:
                break
            final_ref.append(logits_of(call_model(reference, batch)).float())
            final_q.append(logits_of(call_model(quantized, batch)).float())
    finally:
        for h in handles:
            h.remove()
        reference.train(modes[0])
        quantized.train(modes[1])
    rows = []
    for name, m in layers:
        if name not in outs["ref"]:
            continue
        ref_out = torch.cat([t.reshape(-1) for t in outs["ref"][name]])
        q_out = torch.cat([t.reshape(-1) for t in outs["q"][name]])
        w_ref = _effective_weight(ref_mods[name])
        w_q = _effective_weight(m)
        w_sqnr = sqnr_db(w_ref, w_q) if w_ref is not None and w_q is not None else float("nan")
        rel = float((q_out - ref_out).norm() / ref_out.norm().clamp_min(1e-12))
        execution = str(getattr(m, "execution", "") or getattr(params.find(m, FakeQuant), "execution", ""))
        rows.append(LayerDiagnostic(name, _scheme(m), execution, w_sqnr, sqnr_db(ref_out, q_out), rel))
    model_sqnr = sqnr_db(torch.cat([t.reshape(-1) for t in final_ref]),
                         torch.cat([t.reshape(-1) for t in final_q])) if final_ref else float("nan")
    return QuantDiagnostics(rows, model_sqnr)

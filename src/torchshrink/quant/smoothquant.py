"""SmoothQuant (Xiao et al., ICML 2023): W8A8 for transformers, whose activations carry a few
outlier channels that ruin an int8 activation grid. Per input channel j of the layers reading
one tensor, s_j = max|X_j|^alpha / max|W_j|^(1 - alpha); the op producing the tensor (the
LayerNorm/RMSNorm before q/k/v or before the MLP, or a Linear) is edited to output X / s, and
the layers' weight columns are multiplied by s: the same function in float, with the outliers'
range moved into the weights, where per-channel int8 absorbs it. The layers are then int8
weights and int8 activations (`DynamicInt8`, one scale per token by default).

Activation maxima come from one forward pass of the float model per calibration batch, as in
the reference implementation. A fold is kept only if the model's output on a calibration
batch is unchanged by it (a norm whose output also feeds a residual, as in post-LN BERT,
would change the function; it is left alone and said so). Layers with no foldable producer
(o_proj reads the attention output, down_proj an elementwise product) are quantized without
smoothing, as in the paper, and recorded in `ts.coverage`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from torchshrink.batches import call_model, iter_calibration
from torchshrink.config import Config, check_choice
from torchshrink.errors import ConfigError
from torchshrink.nn import coverage, get_module, params, select_layers
from torchshrink.nn.calib import InputStats, collect_stats
from torchshrink.nn.kinds import tied_groups
from torchshrink.nn.scales import fold_output_scale
from torchshrink.quant.dynamic import DynamicInt8, apply_dynamic_int8
from torchshrink.registry import Context, register

__all__ = ["SmoothQuant", "smoothing_scale"]


def smoothing_scale(act_max: torch.Tensor, weights: Iterable[torch.Tensor], alpha: float) -> torch.Tensor:
    """s = max|X_j|^alpha / max|W_j|^(1-alpha) over the input columns j of `weights` (each
    (out, in)); channels that never fired, or whose weights are all zero, keep s = 1."""
    w_max = torch.stack([w.detach().float().abs().amax(0) for w in weights]).amax(0)
    a = act_max.float()
    s = a.pow(alpha) / w_max.pow(1 - alpha)
    ok = (a > 0) & (w_max > 0) & torch.isfinite(s)
    return torch.where(ok, s.clamp_min(1e-5), torch.ones_like(s))


def _output(model: nn.Module, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        y = call_model(model, batch)
    y = getattr(y, "logits", y)
    if isinstance(y, (tuple, list)):
        y = y[0]
    if isinstance(y, dict):
        y = next(iter(y.values()))
    if not isinstance(y, torch.Tensor):
        raise ConfigError(f"SmoothQuant checks each fold on the model's output, but {type(model).__name__} "
                          f"returned {type(y).__name__}; pass a model returning a tensor (or .logits)")
    return y.detach().float()


def _foldable(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(w, nn.Parameter) and not list(m.children()) and (w.dim() == 1 or isinstance(m, nn.Linear))


def _smooth(model: nn.Module, layers: list[tuple[str, nn.Module]], calibration: Iterable[Any],
            config: SmoothQuant) -> int:
    """Fold the smoothing scales in (see the module docstring); the number of layer groups
    smoothed."""
    batches = list(iter_calibration(calibration, config.calibration_batches))
    if not batches:
        raise ConfigError("SmoothQuant: the calibration loader yielded no batches; pass calibration= a few "
                          "dozen batches of the inputs the model will see")
    watch = [(n, m) for n, m in model.named_modules() if n and _foldable(m)]
    runs = [lambda b=b: call_model(model, b) for b in batches]
    stats, _ = collect_stats(runs, layers, hessian=False, stop_at_new_input=False, watch=watch)
    by_name = dict(layers)
    tied = {n for g in tied_groups(list(model.named_modules())) for n in g}  # other users read that weight
    groups: dict[int, list[str]] = {}
    for name, s in stats.items():
        groups.setdefault(id(s), []).append(name)
    reference = _output(model, batches[0])
    tol = 1e-4 * float(reference.abs().max().clamp_min(1e-6))
    smoothed = 0
    for names in groups.values():
        st: InputStats = stats[names[0]]
        why = _cannot_smooth(st, names, by_name, tied)
        if why is not None:
            for n in names:
                coverage.note(model, n, f"SmoothQuant: not smoothed ({why}); int8 as is")
            continue
        assert st.producer is not None and st.abs_max is not None
        producer = get_module(model, st.producer)
        weights: list[torch.Tensor] = [typing.cast(nn.Linear, by_name[n]).weight for n in names]
        scale = smoothing_scale(st.abs_max, weights, config.alpha)
        saved = [p.detach().clone() for p in producer.parameters(recurse=False)]
        if not fold_output_scale(producer, scale):
            for n in names:
                coverage.note(model, n, f"SmoothQuant: not smoothed ({st.producer} cannot take a per-channel "
                                        "scale); int8 as is")
            continue
        with torch.no_grad():
            for w in weights:
                w.mul_(scale.to(w.dtype))
        if float((_output(model, batches[0]) - reference).abs().max()) > tol:
            # the producer's output reaches more than these layers (a residual): undo
            with torch.no_grad():
                for w in weights:
                    w.div_(scale.to(w.dtype))
                for p, old in zip(producer.parameters(recurse=False), saved):
                    p.copy_(old)
            for n in names:
                coverage.note(model, n, f"SmoothQuant: not smoothed ({st.producer}'s output also feeds other "
                                        "ops, so folding there would change the model); int8 as is")
            continue
        coverage.note(model, st.producer, f"SmoothQuant scale of {', '.join(names)} folded into it")
        smoothed += 1
    return smoothed


def _cannot_smooth(st: InputStats, names: list[str], by_name: dict[str, nn.Module], tied: set[str]) -> str | None:
    if st.producer is None:
        return "no single op produces its input to fold a scale into"
    if st.producer in by_name:
        return f"its input comes from {st.producer}, which is quantized too"
    if any(params.chain(by_name[n]) for n in names):
        return "its weight is parametrized"
    if tied.intersection(names):
        return "its weight is tied to another layer"
    return None


def apply_smoothquant(model: nn.Module, config: SmoothQuant, ctx: Context) -> nn.Module:
    if ctx.calibration is None:
        raise ConfigError("SmoothQuant needs calibration data for each layer's activation range: pass "
                          "calibration=loader (a few dozen batches of model inputs) to ts.quantize")
    layers = select_layers(model, types=(nn.Linear,), targets=config.targets, ignore=config.ignore)
    was = model.training
    model.eval()
    try:
        _smooth(model, layers, ctx.calibration, config)
    finally:
        model.train(was)
    return apply_dynamic_int8(model, DynamicInt8(targets=config.targets, ignore=config.ignore,
                                                 activations=config.activations, reduce_range=config.reduce_range),
                              ctx)


@register(family="quant", handler=apply_smoothquant)
@dataclasses.dataclass(frozen=True, kw_only=True)
class SmoothQuant(Config):
    """W8A8 with SmoothQuant's activation smoothing (see the module docstring). Needs
    calibration data (`calibration_batches` of it, one float forward each).

    alpha: how much of the activation range moves into the weights (0.5 in the paper; higher
        for models with stronger outliers).
    activations: "token" (default): one int8 scale per token (row), as LLM W8A8 schemes run;
        "tensor": one uint8 scale per call, fbgemm's kernel.
    reduce_range: as `DynamicInt8` (7-bit activations where the CPU has no VNNI; None detects).
    """

    alpha: float = 0.5
    activations: str = "token"
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    calibration_batches: int | None = 32
    reduce_range: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("SmoothQuant.activations", self.activations, ("tensor", "token"))
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"SmoothQuant.alpha must be in [0, 1], got {self.alpha}; the paper uses 0.5")
        if self.calibration_batches is not None and self.calibration_batches < 1:
            raise ConfigError(f"SmoothQuant.calibration_batches must be >= 1 or None, got {self.calibration_batches}")

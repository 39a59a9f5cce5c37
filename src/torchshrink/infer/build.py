"""`ts.for_inference`: the fastest (or smallest-in-memory) form of a compressed model on this
machine, chosen per layer by timing the candidate forms on the inputs each layer really sees
at the example's batch size.

Per layer kind:
- a Linear with a mask/codebook/fake-quant chain (or none): dense with the effective weight
  baked in, compact CSR with fp32 values where it has zeros, compact CSR with uint8 codebook
  indices where it shares values, and torch's own CSR (`prune.sparse.SparseLinear`);
- a `WeightOnlyLayer` (Linear, convolution or embedding): PyTorch's int4 kernel where
  eligible, the weight decoded once to dense fp32, or the packed codes decoded per call (the
  smallest);
- layers that compute in lower precision (DynamicInt8, StaticInt8, fp16/bf16 casts): kept, or
  decoded once to fp32 where that is measured faster (small layers at batch 1 spend most of an
  int8 kernel's time quantizing activations; CPUs without fp16 arithmetic emulate it);
- convolutions and other parametrized modules: the chain baked into a plain weight;
- factor pairs are already their inference form and are kept.
`prefer="speed"` takes the fastest candidate; `prefer="memory"` the one holding the fewest
bytes (ties: the fastest). Each decision, with its timings and bytes, is recorded on the
returned model as `torchshrink_inference` and in each chosen module's `execution` label.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from torchshrink.cluster.codebook import Codebook
from torchshrink.errors import ConfigError, DataError
from torchshrink.infer import kernels
from torchshrink.infer.forms import MAX_SPARSE_INPUTS, CompactSparseLinear, Int4Linear
from torchshrink.measure.resident import resident_bytes
from torchshrink.measure.weights import execution_label
from torchshrink.nn import params, set_module
from torchshrink.prune.sparse import SparseLinear, time_call
from torchshrink.quant.cast import CastLayer
from torchshrink.quant.dynamic import DynamicInt8Linear
from torchshrink.quant.layers import DecodedOp
from torchshrink.quant.static import StaticInt8Layer
from torchshrink.quant.weight_only import WeightOnlyLayer, int4_kernel_ok

__all__ = ["for_inference", "Timer", "MIN_SPARSITY"]

Timer = Callable[[dict[str, Callable[[], Any]]], dict[str, float]]
"""Seconds per call for each named candidate (injectable, for tests and custom protocols)."""

MIN_SPARSITY = 0.5  # below this a CSR form holds more bytes than dense and is never faster


def _default_timer(fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
    return time_call(fns, rounds=5, inner=3)


def _layer_inputs(model: nn.Module, example: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """The first positional input each named module receives on `example`."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_m: nn.Module, args: tuple[Any, ...], *, _name: str = name) -> None:
            if _name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[_name] = args[0].detach()
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            if isinstance(example, dict):
                model(**example)
            elif isinstance(example, (tuple, list)):
                model(*example)
            else:
                model(example)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise DataError(f"for_inference: {type(model).__name__} failed on the example input: {e}; pass "
                        "example= one batch the model accepts, at the batch size you will serve") from e
    finally:
        for h in handles:
            h.remove()
    return seen


def _dense_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin.requires_grad_(False)


def _bias(m: nn.Module) -> torch.Tensor | None:
    b = getattr(m, "bias", None)
    return None if b is None else b.detach().float()


def _linear_candidates(m: nn.Linear) -> dict[str, nn.Module]:
    w = m.weight.detach().float()
    b = _bias(m)
    out: dict[str, nn.Module] = {"dense": _dense_linear(w, b)}
    sparsity = float((w == 0).float().mean())
    if sparsity >= MIN_SPARSITY:
        if m.in_features <= MAX_SPARSE_INPUTS:
            out["compact CSR"] = CompactSparseLinear(w, b)
            cb = params.find(m, Codebook)
            if cb is not None and cb.k <= kernels.MAX_TABLE and len(params.chain(m)) <= 2:
                out["compact CSR + codebook"] = CompactSparseLinear(w, b, codebook=(cb.codebook.detach(), cb.indices))
        plain = _dense_linear(w, b)
        out["torch CSR"] = SparseLinear.from_linear(plain)
    return out


def _int4_form(q: WeightOnlyLayer) -> Int4Linear:
    packed, sz = q._int4_operands()
    n, k = q.shape
    return Int4Linear(packed, sz, in_features=k, out_features=n, group_size=int(q.group_size or k),
                      bias=q.bias, col_scale=q.col_scale)


def _decoded(op: dict[str, Any], weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    return _dense_linear(weight, bias) if op["kind"] == "linear" else DecodedOp(op, weight, bias)


def _weight_only_candidates(q: WeightOnlyLayer) -> dict[str, nn.Module]:
    q.cpu_kernel = False  # this candidate is the packed codes alone; the int4 kernel is its own form
    out: dict[str, nn.Module] = {"packed, decoded per call": q,
                                 "dense (decoded once)": _decoded(q.op, q.dequantized_weight(), _bias(q))}
    if int4_kernel_ok(q):
        out["int4 kernel"] = _int4_form(q)
    return out


LOSSY_COMPUTE = (DynamicInt8Linear, StaticInt8Layer, CastLayer)
"""Layers whose arithmetic rounds (int8 activations, fp16/bf16 products): decoded to fp32 they
compute closer to the float model, not bit-equal to themselves."""


def _lossy_compute_candidates(q: nn.Module) -> dict[str, nn.Module]:
    # Decoded to fp32 an int8 layer skips the per-call activation quantization: at small sizes
    # that overhead is most of the kernel's time. A cast layer skips emulated fp16 arithmetic.
    w = q.ts_effective_weights()  # type: ignore[operator]
    op = getattr(q, "op", None) or {"kind": "linear"}
    kept = "int8 kernel" if isinstance(q, DynamicInt8Linear) else execution_label(q)
    return {kept: q, "dense (decoded once)": _decoded(op, w["weight"].float(), w.get("bias"))}


def _call(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    return functools.partial(module, x)


def _choose(name: str, candidates: dict[str, nn.Module], x: torch.Tensor, prefer: str,
            timer: Timer) -> tuple[str, dict[str, Any]]:
    sizes = {k: resident_bytes(c) for k, c in candidates.items()}
    if len(candidates) == 1:
        (only,) = candidates
        return only, {"chosen": only, "reason": "only form", "bytes": sizes}
    with torch.no_grad():
        times = timer({k: _call(c.eval(), x) for k, c in candidates.items()})
    if prefer == "speed":
        chosen = min(candidates, key=lambda k: (times[k], sizes[k]))
        reason = "fastest measured"
    else:
        chosen = min(candidates, key=lambda k: (sizes[k], times[k]))
        reason = "fewest bytes"
    return chosen, {"chosen": chosen, "reason": reason, "bytes": sizes,
                    "times_ms": {k: 1e3 * v for k, v in times.items()}, "batch": int(x.reshape(-1, x.shape[-1]).shape[0])}


def _label(record: dict[str, Any]) -> str:
    times = record.get("times_ms")
    if not times:
        return f"{record['chosen']} ({record['reason']})"
    dense = times.get("dense", times.get("dense (decoded once)"))
    chosen = times[record["chosen"]]
    vs = f", {dense / chosen:.2f}x dense" if dense else ""
    return f"{record['chosen']}: {record['reason']} at batch {record['batch']} ({chosen:.3f} ms{vs})"


def for_inference(model: nn.Module, *, example: Any, prefer: Literal["speed", "memory"] = "speed",
                  timer: Timer | None = None, decode_int8: bool = True) -> nn.Module:
    """A copy of `model` in eval mode that computes the same function in the fastest
    (`prefer="speed"`) or smallest-in-memory (`prefer="memory"`) form this machine offers,
    chosen per layer by measurement on the layer's inputs at `example`'s batch size.

    The result holds no parametrizations and is for inference only (no gradients). Tolerances:
    dense and CSR forms are exact up to float summation order; the int4 kernel rounds
    activations and scales to bfloat16 (about 1e-2 relative). A DynamicInt8/StaticInt8 or
    fp16/bf16 layer decoded to fp32 (where measured faster, `decode_int8=True`) drops the
    activation or product rounding, so it differs from the low-precision output by that rounding
    (and is closer to the float model); `decode_int8=False` keeps those layers as they compute.
    """
    if prefer not in ("speed", "memory"):
        raise ConfigError(f"prefer must be 'speed' or 'memory', got {prefer!r}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"for_inference expects an nn.Module, got {type(model).__name__}")
    timer = timer or _default_timer
    m = copy.deepcopy(model).eval()
    names = [n for n, mod in m.named_modules()
             if n and ".parametrizations." not in f"{n}." and (isinstance(mod, (nn.Linear, WeightOnlyLayer)) or params.is_parametrized(mod)
                       or getattr(type(mod), "execution", None) is not None)]
    inputs = _layer_inputs(m, example, names)
    records: dict[str, dict[str, Any]] = {}
    for name in names:
        mod = m.get_submodule(name)
        x = inputs.get(name)
        if isinstance(mod, nn.Linear) and type(mod).__name__.removeprefix("Parametrized") == "Linear":
            if x is None:
                cands: dict[str, nn.Module] = {"dense": _dense_linear(mod.weight.detach().float(), _bias(mod))}
            else:
                cands = _linear_candidates(mod)
        elif isinstance(mod, WeightOnlyLayer):
            cands = _weight_only_candidates(mod) if x is not None else {"packed, decoded per call": mod}
        elif isinstance(mod, LOSSY_COMPUTE) and x is not None and prefer == "speed" and decode_int8:
            cands = _lossy_compute_candidates(mod)
        else:
            if getattr(type(mod), "execution", None) is not None:
                records[name] = {"chosen": "kept", "reason": execution_label(mod)}
            continue
        chosen, record = _choose(name, cands, x if x is not None else torch.empty(0), prefer, timer)
        new = cands[chosen]
        new.eval()
        label = _label(record)
        record["execution"] = label
        object.__setattr__(new, "inference_choice", label)
        records[name] = record
        set_module(m, name, new)
    params.materialize(m)  # convolutions, embeddings: bake any chain left into plain weights
    m.requires_grad_(False)
    object.__setattr__(m, "torchshrink_inference", records)
    object.__setattr__(m, "torchshrink_inference_kernel", kernels.available())
    return m

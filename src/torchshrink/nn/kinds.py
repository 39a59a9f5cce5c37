"""The one table of layer kinds every method sees layers through.

Native kinds (Linear, Conv1d/2d, Embedding) are read and replaced as they are. Foreign kinds
hold their weight matrices in a form no Linear-based method can see (transformers' Conv1D
stores (in, out); MultiheadAttention packs q/k/v into one parameter and reads
`out_proj.weight` directly; LSTM/GRU keep raw gate parameters for a fused kernel). Their entry
converts them to an equivalent module made of native kinds, computing the same function, so
a new kind is one entry here, not an edit in every family. `normalize` applies the
conversions and says what it converted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from torchshrink.nn.attention import split_attention
from torchshrink.nn.recurrent import split_rnn
from torchshrink.nn.surgery import set_module

__all__ = ["LayerKind", "KINDS", "kind_of", "normalize", "weight_matrices", "is_hf_conv1d", "conv1d_to_linear",
           "tied_groups"]


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """name: how reports call it; detect: whether a module is of this kind; matrices: the
    names of its weight matrices; convert: (layer name, module) -> an equivalent module of
    native kinds, or None for a native kind."""

    name: str
    detect: Callable[[nn.Module], bool]
    matrices: Callable[[nn.Module], tuple[str, ...]]
    convert: Callable[[str, nn.Module], nn.Module] | None = None


def is_hf_conv1d(m: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D, detected by name so transformers stays optional."""
    cls = type(m)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def conv1d_to_linear(name: str, m: nn.Module) -> nn.Linear:
    """The nn.Linear computing what a transformers Conv1D computes: its (in, out) weight transposed."""
    w: torch.Tensor = m.weight  # type: ignore[assignment]
    b = getattr(m, "bias", None)
    lin = nn.Linear(w.shape[0], w.shape[1], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w.t())
        if b is not None:
            lin.bias.copy_(b)
    return lin


def _rnn_matrices(m: nn.Module) -> tuple[str, ...]:
    return tuple(n for n, _ in m.named_parameters(recurse=False) if n.startswith("weight_"))


def _mha_matrices(m: nn.Module) -> tuple[str, ...]:
    own = tuple(n for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
                if getattr(m, n, None) is not None)
    return (*own, "out_proj.weight")


KINDS: tuple[LayerKind, ...] = (
    LayerKind("Conv1D", is_hf_conv1d, lambda m: ("weight",), conv1d_to_linear),
    LayerKind("MultiheadAttention", lambda m: isinstance(m, nn.MultiheadAttention), _mha_matrices,
              split_attention),  # type: ignore[arg-type]
    LayerKind("LSTM", lambda m: isinstance(m, nn.LSTM), _rnn_matrices, split_rnn),  # type: ignore[arg-type]
    LayerKind("GRU", lambda m: isinstance(m, nn.GRU), _rnn_matrices, split_rnn),  # type: ignore[arg-type]
    LayerKind("Linear", lambda m: isinstance(m, nn.Linear), lambda m: ("weight",)),
    LayerKind("Conv1d", lambda m: isinstance(m, nn.Conv1d), lambda m: ("weight",)),
    LayerKind("Conv2d", lambda m: isinstance(m, nn.Conv2d), lambda m: ("weight",)),
    LayerKind("Embedding", lambda m: isinstance(m, nn.Embedding), lambda m: ("weight",)),
)


def kind_of(m: nn.Module) -> LayerKind | None:
    for k in KINDS:
        if k.detect(m):
            return k
    return None


def weight_matrices(model: nn.Module) -> dict[str, tuple[str, int]]:
    """{layer name: (kind name, weight count)} for every layer of a known kind, each tensor
    counted once (a tied head and embedding count under the first name)."""
    seen: set[int] = set()
    out: dict[str, tuple[str, int]] = {}
    for name, m in model.named_modules():
        if not name or "parametrizations" in name.split("."):
            continue
        k = kind_of(m)
        if k is None:
            continue
        count = 0
        for t in k.matrices(m):
            w = _tensor(m, t)
            if w is None or id(w) in seen:
                continue
            seen.add(id(w))
            count += w.numel()
        if count:
            out[name] = (k.name, count)
    return out


def _tensor(m: nn.Module, dotted: str) -> torch.Tensor | None:
    obj: object = m
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    if isinstance(m, nn.Module) and dotted == "weight" and hasattr(m, "parametrizations") \
            and "weight" in m.parametrizations:  # type: ignore[operator]
        return m.parametrizations["weight"].original  # type: ignore[index,union-attr]
    return obj if isinstance(obj, torch.Tensor) else None


def normalize(model: nn.Module) -> list[tuple[str, str]]:
    """Convert every foreign-kind layer into its native equivalent, in place; returns
    [(layer name, kind name)] converted. The model computes the same function afterwards."""
    done: list[tuple[str, str]] = []
    for name, m in list(model.named_modules()):
        if not name:
            continue
        k = kind_of(m)
        if k is None or k.convert is None:
            continue
        if any(name.startswith(n + ".") for n, _ in done):
            continue
        new = k.convert(name, m)
        new.train(m.training)
        set_module(model, name, new)
        done.append((name, k.name))
    return done


def tied_groups(layers: list[tuple[str, nn.Module]]) -> list[list[str]]:
    """Groups (of two or more layer names) whose weight is one tensor, e.g. an LM head tied
    to the token embedding. Methods treat each group as one weight."""
    by_id: dict[int, list[str]] = {}
    for name, m in layers:
        w = _tensor(m, "weight")
        if w is not None:
            by_id.setdefault(id(w), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]

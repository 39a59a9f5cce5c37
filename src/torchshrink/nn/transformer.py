"""Transformer blocks read from module structure, and the surgery that makes them thinner.

torch.fx cannot trace most Hugging Face models (their mask and cache code is data-dependent),
so structured pruning of attention heads and MLP width reads the blocks from what the modules
are: child names (q/k/v/o, query/key/value + output.dense, GPT-2's fused c_attn, gate/up/down,
fc1/fc2, linear1/linear2) and head counts from module attributes and the model config. Every
block is self-contained: heads are removed from q/k/v rows and o columns, MLP neurons from the
up (and gate) rows and down columns, so the block's input and output width, and therefore the
residual stream, never change.

A weight matrix is read and sliced through `_Kind`: `nn.Linear` stores (out, in),
transformers' `Conv1D` stores (in, out), so the same "output channel" is a row of one and a
column of the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.errors import UnsupportedModelError

__all__ = [
    "AttentionBlock",
    "MlpBlock",
    "find_blocks",
    "out_rows",
    "in_cols",
    "shrink_attention",
    "shrink_mlp",
    "record_attribute",
    "STRUCTURE_ATTR",
]

STRUCTURE_ATTR = "torchshrink_attrs"  # {dotted attribute: value} the artifact replays on load
_Q = ("q_proj", "query", "q")
_K = ("k_proj", "key", "k")
_V = ("v_proj", "value", "v")
_O = ("o_proj", "out_proj", "dense", "o")
_HEADS = ("num_heads", "num_attention_heads", "n_head", "n_heads")


def is_conv1d(m: Any) -> bool:
    """transformers' `Conv1D` (a Linear with a transposed weight), recognised without importing
    transformers."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and hasattr(m, "nx")


def _is_proj(m: Any) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Module) and is_conv1d(m))


def _weight(m: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(m):
        raise UnsupportedModelError(
            f"{type(m).__name__} carries parametrizations on its weight; prune heads and MLP width "
            "before other methods (structure first, then value constraints)"
        )
    w = m.weight
    assert isinstance(w, torch.Tensor)
    return w


def out_rows(m: nn.Module) -> torch.Tensor:
    """The weight as (out, in), whatever the layer stores."""
    w = _weight(m).detach()
    return w.t() if is_conv1d(m) else w


def in_cols(m: nn.Module) -> torch.Tensor:
    """The weight as (in, out)."""
    return out_rows(m).t()


def out_features(m: nn.Module) -> int:
    return int(out_rows(m).shape[0])


def _sliced(m: nn.Module, *, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Module:
    """A new layer of the same kind with the kept output and/or input channels."""
    w = out_rows(m)
    bias = getattr(m, "bias", None)
    b = bias.detach() if isinstance(bias, torch.Tensor) else None
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
        b = None if b is None else b.index_select(0, out_idx.to(b.device))
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    new: nn.Module
    if is_conv1d(m):
        new = type(m)(w.shape[0], w.shape[1])
        w = w.t()
    else:
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    new.to(device=w.device, dtype=w.dtype)
    nw, nb = new.weight, getattr(new, "bias", None)
    assert isinstance(nw, torch.Tensor)
    with torch.no_grad():
        nw.copy_(w)
        if b is not None and isinstance(nb, torch.Tensor):
            nb.copy_(b)
    object.__setattr__(new, "execution", "physically smaller")
    new.train(m.training)
    return new


def record_attribute(owner: nn.Module, target: Any, dotted: str, value: Any) -> None:
    """Set `target.<dotted>` to `value` and note it on `owner` so the artifact replays it on a
    skeleton (a thinner projection is rebuilt from its spec; the head count beside it is not)."""
    *path, last = dotted.split(".")
    obj = target
    for p in path:
        obj = getattr(obj, p)
    setattr(obj, last, value)
    table = dict(getattr(owner, STRUCTURE_ATTR, {}))
    table[dotted] = value
    object.__setattr__(owner, STRUCTURE_ATTR, table)


@dataclasses.dataclass
class AttentionBlock:
    """One attention module. `layout` is "separate" (q/k/v/o Linears), "fused" (GPT-2's c_attn
    holding q|k|v) or "mha" (nn.MultiheadAttention's in_proj_weight)."""

    name: str  # the module whose attributes hold the head count
    layout: str
    q: str = ""
    k: str = ""
    v: str = ""
    qkv: str = ""
    o: str = ""
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0

    def layers(self) -> list[str]:
        """The weight-holding modules of this block (an nn.MultiheadAttention holds its own q|k|v)."""
        own = [self.name] if self.layout == "mha" else []
        return own + [n for n in (self.q, self.k, self.v, self.qkv, self.o) if n]


@dataclasses.dataclass
class MlpBlock:
    """One feed-forward block: `up` layers (up, and gate where the MLP is gated) whose output
    channels are the hidden neurons, and `down`, whose input channels are."""

    name: str
    up: tuple[str, ...]
    down: str

    def layers(self) -> list[str]:
        return [*self.up, self.down]


def _child(m: nn.Module, names: tuple[str, ...]) -> str | None:
    for n in names:
        c = getattr(m, n, None)
        if _is_proj(c):
            return n
    return None


def _heads_of(m: nn.Module, *extra: Any) -> int:
    for obj in (m, *extra, getattr(m, "config", None)):
        for a in _HEADS:
            v = getattr(obj, a, None)
            if isinstance(v, int) and v > 0:
                return v
    return 0


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _attention(name: str, m: nn.Module, parent: nn.Module | None, pname: str) -> AttentionBlock | None:
    if isinstance(m, nn.MultiheadAttention):
        if not m._qkv_same_embed_dim:
            return None
        return AttentionBlock(name, "mha", o=_join(name, "out_proj"), num_heads=m.num_heads,
                              num_kv_heads=m.num_heads, head_dim=m.head_dim)
    if _is_proj(getattr(m, "c_attn", None)) and _is_proj(getattr(m, "c_proj", None)) and hasattr(m, "split_size"):
        if getattr(m, "is_cross_attention", False) or hasattr(m, "q_attn"):
            return None
        h = _heads_of(m)
        c_attn: Any = m.c_attn
        width = out_features(c_attn) // 3
        if h <= 0 or width % h:
            return None
        return AttentionBlock(name, "fused", qkv=_join(name, "c_attn"), o=_join(name, "c_proj"), num_heads=h,
                              num_kv_heads=h, head_dim=width // h)
    q, k, v = _child(m, _Q), _child(m, _K), _child(m, _V)
    if q is None or k is None or v is None:
        return None
    o_name = _child(m, tuple(n for n in _O if n != "dense"))
    o = _join(name, o_name) if o_name else ""
    if not o and parent is not None:  # BERT: self-attention's output projection is a sibling
        out = getattr(parent, "output", None)
        if out is not None and _is_proj(getattr(out, "dense", None)):
            o = _join(pname, "output", "dense")
    h = _heads_of(m)
    if not o or h <= 0:
        return None
    hd = getattr(m, "head_dim", None) or getattr(m, "attention_head_size", None)
    q_out = out_features(getattr(m, q))
    hd = int(hd) if isinstance(hd, int) and hd > 0 else q_out // h
    if hd * h != q_out:
        return None
    kv_out = out_features(getattr(m, k))
    if kv_out % hd or h % (kv_out // hd):
        return None
    return AttentionBlock(name, "separate", q=_join(name, q), k=_join(name, k), v=_join(name, v), o=o,
                          num_heads=h, num_kv_heads=kv_out // hd, head_dim=hd)


_MLP_PAIRS = ((("gate_proj", "up_proj"), "down_proj"), (("w1", "w3"), "w2"), (("c_fc",), "c_proj"),
              (("fc1",), "fc2"), (("linear1",), "linear2"), (("fc",), "proj"))


def _mlp(name: str, m: nn.Module) -> MlpBlock | None:
    if isinstance(m, nn.MultiheadAttention) or _is_proj(getattr(m, "c_attn", None)):
        return None
    for ups, down in _MLP_PAIRS:
        if all(_is_proj(getattr(m, u, None)) for u in ups) and _is_proj(getattr(m, down, None)):
            return MlpBlock(name, tuple(_join(name, u) for u in ups), _join(name, down))
    inter, out = getattr(m, "intermediate", None), getattr(m, "output", None)
    if _is_proj(getattr(inter, "dense", None)) and _is_proj(getattr(out, "dense", None)):  # BERT layer
        return MlpBlock(name, (_join(name, "intermediate", "dense"),), _join(name, "output", "dense"))
    return None


def find_blocks(model: nn.Module) -> tuple[list[AttentionBlock], list[MlpBlock]]:
    """Every self-attention and MLP block recognisable from module names and attributes."""
    attn: list[AttentionBlock] = []
    mlps: list[MlpBlock] = []
    modules = dict(model.named_modules())
    for name, m in modules.items():
        if "parametrizations" in name.split("."):
            continue
        pname = name.rpartition(".")[0]
        parent = modules.get(pname) if name else None
        a = _attention(name, m, parent, pname)
        if a is not None:
            attn.append(a)
            continue
        b = _mlp(name, m)
        if b is not None:
            mlps.append(b)
    # fc1/fc2-style names alone do not make a transformer (LeNet has them too, and what lies
    # between its layers is not known); MLP blocks count only beside attention blocks.
    return (attn, mlps) if attn else ([], [])


# -- surgery -----------------------------------------------------------------------------------
def _rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def shrink_attention(model: nn.Module, block: AttentionBlock, keep_heads: torch.Tensor,
                     keep_kv: torch.Tensor, mha_factory: Callable[..., nn.Module] | None = None) -> None:
    """Keep query heads `keep_heads` and key/value heads `keep_kv` (sorted indices) of `block`,
    and update the module's head-count attributes to match. `nn.MultiheadAttention` ties its
    inner width to its model width, so it is replaced by `mha_factory(module, kept rows, heads,
    head_dim)` (the pruning family owns that module type)."""
    m = model.get_submodule(block.name) if block.name else model
    hd = block.head_dim
    q_rows, kv_rows = _rows(keep_heads, hd), _rows(keep_kv, hd)
    if block.layout == "mha":
        if mha_factory is None:
            raise UnsupportedModelError("removing heads from nn.MultiheadAttention needs a replacement module")
        _swap(model, block.name, mha_factory(m, q_rows, len(keep_heads), hd))
        return
    if block.layout == "fused":
        width = block.num_heads * hd
        idx = torch.cat([q_rows, q_rows + width, q_rows + 2 * width])
        _swap(model, block.qkv, _sliced(model.get_submodule(block.qkv), out_idx=idx))
    else:
        _swap(model, block.q, _sliced(model.get_submodule(block.q), out_idx=q_rows))
        _swap(model, block.k, _sliced(model.get_submodule(block.k), out_idx=kv_rows))
        _swap(model, block.v, _sliced(model.get_submodule(block.v), out_idx=kv_rows))
    _swap(model, block.o, _sliced(model.get_submodule(block.o), in_idx=q_rows))
    h, inner = len(keep_heads), len(keep_heads) * hd
    for a in _HEADS:
        if isinstance(getattr(m, a, None), int):
            record_attribute(m, m, a, h)
    # head_dim is unchanged, but a model rebuilt from the updated config would derive it as
    # hidden_size // heads, so it is recorded too.
    for a, value in (("num_key_value_heads", len(keep_kv)), ("all_head_size", inner), ("split_size", inner),
                     ("head_dim", hd), ("attention_head_size", hd)):
        if isinstance(getattr(m, a, None), int):
            record_attribute(m, m, a, value)
    if isinstance(getattr(m, "scaling", None), float):
        record_attribute(m, m, "scaling", m.scaling)  # derived from head_dim at construction
    if block.layout == "fused" and isinstance(getattr(m, "embed_dim", None), int):
        record_attribute(m, m, "embed_dim", inner)  # GPT-2's embed_dim is the attention's inner width
    if isinstance(getattr(m, "num_key_value_groups", None), int):
        record_attribute(m, m, "num_key_value_groups", h // len(keep_kv))


def shrink_mlp(model: nn.Module, block: MlpBlock, keep: torch.Tensor) -> None:
    """Keep hidden neurons `keep` (sorted indices) of `block`."""
    for u in block.up:
        _swap(model, u, _sliced(model.get_submodule(u), out_idx=keep))
    _swap(model, block.down, _sliced(model.get_submodule(block.down), in_idx=keep))
    m = model.get_submodule(block.name) if block.name else model
    for a in ("intermediate_size", "ffn_dim"):
        if isinstance(getattr(m, a, None), int):
            record_attribute(m, m, a, len(keep))

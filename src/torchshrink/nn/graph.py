"""The channel dependency graph that structured pruning needs, traced with torch.fx.

Every tensor in the traced graph carries a *channel map*: which prunable channel group each
position along its channel dimension belongs to. Ops that must agree on channels join groups
(residual adds, BatchNorm, depthwise convolutions, LayerNorm); concatenation lays groups side
by side; flatten expands each channel into H*W features; a Linear or Conv starts a new group
for its outputs. Groups that reach the model's inputs or outputs, or pass through an op this
module does not understand, are frozen, so pruning never changes an interface it cannot see.

Attention modules are traced as leaves with an internal *head group* (size = number of heads,
each head spanning head_dim positions of the q/k/v outputs and the out_proj input), so whole
heads are removed consistently.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from torchshrink.errors import UnsupportedModelError
from torchshrink.nn.fxtrace import is_attention_like, trace
from torchshrink.nn.select import matches

__all__ = ["Segment", "ChannelMap", "Group", "DependencyGraph", "trace_dependencies"]


@dataclasses.dataclass(frozen=True)
class Segment:
    group: int
    size: int  # channels of the group
    expand: int = 1  # consecutive positions per channel (after flatten; head_dim for heads)


ChannelMap = tuple[Segment, ...]


@dataclasses.dataclass
class Group:
    size: int
    frozen: bool = False
    why: str = ""
    kind: str = "channels"  # or "heads"


@dataclasses.dataclass
class _TInfo:
    cmap: ChannelMap
    cdim: int  # non-negative channel dim
    shape: tuple[int, ...]

    @property
    def neg(self) -> int:
        return self.cdim - len(self.shape)


_PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.ELU, nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.MaxPool1d,
    nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.Upsample, nn.ZeroPad2d,
)
_PASS_FUNCS = {
    "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "elu",
    "mish", "softplus", "dropout", "dropout1d", "dropout2d", "contiguous", "clone", "max_pool1d", "max_pool2d",
    "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "interpolate", "float", "half", "bfloat16", "to", "type_as", "detach", "neg",
    "abs", "exp", "square", "sqrt", "clamp", "clamp_min", "clip", "identity",
}
_BINARY = {"add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "itruediv", "add_", "mul_", "sub_",
           "div_", "__add__", "__mul__", "__sub__", "__truediv__", "__radd__", "__rmul__", "maximum", "minimum"}
_REDUCE = {"mean", "sum", "amax", "amin"}
_RESHAPE = {"view", "reshape", "flatten"}


def _fname(target: Any) -> str:
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", str(target)).strip("_") if target not in (operator.add,) else "add"


class DependencyGraph:
    """Channel groups of a model and, per module, the channel maps of its input and output."""

    def __init__(self) -> None:
        self.groups: list[Group] = []
        self.parent: list[int] = []
        self.module_in: dict[str, ChannelMap] = {}
        self.module_out: dict[str, ChannelMap] = {}
        self.heads: dict[str, int] = {}  # attention module -> head group
        self.node_maps: dict[str, _TInfo] = {}  # fx node name -> tensor info (for activation stats)
        self.node_kind: dict[str, str] = {}  # fx node name -> op name

    # -- union-find over groups ---------------------------------------------------------------
    def new(self, size: int, *, frozen: bool = False, why: str = "", kind: str = "channels") -> ChannelMap:
        self.groups.append(Group(size, frozen, why, kind))
        self.parent.append(len(self.parent))
        return (Segment(len(self.groups) - 1, size),)

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def group(self, g: int) -> Group:
        return self.groups[self.find(g)]

    def freeze(self, cmap: ChannelMap, why: str) -> None:
        for s in cmap:
            grp = self.group(s.group)
            if not grp.frozen:
                grp.frozen, grp.why = True, why

    def union_maps(self, a: ChannelMap, b: ChannelMap, why: str) -> bool:
        """Join two maps position by position; False (and both frozen) when they do not line up."""
        if [(s.size, s.expand) for s in a] != [(s.size, s.expand) for s in b]:
            if width(a) == width(b):
                self.freeze(a + b, f"{why}: channel layouts differ")
                return False
            self.freeze(a + b, f"{why}: widths differ")
            return False
        for sa, sb in zip(a, b):
            ra, rb = self.find(sa.group), self.find(sb.group)
            if ra != rb:
                frozen = self.groups[ra].frozen or self.groups[rb].frozen
                why_f = self.groups[ra].why or self.groups[rb].why
                self.parent[rb] = ra
                self.groups[ra].frozen, self.groups[ra].why = frozen, why_f
        return True

    def prunable(self) -> list[int]:
        roots = sorted({self.find(i) for i in range(len(self.groups))})
        return [r for r in roots if not self.groups[r].frozen and self.groups[r].size > 1]

    def members(self, root: int) -> list[tuple[str, str]]:
        """(module name, "in"/"out") whose map touches group `root`."""
        out = []
        for table, side in ((self.module_in, "in"), (self.module_out, "out")):
            for name, cmap in table.items():
                if any(self.find(s.group) == root for s in cmap):
                    out.append((name, side))
        return out

    def kept_indices(self, cmap: ChannelMap, keep: dict[int, torch.Tensor]) -> torch.Tensor:
        """Positions along a dimension laid out as `cmap` that survive when each group root r
        keeps channels keep[r] (all channels when r is not in keep)."""
        parts, offset = [], 0
        for s in cmap:
            ch = keep.get(self.find(s.group))
            ch = torch.arange(s.size) if ch is None else ch
            pos = (ch[:, None] * s.expand + torch.arange(s.expand)[None, :]).reshape(-1)
            parts.append(pos + offset)
            offset += s.size * s.expand
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def width(cmap: ChannelMap) -> int:
    return sum(s.size * s.expand for s in cmap)


def _meta_shape(node: fx.Node) -> Any:
    tm = node.meta.get("tensor_meta")
    if tm is None:
        return None
    if hasattr(tm, "shape"):
        return tuple(int(d) for d in tm.shape)
    if isinstance(tm, (tuple, list)):
        return [tuple(int(d) for d in t.shape) if hasattr(t, "shape") else None for t in tm]
    return None


def trace_dependencies(model: nn.Module, example: Any, *, ignore: Sequence[str] = ()) -> tuple[
        DependencyGraph, fx.GraphModule]:
    """Trace `model` (with `ignore`d modules as opaque leaves) and build its channel groups."""
    gm = trace(model, ignore)
    args = example if isinstance(example, tuple) else (example,)
    was = model.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*args)
    except Exception as e:
        raise UnsupportedModelError(
            f"running the traced {type(model).__name__} on the example input failed ({type(e).__name__}: {e}); "
            "pass example= with an input batch of the right shape"
        ) from e
    finally:
        model.train(was)
    g = DependencyGraph()
    _Builder(g, gm, list(ignore)).run()
    return g, gm


class _Builder:
    def __init__(self, g: DependencyGraph, gm: fx.GraphModule, ignore: list[str]) -> None:
        self.g, self.gm, self.ignore = g, gm, ignore
        self.info: dict[fx.Node, Any] = {}

    # -- helpers ------------------------------------------------------------------------------
    def opaque(self, shape: tuple[int, ...], why: str) -> _TInfo:
        cdim = 1 if len(shape) >= 2 else 0
        size = shape[cdim] if shape else 1
        return _TInfo(self.g.new(size, frozen=True, why=why), cdim, shape)

    def tinfo(self, a: Any) -> _TInfo | None:
        if isinstance(a, fx.Node):
            v = self.info.get(a)
            return v if isinstance(v, _TInfo) else None
        return None

    def tensor_args(self, node: fx.Node) -> list[_TInfo]:
        out: list[_TInfo] = []

        def visit(a: Any) -> None:
            t = self.tinfo(a)
            if t is not None:
                out.append(t)

        fx.node.map_arg((node.args, node.kwargs), lambda a: visit(a) or a)  # type: ignore[func-returns-value]
        return out

    def freeze_all(self, node: fx.Node, why: str) -> None:
        for t in self.tensor_args(node):
            self.g.freeze(t.cmap, why)

    def set_module_map(self, table: dict[str, ChannelMap], name: str, cmap: ChannelMap, why: str) -> None:
        old = table.get(name)
        if old is None:
            table[name] = cmap
        else:  # a module called twice must see the same channels both times
            self.g.union_maps(old, cmap, f"module {name} called more than once")

    def channel_input(self, name: str, t: _TInfo | None, want_last: bool, size: int, why: str) -> None:
        """Record the input map of a layer that reads channels along dim 1 (conv) or -1 (linear)."""
        ok = t is not None and ((t.cdim == len(t.shape) - 1) if want_last else t.cdim == 1) and width(t.cmap) == size
        if t is not None and ok:
            self.set_module_map(self.g.module_in, name, t.cmap, why)
        else:
            if t is not None:
                self.g.freeze(t.cmap, f"{why}: channel dim not where the layer reads it")
            self.set_module_map(self.g.module_in, name, self.g.new(size, frozen=True, why=why), why)

    # -- the walk -------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            shape = _meta_shape(node)
            if node.op == "placeholder":
                self.info[node] = self.opaque(shape, "model input") if isinstance(shape, tuple) else None
            elif node.op == "get_attr":
                self.info[node] = self.opaque(shape, f"tensor attribute {node.target}") if isinstance(
                    shape, tuple) else None
            elif node.op == "output":
                self.freeze_all(node, "model output")
                fx.node.map_arg(node.args, lambda a: self._freeze_node(a) or a)  # type: ignore[func-returns-value]
            elif node.op == "call_module":
                self.info[node] = self.module(node, shape)
            else:
                self.info[node] = self.function(node, shape)
            t = self.info.get(node)
            if isinstance(t, _TInfo):
                self.g.node_maps[node.name] = t
                self.g.node_kind[node.name] = (type(self.gm.get_submodule(node.target)).__name__.lower()
                                               if node.op == "call_module" else _fname(node.target))

    def _freeze_node(self, a: Any) -> None:
        v = self.info.get(a) if isinstance(a, fx.Node) else None
        if isinstance(v, _TInfo):
            self.g.freeze(v.cmap, "model output")
        elif isinstance(v, tuple):
            for t in v:
                if isinstance(t, _TInfo):
                    self.g.freeze(t.cmap, "model output")

    def module(self, node: fx.Node, shape: Any) -> Any:
        name = str(node.target)
        m = self.gm.get_submodule(name)
        x = self.tinfo(node.args[0]) if node.args else None
        if any(matches(name, p) for p in self.ignore):
            self.freeze_all(node, f"ignored module {name}")
            return self.opaque(shape, f"ignored module {name}") if isinstance(shape, tuple) else None
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            if m.groups == 1:
                self.channel_input(name, x, False, m.in_channels, f"{name} input")
                out = self.g.new(m.out_channels)
                self.set_module_map(self.g.module_out, name, out, name)
                return _TInfo(self.g.module_out[name], 1, shape)
            if m.groups == m.in_channels == m.out_channels and x is not None and x.cdim == 1:
                # Depthwise: output channel c is input channel c, so both ends share a group.
                self.set_module_map(self.g.module_in, name, x.cmap, name)
                self.set_module_map(self.g.module_out, name, x.cmap, name)
                return _TInfo(x.cmap, 1, shape)
            # Grouped convolution: pruning would have to keep every group equally wide; keep it.
            self.freeze_all(node, f"grouped conv {name} (groups={m.groups})")
            return self.opaque(shape, f"grouped conv {name}")
        if isinstance(m, nn.Linear):
            self.channel_input(name, x, True, m.in_features, f"{name} input")
            self.set_module_map(self.g.module_out, name, self.g.new(m.out_features), name)
            return _TInfo(self.g.module_out[name], len(shape) - 1, shape)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and x is not None and x.cdim == 1:
            self.set_module_map(self.g.module_in, name, x.cmap, name)
            self.set_module_map(self.g.module_out, name, x.cmap, name)
            return _TInfo(x.cmap, 1, shape)
        if (isinstance(m, nn.LayerNorm) and x is not None and len(m.normalized_shape) == 1
                and x.cdim == len(x.shape) - 1):
            self.set_module_map(self.g.module_in, name, x.cmap, name)
            self.set_module_map(self.g.module_out, name, x.cmap, name)
            return _TInfo(x.cmap, x.cdim, shape)
        if isinstance(m, nn.Embedding):
            self.set_module_map(self.g.module_out, name, self.g.new(m.embedding_dim), name)
            return _TInfo(self.g.module_out[name], len(shape) - 1, shape)
        if is_attention_like(m):
            return self.attention_like(name, m, x, shape)
        if isinstance(m, nn.MultiheadAttention):
            return self.mha(node, name, m, shape)
        if isinstance(m, _PASS_MODULES) and x is not None:
            return _TInfo(x.cmap, x.cdim, shape)
        if isinstance(m, nn.Flatten) and x is not None:
            return self.reshape(x, shape)
        self.freeze_all(node, f"unsupported layer {name} ({type(m).__name__})")
        return self.opaque(shape, f"{name} ({type(m).__name__})") if isinstance(shape, tuple) else None

    def attention_like(self, name: str, m: nn.Module, x: _TInfo | None, shape: Any) -> _TInfo:
        heads = self.g.new(m.n_head, kind="heads")  # type: ignore[arg-type]
        self.g.heads[name] = heads[0].group
        head_map = (Segment(heads[0].group, m.n_head, m.head_dim),)  # type: ignore[arg-type]
        for proj in ("q_proj", "k_proj", "v_proj"):
            lin = getattr(m, proj)
            self.channel_input(f"{name}.{proj}", x, True, lin.in_features, f"{name} input")
            self.set_module_map(self.g.module_out, f"{name}.{proj}", head_map, name)
        self.set_module_map(self.g.module_in, f"{name}.out_proj", head_map, name)
        out_proj = m.get_submodule("out_proj")
        assert isinstance(out_proj, nn.Linear)
        self.set_module_map(self.g.module_out, f"{name}.out_proj", self.g.new(out_proj.out_features), name)
        return _TInfo(self.g.module_out[f"{name}.out_proj"], len(shape) - 1, shape)

    def mha(self, node: fx.Node, name: str, m: nn.MultiheadAttention, shape: Any) -> Any:
        ins = [self.tinfo(a) for a in node.args[:3]]
        supported = (m._qkv_same_embed_dim and m.bias_k is None and not m.add_zero_attn
                     and all(t is not None and t.cdim == len(t.shape) - 1 for t in ins))
        out_shape = shape[0] if isinstance(shape, list) else None
        w_shape = shape[1] if isinstance(shape, list) and len(shape) > 1 else None
        if not supported or out_shape is None:
            self.freeze_all(node, f"MultiheadAttention {name} with kdim/vdim/bias_k")
            return (self.opaque(out_shape, name) if out_shape else None,
                    self.opaque(w_shape, name) if w_shape else None)
        cmap = ins[0].cmap  # type: ignore[union-attr]
        for t in ins[1:]:
            self.g.union_maps(cmap, t.cmap, f"{name} query/key/value")  # type: ignore[union-attr]
        self.set_module_map(self.g.module_in, name, cmap, name)
        heads = self.g.new(m.num_heads, kind="heads")
        self.g.heads[name] = heads[0].group
        self.set_module_map(self.g.module_out, name, self.g.new(m.embed_dim), name)
        out = _TInfo(self.g.module_out[name], len(out_shape) - 1, out_shape)
        return (out, self.opaque(w_shape, f"{name} attention weights") if w_shape else None)

    def reshape(self, x: _TInfo, shape: tuple[int, ...]) -> _TInfo:
        s, c = x.shape, x.cdim
        if tuple(shape) == tuple(s):
            return _TInfo(x.cmap, c, shape)
        if len(shape) == c + 1 and tuple(shape[:c]) == tuple(s[:c]) and shape[c] == math.prod(s[c:]):
            # Flatten of the channel dim with the dims after it: channel i becomes features
            # [i*HW, (i+1)*HW).
            e = math.prod(s[c + 1:])
            return _TInfo(tuple(Segment(g.group, g.size, g.expand * e) for g in x.cmap), c, shape)
        if len(shape) > c and tuple(shape[:c + 1]) == tuple(s[:c + 1]):
            return _TInfo(x.cmap, c, shape)
        self.g.freeze(x.cmap, f"reshape {s} -> {shape} splits channels")
        return self.opaque(shape, "reshape")

    def function(self, node: fx.Node, shape: Any) -> Any:
        name = _fname(node.target)
        if not isinstance(shape, (tuple, list)):
            return None  # shapes, sizes and other Python values carry no channels
        if isinstance(shape, list):  # tuple-valued op
            self.freeze_all(node, f"op {name}")
            return tuple(self.opaque(s, name) if s else None for s in shape)
        if node.op == "call_function" and node.target is operator.getitem:
            src = self.info.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
            if isinstance(src, tuple) and isinstance(node.args[1], int):
                return src[node.args[1]]
            x = self.tinfo(node.args[0])
            if x is not None:
                return self.index(x, node.args[1], shape)
            return self.opaque(shape, "getitem")
        ts = self.tensor_args(node)
        if not ts:
            return self.opaque(shape, name)
        x = self.tinfo(node.args[0]) if node.args else None
        if name in _PASS_FUNCS and x is not None and len(ts) == 1 and tuple(x.shape) == tuple(shape):
            return _TInfo(x.cmap, x.cdim, shape)
        if name in _PASS_FUNCS and x is not None and len(ts) == 1 and len(shape) == len(x.shape) and \
                shape[x.cdim] == x.shape[x.cdim]:
            return _TInfo(x.cmap, x.cdim, shape)  # pooling / interpolation keeps channels
        if name in _BINARY:
            return self.binary(ts, shape, name)
        if name in ("cat", "concat", "concatenate"):
            return self.cat(node, shape)
        if name in _RESHAPE and x is not None:
            return self.reshape(x, shape)
        if name in ("transpose", "permute", "t") and x is not None:
            return self.transpose(node, x, shape)
        if name in _REDUCE and x is not None:
            return self.reduce(node, x, shape, name)
        self.freeze_all(node, f"unsupported op {name}")
        return self.opaque(shape, f"op {name}")

    def index(self, x: _TInfo, idx: Any, shape: tuple[int, ...]) -> _TInfo:
        # x[..., :k] style slicing only keeps channels when the channel dim is untouched.
        items = idx if isinstance(idx, tuple) else (idx,)
        if all(isinstance(i, slice) and i == slice(None) for i in items[: x.cdim + 1]) and \
                len(shape) == len(x.shape) and shape[x.cdim] == x.shape[x.cdim]:
            return _TInfo(x.cmap, x.cdim, shape)
        self.g.freeze(x.cmap, "indexing")
        return self.opaque(shape, "indexing")

    def binary(self, ts: list[_TInfo], shape: tuple[int, ...], name: str) -> _TInfo:
        full = [t for t in ts if len(t.shape) >= 1 and -t.neg <= len(shape) and t.shape[t.cdim] == shape[
            len(shape) + t.neg] and t.shape[t.cdim] > 1]
        broadcast = [t for t in ts if t not in full]
        for t in broadcast:
            if t.shape and t.shape[t.cdim] != 1:
                self.g.freeze(t.cmap, f"{name} broadcast")
        if not full:
            return self.opaque(shape, name)
        base = full[0]
        for t in full[1:]:
            if t.neg != base.neg:
                self.g.freeze(base.cmap + t.cmap, f"{name} of tensors with different channel dims")
                continue
            self.g.union_maps(base.cmap, t.cmap, f"{name}")
        return _TInfo(base.cmap, len(shape) + base.neg, shape)

    def cat(self, node: fx.Node, shape: tuple[int, ...]) -> _TInfo:
        seq = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        parts = [self.tinfo(a) for a in (seq if isinstance(seq, (list, tuple)) else [])]
        if not parts or any(p is None for p in parts) or not isinstance(dim, int):
            self.freeze_all(node, "cat")
            return self.opaque(shape, "cat")
        ps = [p for p in parts if p is not None]
        dim = dim % len(shape)
        if all(p.cdim == dim for p in ps):
            return _TInfo(tuple(s for p in ps for s in p.cmap), dim, shape)
        for p in ps[1:]:
            self.g.union_maps(ps[0].cmap, p.cmap, "cat along a non-channel dim")
        return _TInfo(ps[0].cmap, ps[0].cdim, shape)

    def transpose(self, node: fx.Node, x: _TInfo, shape: tuple[int, ...]) -> _TInfo:
        nd = len(x.shape)
        name = _fname(node.target)
        if name == "t":
            dims = [1, 0]
        elif name == "transpose":
            a, b = (int(d) % nd for d in node.args[1:3])  # type: ignore[arg-type]
            dims = list(range(nd))
            dims[a], dims[b] = dims[b], dims[a]
        else:
            raw = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (list, tuple)) else node.args[1]
            dims = [int(d) % nd for d in raw]  # type: ignore[arg-type]
        return _TInfo(x.cmap, dims.index(x.cdim), shape)

    def reduce(self, node: fx.Node, x: _TInfo, shape: tuple[int, ...], name: str) -> _TInfo:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
        nd = len(x.shape)
        dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, (list, tuple)) else None
        if dims is None or any(int(d) % nd == x.cdim for d in dims):
            self.g.freeze(x.cmap, f"{name} over channels")
            return self.opaque(shape, name)
        before = sum(1 for d in dims if int(d) % nd < x.cdim)
        return _TInfo(x.cmap, x.cdim if keep else x.cdim - before, shape)

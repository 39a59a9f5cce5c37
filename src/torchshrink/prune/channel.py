"""`ChannelPruning`: structured pruning that removes whole channels, neurons and attention heads
and rebuilds physically smaller modules, so the pruned model really is smaller and faster.

Which layers must change together comes from `torchshrink.nn.graph` (a torch.fx trace):
residual adds, concatenation, BatchNorm, depthwise convolutions, flatten into Linear and
attention heads. Scoring is separate from surgery: each coupled group gets one importance per
channel (summed over every tensor slice of the group, each normalized by its mean), the lowest
`ratio` of each group is removed, and then every affected module is rebuilt at its new width.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
from torch import fx, nn

from torchshrink.batches import iter_calibration, split_batch, to_device
from torchshrink.config import Config, check, check_choice, check_range
from torchshrink.errors import ConfigError, UnsupportedModelError
from torchshrink.nn import params, select_layers, set_module
from torchshrink.nn.fxtrace import is_attention_like
from torchshrink.nn.graph import DependencyGraph, trace_dependencies
from torchshrink.prune.attention import PrunedMultiheadAttention
from torchshrink.prune.criteria import labeled_batches, require_data
from torchshrink.prune.mask import PruningMask, mask_of, set_mask
from torchshrink.registry import Context, register
from torchshrink.train import default_loss

__all__ = ["ChannelPruning", "prune_channels", "count_macs", "STRUCTURED_CRITERIA"]

StructuredCriterion = Literal["l1", "l2", "taylor", "fisher", "activation", "apoz"]
STRUCTURED_CRITERIA: tuple[str, ...] = ("l1", "l2", "taylor", "fisher", "activation", "apoz")
_RELU_KINDS = {"relu", "relu_", "relu6", "gelu", "silu", "hardswish"}


def count_macs(model: nn.Module, example: Any) -> int:
    """Multiply-accumulates of one forward on `example` (torch's FlopCounterMode / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    args = example if isinstance(example, tuple) else (example,)
    was = model.training
    model.eval()
    # nn.MultiheadAttention's inference fast path is one fused op that FlopCounterMode does not
    # count; the regular path is counted op by op.
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        model.train(was)
    return counter.get_total_flops() // 2


# -- which tensor slices belong to a module's input/output channels ----------------------------
def _slices(model: nn.Module, name: str, side: str) -> list[tuple[Any, int]]:
    """(raw parameter, dim) pairs laid out along the module's `side` ("in"/"out") channels."""
    m = model.get_submodule(name)
    w = params.original(m, "weight") if isinstance(getattr(m, "weight", None), torch.Tensor) else None
    if w is None and not isinstance(m, nn.MultiheadAttention):
        return []
    assert w is not None or isinstance(m, nn.MultiheadAttention)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.groups > 1:  # depthwise: one filter per channel, counted once on the output side
            return [(w, 0)] if side == "out" else []
        if side == "in":
            return [(w, 1)]
        return [(w, 0)] + ([(m.bias, 0)] if m.bias is not None else [])
    if isinstance(m, nn.Linear):
        if side == "in":
            return [(w, 1)]
        return [(w, 0)] + ([(m.bias, 0)] if m.bias is not None else [])
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
        if side == "in" or w is None:
            return []
        return [(w, 0)] + ([(m.bias, 0)] if getattr(m, "bias", None) is not None else [])
    if isinstance(m, nn.Embedding):
        return [(w, 1)] if side == "out" else []
    if isinstance(m, nn.MultiheadAttention):
        if side == "in":
            return [(m.in_proj_weight, 1)]
        return [(m.out_proj.weight, 0)] + ([(m.out_proj.bias, 0)] if m.out_proj.bias is not None else [])
    return []


def _reduce(t: torch.Tensor, dim: int, how: str) -> torch.Tensor:
    t = t.detach().float().movedim(dim, 0).reshape(t.shape[dim], -1)
    return t.abs().sum(1) if how == "l1" else t.pow(2).sum(1)


def _mha_head_slices(m: nn.MultiheadAttention) -> list[tuple[torch.Tensor, int]]:
    e = m.embed_dim
    w = m.in_proj_weight
    return [(w[:e], 0), (w[e:2 * e], 0), (w[2 * e:], 0), (m.out_proj.weight, 1)]


class _Scorer:
    def __init__(self, g: DependencyGraph, model: nn.Module) -> None:
        self.g, self.model = g, model
        self.scores: dict[int, torch.Tensor] = {r: torch.zeros(g.groups[r].size) for r in g.prunable()}

    def add(self, cmap: Any, vec: torch.Tensor) -> None:
        """Add per-position scores along a dim laid out as `cmap` to each group (normalized by
        the mean so layers of different scale weigh the same)."""
        vec = vec.detach().float().cpu()
        if vec.numel() == 0:
            return
        vec = vec / vec.mean().clamp_min(1e-12)
        offset = 0
        for s in cmap:
            part = vec[offset:offset + s.size * s.expand].reshape(s.size, s.expand).sum(1)
            offset += s.size * s.expand
            r = self.g.find(s.group)
            if r in self.scores:
                self.scores[r] += part

    def magnitude(self, how: str) -> None:
        for table, side in ((self.g.module_in, "in"), (self.g.module_out, "out")):
            for name, cmap in table.items():
                for t, dim in _slices(self.model, name, side):
                    self.add(cmap, _reduce(t, dim, how))
        for name, hg in self.g.heads.items():
            m = self.model.get_submodule(name)
            if isinstance(m, nn.MultiheadAttention):
                cmap = ((type(next(iter(self.g.module_out[name])))(hg, m.num_heads, m.head_dim)),)
                for t, dim in _mha_head_slices(m):
                    self.add(cmap, _reduce(t, dim, how))


def _taylor_scores(sc: _Scorer, calibration: Iterable[Any], limit: int, squared: bool) -> None:
    """Group Taylor (|sum of w*g| over a channel's tensors, Molchanov et al. 2019) or its
    square averaged per batch (group Fisher)."""
    model, g = sc.model, sc.g
    entries = [(cmap, t, dim) for table, side in ((g.module_in, "in"), (g.module_out, "out"))
               for name, cmap in table.items() for t, dim in _slices(model, name, side)]
    acc = [torch.zeros(t.shape[dim]) for _, t, dim in entries]
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    n = 0
    try:
        for batch in labeled_batches(model, calibration, limit, dev):
            default_loss(model, batch).backward()
            for i, (_, t, dim) in enumerate(entries):
                if t.grad is None:
                    continue
                v = (t.detach() * t.grad).float().movedim(dim, 0).reshape(t.shape[dim], -1).sum(1).cpu()
                acc[i] += v.pow(2) if squared else v
            n += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    if n == 0:
        raise ConfigError("calibration loader is empty")
    for (cmap, _, _), v in zip(entries, acc):
        sc.add(cmap, (v / n) if squared else (v / n).abs())


def _activation_scores(sc: _Scorer, gm: fx.GraphModule, calibration: Iterable[Any], limit: int,
                       apoz: bool) -> None:
    """Mean absolute activation per channel, or 1 - APoZ (fraction of non-zero outputs of
    ReLU-like ops, Hu et al. 2016), read from every traced tensor of the group."""
    g = sc.g
    want = {name: t for name, t in g.node_maps.items()
            if all(g.find(s.group) in sc.scores for s in t.cmap)
            and (not apoz or g.node_kind.get(name, "") in _RELU_KINDS)}
    sums: dict[str, torch.Tensor] = {}
    count = 0

    class Rec(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            out = super().run_node(node)
            t = want.get(node.name)
            if t is not None and isinstance(out, torch.Tensor):
                x = out.detach().float().movedim(t.cdim, 0).reshape(out.shape[t.cdim], -1)
                v = (x > 0).float().mean(1) if apoz else x.abs().mean(1)
                sums[node.name] = sums.get(node.name, 0) + v.cpu()
            return out

    dev = next(sc.model.parameters()).device
    was = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            for batch in iter_calibration(calibration, limit):
                args, kwargs, _ = split_batch(to_device(batch, dev))
                Rec(gm).run(*args, *kwargs.values())
                count += 1
    finally:
        gm.train(was)
    if count == 0:
        raise ConfigError("calibration loader is empty")
    covered = set()
    for name, v in sums.items():
        sc.add(want[name].cmap, v / count)
        covered |= {g.find(s.group) for s in want[name].cmap}
    missing = [r for r in sc.scores if r not in covered]
    if missing:  # heads and groups without a recorded activation fall back to magnitude
        fallback = _Scorer(g, sc.model)
        fallback.magnitude("l1")
        for r in missing:
            sc.scores[r] = fallback.scores[r]


# -- surgery -----------------------------------------------------------------------------------
def _take(t: torch.Tensor | None, dim: int, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.detach().index_select(dim, idx.to(t.device)).clone()


def _copy_into(new: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is None:
        return
    with torch.no_grad():
        getattr(new, name).copy_(value)


def _weight_and_mask(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    ps = params.chain(m, "weight")
    if any(not isinstance(p, PruningMask) for p in ps):
        raise UnsupportedModelError(
            f"{type(m).__name__} carries {[type(p).__name__ for p in ps]} on its weight; apply ChannelPruning "
            "before clustering or quantization (structure first, then value constraints)"
        )
    return params.original(m, "weight"), mask_of(m)


def _rebuild(m: nn.Module, kin: torch.Tensor | None, kout: torch.Tensor | None) -> nn.Module:
    w, mask = _weight_and_mask(m)
    dev, dtype = w.device, w.dtype
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        depthwise = m.groups > 1
        if depthwise:
            k = kout if kout is not None else kin
            assert k is not None
            cin = cout = groups = len(k)
            nw, nm = _take(w, 0, k), _take(mask, 0, k)
            nb = _take(m.bias, 0, k)
        else:
            cin = len(kin) if kin is not None else m.in_channels
            cout = len(kout) if kout is not None else m.out_channels
            groups = 1
            nw, nm, nb = w.detach(), mask, m.bias
            if kout is not None:
                nw, nm, nb = _take(nw, 0, kout), _take(nm, 0, kout), _take(nb, 0, kout)
            if kin is not None:
                nw, nm = _take(nw, 1, kin), _take(nm, 1, kin)
        new: nn.Module = type(m)(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, groups,  # type: ignore[arg-type]
                                 m.bias is not None, m.padding_mode)
    elif isinstance(m, nn.Linear):
        nw, nm, nb = w.detach(), mask, m.bias
        if kout is not None:
            nw, nm, nb = _take(nw, 0, kout), _take(nm, 0, kout), _take(nb, 0, kout)
        if kin is not None:
            nw, nm = _take(nw, 1, kin), _take(nm, 1, kin)
        new = nn.Linear(nw.shape[1], nw.shape[0], bias=m.bias is not None)  # type: ignore[union-attr]
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        k = kout if kout is not None else kin
        assert k is not None
        new = type(m)(len(k), m.eps, m.momentum, m.affine, m.track_running_stats)
        nw, nm, nb = (_take(w, 0, k) if m.affine else None), None, (_take(m.bias, 0, k) if m.affine else None)
        if m.track_running_stats:
            _copy_into(new, "running_mean", _take(m.running_mean, 0, k))
            _copy_into(new, "running_var", _take(m.running_var, 0, k))
            _copy_into(new, "num_batches_tracked", m.num_batches_tracked)
    elif isinstance(m, nn.LayerNorm):
        k = kout if kout is not None else kin
        assert k is not None
        new = nn.LayerNorm(len(k), m.eps, m.elementwise_affine, bias=m.bias is not None)
        nw = _take(w, 0, k) if m.elementwise_affine else None
        nm, nb = None, _take(m.bias, 0, k) if m.bias is not None else None
    elif isinstance(m, nn.Embedding):
        assert kout is not None
        new = nn.Embedding(m.num_embeddings, len(kout), m.padding_idx, m.max_norm, m.norm_type,
                           m.scale_grad_by_freq, m.sparse)
        nw, nm, nb = _take(w, 1, kout), _take(mask, 1, kout), None
    else:
        raise UnsupportedModelError(f"cannot rebuild {type(m).__name__} at a new width")
    new.to(device=dev, dtype=dtype)
    _copy_into(new, "weight", nw)
    _copy_into(new, "bias", nb)
    if nm is not None:
        set_mask(new, nm)
    object.__setattr__(new, "execution", "physically smaller")  # measurement convention: it really shrank
    new.train(m.training)
    return new


def _rebuild_mha(m: nn.MultiheadAttention, kin: torch.Tensor, kout: torch.Tensor,
                 heads: torch.Tensor) -> PrunedMultiheadAttention:
    e, hd = m.embed_dim, m.head_dim
    rows = (heads[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)
    new = PrunedMultiheadAttention(len(kin), len(kout), len(heads), hd, bias=m.in_proj_bias is not None,
                                   batch_first=m.batch_first, dropout=m.dropout)
    w = m.in_proj_weight.detach()
    b = m.in_proj_bias.detach() if m.in_proj_bias is not None else None
    with torch.no_grad():
        for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
            part = w[i * e:(i + 1) * e]
            proj.weight.copy_(part[rows][:, kin])
            if b is not None:
                proj.bias.copy_(b[i * e:(i + 1) * e][rows])
        new.out_proj.weight.copy_(m.out_proj.weight.detach()[kout][:, rows])
        if m.out_proj.bias is not None:
            new.out_proj.bias.copy_(m.out_proj.bias.detach()[kout])
    new.to(device=w.device, dtype=w.dtype)
    new.train(m.training)
    return new


def _n_keep(size: int, ratio: float, round_to: int) -> int:
    keep = size - int(ratio * size + 1e-9)
    if round_to > 1 and size >= round_to:
        keep = min(size, -(-keep // round_to) * round_to)
    return max(1, keep)


def prune_channels(model: nn.Module, *, ratio: float, example: Any, criterion: str = "l1",
                   ignore: Iterable[str] = (), round_to: int = 1, prune_heads: bool = True,
                   calibration: Iterable[Any] | None = None, calibration_batches: int = 8) -> dict[str, Any]:
    """Remove `ratio` of the channels of every prunable coupled group of `model` (in place).
    Returns a summary: groups pruned, channels before/after."""
    ignore = list(ignore)
    if ignore:
        select_layers(model, types=(nn.Module,), ignore=ignore, what="ignore")  # validates the patterns
    require_data(criterion, calibration, method="ts.prune")
    g, gm = trace_dependencies(model, example, ignore=ignore)
    if ratio > 0 and not g.prunable():
        warnings.warn(_nothing_prunable(model, g), UserWarning, stacklevel=4)
    sc = _Scorer(g, model)
    if not prune_heads:
        for r in [r for r in sc.scores if g.groups[r].kind == "heads"]:
            del sc.scores[r]
    if criterion in ("l1", "l2"):
        sc.magnitude(criterion)
    elif criterion in ("taylor", "fisher"):
        assert calibration is not None
        _taylor_scores(sc, calibration, calibration_batches, squared=criterion == "fisher")
    else:
        assert calibration is not None
        _activation_scores(sc, gm, calibration, calibration_batches, apoz=criterion == "apoz")
    keep: dict[int, torch.Tensor] = {}
    before = after = 0
    for r, s in sc.scores.items():
        size = g.groups[r].size
        n = _n_keep(size, ratio, 1 if g.groups[r].kind == "heads" else round_to)
        keep[r] = torch.sort(torch.topk(s, n, sorted=False).indices).values
        before, after = before + size, after + n
    # Rebuild every module whose input or output channels changed.
    names = sorted(set(g.module_in) | set(g.module_out))
    replaced: dict[str, nn.Module] = {}
    for name in names:
        m = model.get_submodule(name)
        cin, cout = g.module_in.get(name), g.module_out.get(name)
        kin = g.kept_indices(cin, keep) if cin is not None else None
        kout = g.kept_indices(cout, keep) if cout is not None else None
        from torchshrink.nn.graph import width

        full_in = kin is None or len(kin) == width(cin)  # type: ignore[arg-type]
        full_out = kout is None or len(kout) == width(cout)  # type: ignore[arg-type]
        if isinstance(m, nn.MultiheadAttention):
            hr = g.find(g.heads[name])
            heads = keep.get(hr, torch.arange(m.num_heads))
            if full_in and full_out and len(heads) == m.num_heads:
                continue
            assert kin is not None and kout is not None
            replaced[name] = _rebuild_mha(m, kin, kout, heads)
            continue
        if full_in and full_out:
            continue
        replaced[name] = _rebuild(m, None if full_in else kin, None if full_out else kout)
    for name, new in replaced.items():
        set_module(model, name, new)
    for name, hg in g.heads.items():
        m = model.get_submodule(name)
        hr = g.find(hg)
        if is_attention_like(m) and hr in keep:
            m.n_head = len(keep[hr])  # type: ignore[assignment]
    return {"groups": len(keep), "channels_before": before, "channels_after": after,
            "rebuilt": sorted(replaced)}


def _example_for(model: nn.Module, ctx: Context) -> Any:
    if ctx.example is not None:
        return ctx.example
    from torchshrink.models import example_input

    try:
        return example_input(model, 2)
    except ConfigError as e:
        raise ConfigError(
            f"ChannelPruning traces the model and needs an example input: pass example=x to ts.prune "
            f"({type(model).__name__} has no input_shape)"
        ) from e


def _by_structure(model: nn.Module) -> bool:
    """Hugging Face models and `nn.TransformerEncoderLayer` stacks are pruned from their block
    structure: fx cannot trace the former, and traces the latter's fused attention as one opaque op."""
    from torchshrink.prune.heads import has_transformer_blocks

    hf = hasattr(getattr(model, "config", None), "to_dict")
    encoder = any(isinstance(m, nn.TransformerEncoderLayer) for m in model.modules())
    return (hf or encoder) and has_transformer_blocks(model)


def _nothing_prunable(model: nn.Module, g: DependencyGraph) -> str:
    reasons: dict[str, int] = {}
    for r in sorted({g.find(i) for i in range(len(g.groups))}):
        grp = g.groups[r]
        if grp.size > 1:
            reasons[grp.why or "fixed width"] = reasons.get(grp.why or "fixed width", 0) + grp.size
    shown = "; ".join(f"{why} ({n} channels)" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:6])
    return (f"ChannelPruning(ratio) changes nothing: it found no channel group it can remove in {type(model).__name__}: every group is "
            f"fixed by {shown or 'nothing traced'}. Transformer blocks need head/MLP pruning (their residual "
            "stream fixes the width), or pass ignore=[...] for the modules that fix the groups")


def _apply(model: nn.Module, config: ChannelPruning, ctx: Context) -> nn.Module:
    if _by_structure(model):
        from torchshrink.prune.heads import prune_heads_and_mlp

        info = prune_heads_and_mlp(model, heads=config.ratio if config.prune_heads else 0.0, mlp=config.ratio,
                                   criterion=config.criterion if config.criterion in ("l1", "l2") else "l2")
        object.__setattr__(model, "torchshrink_channel_pruning", info)
        return model
    info = prune_channels(model, ratio=config.ratio, example=_example_for(model, ctx), criterion=config.criterion,
                          ignore=config.ignore, round_to=config.round_to, prune_heads=config.prune_heads,
                          calibration=ctx.calibration, calibration_batches=config.calibration_batches)
    object.__setattr__(model, "torchshrink_channel_pruning", info)
    return model


@register(family="prune", handler=_apply)
@dataclasses.dataclass(frozen=True, kw_only=True)
class ChannelPruning(Config):
    """Structured pruning with physical removal of channels, neurons and attention heads.

    ratio: fraction of channels removed from every prunable coupled group, in [0, 1).
    criterion: channel importance ("l1"/"l2" weight norms need no data; "activation", "apoz",
        "taylor", "fisher" need calibration=).
    ignore: modules (glob patterns) left unchanged and traced as opaque leaves.
    round_to: kept channel counts are rounded up to a multiple of this (e.g. 8 for SIMD).
    prune_heads: also remove whole attention heads (their own groups, same ratio).
    """

    # Prunes nn.MultiheadAttention heads natively and needs an fx-traceable model, so layers
    # are not converted to the native kinds of nn.kinds first.
    convert_kinds: ClassVar[bool] = False

    ratio: float = 0.5
    criterion: StructuredCriterion = "l1"
    ignore: tuple[str, ...] = ()
    round_to: int = 1
    prune_heads: bool = True
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("ratio", self.ratio, 0.0, 1.0, high_inclusive=False)
        check_choice("criterion", self.criterion, STRUCTURED_CRITERIA)
        check(self.round_to >= 1, f"round_to must be >= 1, got {self.round_to}")
        check(self.calibration_batches >= 1, f"calibration_batches must be >= 1, got {self.calibration_batches}")

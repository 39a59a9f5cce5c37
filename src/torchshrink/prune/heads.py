"""`HeadPruning`: remove whole attention heads and MLP neurons from transformer blocks read from
module structure (no tracing), so Hugging Face models (BERT, GPT-2, OPT, Llama/Qwen2, ViT) and
`nn.TransformerEncoderLayer` get physically thinner projections.

Every layer loses the same number of heads and neurons (the lowest-scoring ones of that layer),
so the model config can still describe the result (`num_attention_heads`, `head_dim`,
`intermediate_size`). With grouped-query attention a key/value head is removed together with
the query heads that share it; where there is a single key/value head, query heads go and the
key/value projection stays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from torchshrink.config import Config, check_choice, check_range
from torchshrink.errors import UnsupportedModelError
from torchshrink.nn import coverage
from torchshrink.nn.transformer import (
    AttentionBlock,
    MlpBlock,
    find_blocks,
    in_cols,
    out_rows,
    record_attribute,
    shrink_attention,
    shrink_mlp,
)
from torchshrink.registry import Context, register

__all__ = ["HeadPruning", "prune_heads_and_mlp", "has_transformer_blocks"]

Norm = Literal["l1", "l2"]


def has_transformer_blocks(model: nn.Module) -> bool:
    attn, mlps = find_blocks(model)
    return bool(attn or mlps)


def _norm(t: torch.Tensor, how: str) -> torch.Tensor:
    t = t.float()
    v = t.abs().sum(1) if how == "l1" else t.pow(2).sum(1).sqrt()
    return v / v.mean().clamp_min(1e-12)


def _per_unit(rows: torch.Tensor, units: int, how: str) -> torch.Tensor:
    """Row norms (normalized by their mean so tensors of different scale weigh the same) summed
    per unit of consecutive rows."""
    return _norm(rows, how).reshape(units, -1).sum(1)


def _qkv_rows(model: nn.Module, b: AttentionBlock) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if b.layout == "mha":
        m = model.get_submodule(b.name)
        assert isinstance(m, nn.MultiheadAttention)
        w = m.in_proj_weight.detach()
        return w.chunk(3)  # type: ignore[return-value]
    if b.layout == "fused":
        w = out_rows(model.get_submodule(b.qkv))
        return w.chunk(3)  # type: ignore[return-value]
    return (out_rows(model.get_submodule(b.q)), out_rows(model.get_submodule(b.k)),
            out_rows(model.get_submodule(b.v)))


def _o_cols(model: nn.Module, b: AttentionBlock) -> torch.Tensor:
    return in_cols(model.get_submodule(b.o))


def _keep(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    return scores.topk(n_keep).indices.sort().values


def _n_keep(size: int, ratio: float) -> int:
    return max(1, size - int(ratio * size + 1e-9))


def _prune_attention(model: nn.Module, b: AttentionBlock, ratio: float, how: str) -> tuple[int, int]:
    q, k, v = _qkv_rows(model, b)
    o = _o_cols(model, b)
    h, kv = b.num_heads, b.num_kv_heads
    q_score = _per_unit(q, h, how) + _per_unit(o, h, how)
    kv_score = _per_unit(k, kv, how) + _per_unit(v, kv, how)
    rep = h // kv
    if kv > 1 or rep == 1:  # remove whole key/value groups with their query heads
        groups = q_score.reshape(kv, rep).sum(1) + kv_score
        keep_kv = _keep(groups, _n_keep(kv, ratio))
        keep_q = (keep_kv[:, None] * rep + torch.arange(rep)[None, :]).reshape(-1)
    else:  # one shared key/value head: only query heads can go
        keep_kv = torch.zeros(1, dtype=torch.long)
        keep_q = _keep(q_score, _n_keep(h, ratio))
    if len(keep_q) < h:
        shrink_attention(model, b, keep_q, keep_kv, mha_factory=_pruned_mha)
    return len(keep_q), len(keep_kv)


def _pruned_mha(m: nn.MultiheadAttention, rows: torch.Tensor, heads: int, hd: int) -> nn.Module:
    from torchshrink.prune.attention import PrunedMultiheadAttention

    e = m.embed_dim
    new = PrunedMultiheadAttention(e, e, heads, hd, bias=m.in_proj_bias is not None, batch_first=m.batch_first,
                                   dropout=m.dropout)
    w = m.in_proj_weight.detach()
    b = m.in_proj_bias.detach() if m.in_proj_bias is not None else None
    with torch.no_grad():
        for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
            proj.weight.copy_(w[i * e:(i + 1) * e][rows])
            if b is not None:
                proj.bias.copy_(b[i * e:(i + 1) * e][rows])
        new.out_proj.weight.copy_(m.out_proj.weight.detach()[:, rows])
        if m.out_proj.bias is not None:
            new.out_proj.bias.copy_(m.out_proj.bias.detach())
    new.to(device=w.device, dtype=w.dtype)
    new.train(m.training)
    return new


def _prune_mlp(model: nn.Module, b: MlpBlock, ratio: float, how: str) -> int:
    ups = [out_rows(model.get_submodule(u)) for u in b.up]
    width = ups[0].shape[0]
    score = sum((_norm(u, how) for u in ups), torch.zeros(width)) + _norm(in_cols(model.get_submodule(b.down)), how)
    keep = _keep(score, _n_keep(width, ratio))
    if len(keep) < width:
        shrink_mlp(model, b, keep)
    return len(keep)


def _update_config(model: nn.Module, heads: set[tuple[int, int, int]], mlp: set[int]) -> None:
    """Write the new (uniform) widths into the Hugging Face config, so the pruned model describes
    itself and `save_pretrained` writes a config that matches its tensors."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return
    if len(heads) == 1:
        h, kv, hd = next(iter(heads))
        if getattr(config, "num_attention_heads", None) not in (None, h):
            record_attribute(model, model, "config.head_dim", hd)  # no longer hidden_size // heads
            record_attribute(model, model, "config.num_attention_heads", h)
        if isinstance(getattr(config, "num_key_value_heads", None), int):
            record_attribute(model, model, "config.num_key_value_heads", kv)
    if len(mlp) == 1:
        width = next(iter(mlp))
        for a in ("intermediate_size", "ffn_dim", "n_inner"):
            if a in config.to_dict() and getattr(config, a) != width:
                record_attribute(model, model, f"config.{a}", width)


def prune_heads_and_mlp(model: nn.Module, *, heads: float, mlp: float, criterion: str = "l2") -> dict[str, Any]:
    """Remove `heads` of the attention heads and `mlp` of the MLP neurons of every recognised
    block (in place). Returns what changed, per block."""
    attn, mlps = find_blocks(model)
    if not attn and not mlps:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no attention or MLP block recognisable from its modules "
            "(q/k/v/o, query/key/value, c_attn/c_proj, nn.MultiheadAttention; gate/up/down, fc1/fc2, "
            "c_fc/c_proj, linear1/linear2, intermediate/output.dense); use ChannelPruning with example= "
            "for models torch.fx can trace"
        )
    changed: dict[str, Any] = {}
    head_shapes: set[tuple[int, int, int]] = set()
    widths: set[int] = set()
    for b in attn:
        h, kv = _prune_attention(model, b, heads, criterion) if heads > 0 else (b.num_heads, b.num_kv_heads)
        head_shapes.add((h, kv, b.head_dim))
        changed[b.name] = {"heads": [b.num_heads, h], "kv_heads": [b.num_kv_heads, kv]}
    for m in mlps:
        before = out_rows(model.get_submodule(m.up[0])).shape[0]
        width = _prune_mlp(model, m, mlp, criterion) if mlp > 0 else before
        widths.add(width)
        changed[m.name] = {"width": [before, width]}
    _update_config(model, head_shapes, widths)
    return {"blocks": changed, "attention": len(attn), "mlp": len(mlps)}


def _apply(model: nn.Module, config: HeadPruning, ctx: Context) -> nn.Module:
    attn, mlps = find_blocks(model)
    for asked, blocks, what in ((config.heads, attn, "heads=0"), (config.mlp, mlps, "mlp=0")):
        if asked == 0:
            for b in blocks:
                for layer in b.layers():
                    coverage.skip(model, layer, f"{what}: left as asked", requested=True)
    info = prune_heads_and_mlp(model, heads=config.heads, mlp=config.mlp, criterion=config.criterion)
    object.__setattr__(model, "torchshrink_head_pruning", info)
    return model


@register(family="prune", handler=_apply)
@dataclasses.dataclass(frozen=True, kw_only=True)
class HeadPruning(Config):
    """Structured pruning of transformer blocks from their module structure: whole attention heads
    and MLP neurons are removed, leaving thinner projections and an updated config.

    heads: fraction of attention heads (key/value groups under grouped-query attention) removed
        from every attention block, in [0, 1).
    mlp: fraction of hidden neurons removed from every MLP block, in [0, 1).
    criterion: weight norm used to rank heads and neurons ("l2" or "l1"), summed over the rows of
        q/k/v (up/gate) and the columns of o (down), each normalized by its mean.
    """

    heads: float = 0.5
    mlp: float = 0.5
    criterion: Norm = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("heads", self.heads, 0.0, 1.0, high_inclusive=False)
        check_range("mlp", self.mlp, 0.0, 1.0, high_inclusive=False)
        check_choice("criterion", self.criterion, ("l1", "l2"))

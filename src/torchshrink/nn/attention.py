"""`SplitAttention`: nn.MultiheadAttention with its projections as four plain Linears.

PyTorch's MultiheadAttention keeps q/k/v in one `in_proj_weight` parameter and reads
`out_proj.weight` directly (in its fast path and in `F.multi_head_attention_forward`), so a
method that swaps `out_proj` for a quantized or factorized module breaks the first forward.
Here every projection is a module called as a module, so any replacement works. Its
`in_proj_bias` is None on purpose: TransformerEncoderLayer then takes its ordinary path
("self_attn was passed bias=False"), which calls the submodules, instead of the fused kernel
that reads raw weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from torchshrink.errors import UnsupportedModelError

__all__ = ["SplitAttention", "split_attention"]


class SplitAttention(nn.Module):
    """Computes what nn.MultiheadAttention computes, with q_proj/k_proj/v_proj/out_proj Linears."""

    # Read by TransformerEncoder(Layer)'s fast-path checks; these values turn the fast path off.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = False) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.has_bias = bias
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def merge_masks(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                    query: torch.Tensor) -> tuple[torch.Tensor | None, int | None]:
        # TransformerEncoder calls this only on its fast path, which this module disables.
        return attn_mask, None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, tq, _ = query.shape
        ts = key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(b, tq, h, d).transpose(1, 2)
        k = self.k_proj(key).view(b, ts, h, d).transpose(1, 2)
        v = self.v_proj(value).view(b, ts, h, d).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if attn_mask is not None:
            m = _additive(attn_mask, scores.dtype)
            scores = scores + (m.view(b, h, tq, ts) if m.dim() == 3 else m)
        elif is_causal:
            causal = torch.ones(tq, ts, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        if key_padding_mask is not None:
            scores = scores + _additive(key_padding_mask, scores.dtype).view(b, 1, 1, ts)
        weights = torch.softmax(scores, dim=-1)
        attn = F.dropout(weights, self.dropout, self.training) if self.dropout > 0 else weights
        out = self.out_proj((attn @ v).transpose(1, 2).reshape(b, tq, h * d))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        w = weights.mean(1) if average_attn_weights else weights
        return out, (w.squeeze(0) if unbatched else w)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def split_attention(name: str, mha: nn.MultiheadAttention) -> SplitAttention:
    """The SplitAttention computing what `mha` computes (same weights, copied)."""
    if mha.bias_k is not None or mha.add_zero_attn:
        raise UnsupportedModelError(
            f"layer {name!r}: MultiheadAttention with add_bias_kv/add_zero_attn is not supported; exclude it "
            "with ignore=[...]")
    e = mha.embed_dim
    out = SplitAttention(e, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None,
                         kdim=mha.kdim, vdim=mha.vdim, batch_first=mha.batch_first)
    with torch.no_grad():
        if mha._qkv_same_embed_dim:
            assert mha.in_proj_weight is not None
            ws = mha.in_proj_weight.chunk(3)
        else:
            ws = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        bs = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        for lin, w, bias in zip((out.q_proj, out.k_proj, out.v_proj), ws, bs):
            lin.weight.copy_(w)
            if bias is not None:
                lin.bias.copy_(bias)
        out.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.out_proj.bias is not None:
            out.out_proj.bias.copy_(mha.out_proj.bias)
    return out.to(mha.out_proj.weight.device, mha.out_proj.weight.dtype)

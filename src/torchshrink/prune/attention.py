"""A drop-in for `nn.MultiheadAttention` after head pruning.

`nn.MultiheadAttention` ties the inner width to `embed_dim` (inner = num_heads * head_dim =
embed_dim), so removing heads or embedding channels needs separate q/k/v/out projections.
Same call signature and return value `(output, weights or None)`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from torchshrink.codec.structure import register_module

__all__ = ["PrunedMultiheadAttention"]


class PrunedMultiheadAttention(nn.Module):
    execution = "physically smaller"
    # nn.TransformerEncoder(Layer) reads these to decide on its fused fast path; saying "no
    # fused projection" sends it down the regular path, which calls this module.
    in_proj_weight: torch.Tensor | None = None
    in_proj_bias: torch.Tensor | None = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_in: int, embed_out: int, num_heads: int, head_dim: int, *, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.q_proj = nn.Linear(embed_in, inner, bias=bias)
        self.k_proj = nn.Linear(embed_in, inner, bias=bias)
        self.v_proj = nn.Linear(embed_in, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_out, bias=bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, length, _ = query.shape
        s = key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(b, length, h, d).transpose(1, 2)
        k = self.k_proj(key).view(b, s, h, d).transpose(1, 2)
        v = self.v_proj(value).view(b, s, h, d).transpose(1, 2)
        bias = _additive_mask(attn_mask, key_padding_mask, b, h, length, s, q.dtype, q.device)
        if is_causal and bias is None:
            bias = torch.full((length, s), -math.inf, dtype=q.dtype, device=q.device).triu(1)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d)
            if bias is not None:
                scores = scores + bias
            attn = scores.softmax(-1)
            weights = attn.mean(1) if average_attn_weights else attn
            y = F.dropout(attn, p, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        out = self.out_proj(y.transpose(1, 2).reshape(b, length, h * d))
        if unbatched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _additive_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, b: int, h: int,
                   length: int, s: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """nn.MultiheadAttention's masks (bool True = blocked, or additive floats) as one additive
    (B, H, L, S) or (L, S) tensor."""
    out: torch.Tensor | None = None
    if attn_mask is not None:
        m = attn_mask
        m = torch.zeros_like(m, dtype=dtype).masked_fill(m, -math.inf) if m.dtype == torch.bool else m.to(dtype)
        out = m.view(b, h, length, s) if m.dim() == 3 else m
    if key_padding_mask is not None:
        kp = key_padding_mask
        kp = torch.zeros_like(kp, dtype=dtype).masked_fill(kp, -math.inf) if kp.dtype == torch.bool else kp.to(dtype)
        kp = kp.view(b, 1, 1, s)
        out = kp if out is None else out + kp
    return out


register_module(
    PrunedMultiheadAttention,
    to_spec=lambda m: {"in": m.q_proj.in_features, "out": m.out_proj.out_features, "heads": m.num_heads,
                       "head_dim": m.head_dim, "bias": m.q_proj.bias is not None, "batch_first": m.batch_first,
                       "dropout": m.dropout},
    from_spec=lambda s: PrunedMultiheadAttention(s["in"], s["out"], s["heads"], s["head_dim"], bias=s["bias"],
                                                 batch_first=s["batch_first"], dropout=s["dropout"]),
    name="PrunedMultiheadAttention",
)


def _embd(m: nn.Module) -> int:
    """The attention's model width, read from q_proj where it still says (pruning may have
    narrowed it), else from what the module was built with (q_proj may now be a quantized or
    factorized replacement without `in_features`)."""
    q: Any = m.q_proj
    width = getattr(q, "in_features", None)
    if width is None and isinstance(getattr(q, "op", None), dict):
        width = q.op.get("in")
    fallback: Any = m.n_embd
    return int(width if width is not None else fallback)


def _register_gpt_attention() -> None:
    """gpt_tiny's attention keeps its head count in `n_head`; after head pruning the artifact
    must replay that count, not only the thinner projections, so the module gets a spec."""
    from torchshrink.models.gpt import CausalSelfAttention

    register_module(
        CausalSelfAttention,
        to_spec=lambda m: {"n_embd": _embd(m), "n_head": m.n_head, "head_dim": m.head_dim,
                           "dropout": m.dropout},
        from_spec=lambda s: CausalSelfAttention(s["n_embd"], s["n_head"], s["head_dim"], s["dropout"]),
        name="CausalSelfAttention",
    )


_register_gpt_attention()

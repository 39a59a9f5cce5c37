"""A tiny decoder-only transformer over bytes (vocabulary 256), in the shape of nanoGPT.

Queries, keys and values have their own projections and the head count is an attribute, so
structured pruning can remove whole heads and rebuild thinner projections.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from torchshrink.errors import ConfigError
from torchshrink.models.validate import check_size


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256  # bytes
    block_size: int = 64  # context length the position table covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_size("GPTConfig", "vocab_size", self.vocab_size)
        check_size("GPTConfig", "block_size", self.block_size, high=2**16)
        check_size("GPTConfig", "n_layer", self.n_layer, high=256)
        check_size("GPTConfig", "n_head", self.n_head, high=2**10)
        check_size("GPTConfig", "n_embd", self.n_embd, high=2**16)
        if self.n_embd % self.n_head:
            raise ConfigError(f"GPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ConfigError(f"GPTConfig: dropout must be a number in [0, 1), got {self.dropout!r}")


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, head_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_embd = n_embd  # kept: the projections may be swapped for modules without in_features
        self.n_head = n_head
        self.head_dim = head_dim if head_dim is not None else n_embd // n_head
        inner = self.n_head * self.head_dim
        self.q_proj = nn.Linear(n_embd, inner)
        self.k_proj = nn.Linear(n_embd, inner)
        self.v_proj = nn.Linear(n_embd, inner)
        self.out_proj = nn.Linear(inner, n_embd)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # -1 for the head count (not self.n_head) so a traced graph stays valid after heads are
        # removed and the projections get thinner.
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.out_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = hidden or 4 * n_embd
        self.fc = nn.Linear(n_embd, hidden)
        self.proj = nn.Linear(hidden, n_embd)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, dropout=cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg.n_embd, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPTTiny(nn.Module):
    """Input (N, T) int64 byte ids, T <= block_size; output (N, T, 256) logits."""

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or GPTConfig()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("out_proj.weight", "mlp.proj.weight")):
                # GPT-2's scaled init of residual projections keeps the residual stream's
                # variance from growing with depth.
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

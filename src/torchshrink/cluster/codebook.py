"""The shared-weight parametrization: `weight = codebook[indices]`.

`codebook` is an nn.Parameter, so back-propagation through the gather sums the gradients of
every weight in a cluster into its centroid: Deep Compression's centroid fine-tuning
(equation 3) with no special training code. Pruned zeros are not a centroid: they carry the
reserved index `k` (one past the last centroid), which always reads a constant 0, so they stay
exact zeros through any amount of training and never pull a centroid toward zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchshrink.codec.structure import register_parametrization

__all__ = ["Codebook", "index_dtype"]


def index_dtype(k: int) -> torch.dtype:
    """The smallest integer dtype holding indices 0..k (k is the zero slot)."""
    return torch.uint8 if k <= 255 else torch.int16


class Codebook(nn.Module):
    """Replaces a weight by shared values: `cat([codebook, 0])[indices]`.

    codebook: (k,) trainable centroids. indices: integer buffer of the weight's shape with values
    in [0, k]; the value k marks a pruned (exact zero) weight.
    """

    execution = "shared weights (codebook gather, dense compute)"
    codebook: nn.Parameter
    indices: torch.Tensor

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook.detach().clone().float())
        self.register_buffer("indices", indices.detach().clone().to(index_dtype(codebook.numel())))

    @property
    def k(self) -> int:
        return int(self.codebook.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The input (the raw weight, possibly masked) is ignored: the codebook is the value.
        table = torch.cat([self.codebook, self.codebook.new_zeros(1)])
        return table[self.indices.long()].to(x.dtype)

    def canonical_original(self, original: torch.Tensor) -> torch.Tensor:
        """The output never depends on the raw tensor, so store zeros (they code to nothing)."""
        return torch.zeros_like(original)

    def extra_repr(self) -> str:
        return f"k={self.k}, shape={tuple(self.indices.shape)}"


def _to_spec(p: Codebook) -> dict[str, Any]:
    return {"k": p.k, "shape": list(p.indices.shape)}


def _from_spec(s: dict[str, Any]) -> Codebook:
    k = int(s["k"])
    return Codebook(torch.zeros(k), torch.zeros(tuple(s["shape"]), dtype=index_dtype(k)))


register_parametrization(Codebook, to_spec=_to_spec, from_spec=_from_spec, name="Codebook")

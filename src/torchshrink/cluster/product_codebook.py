"""The product-quantized weight parametrization: `weight = codebook[indices]` over sub-vectors.

Each row of the weight matrix (a Linear's output unit, a conv's output channel with its
input window flattened) is cut into consecutive sub-vectors of `dim` elements; each
sub-vector is one index into a table of `k` trained `dim`-vectors. As with `Codebook`,
`codebook` is an nn.Parameter, so fine-tuning trains the centroids (the gradient of a
centroid is the sum over the sub-vectors that use it). Pruned weights stay exact zeros
through an optional boolean `mask`; a sub-vector pruned entirely takes the reserved index `k`
(a zero vector), so it never pulls a centroid toward zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchshrink.cluster.codebook import index_dtype
from torchshrink.codec.structure import register_parametrization

__all__ = ["ProductCodebook"]


class ProductCodebook(nn.Module):
    """Replaces a weight of `shape` by `cat([codebook, 0])[indices]` reshaped, times `mask`.

    codebook: (k, dim) trainable centroids. indices: (rows, cols // dim) integers in [0, k]
    where rows = shape[0] and cols = the product of the other dims; k marks an all-zero
    sub-vector. mask: bool tensor of `shape` (pruned weights False), or None.
    """

    execution = "product-quantized weights (sub-vector codebook gather, dense compute)"
    codebook: nn.Parameter
    indices: torch.Tensor
    mask: torch.Tensor | None

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor, shape: tuple[int, ...],
                 mask: torch.Tensor | None = None) -> None:
        super().__init__()
        if codebook.dim() != 2:
            raise ValueError(f"codebook must be (k, dim), got shape {list(codebook.shape)}")
        self.shape = tuple(int(s) for s in shape)
        k, dim = codebook.shape
        rows = self.shape[0]
        cols = 1
        for s in self.shape[1:]:
            cols *= s
        if cols % dim or tuple(indices.shape) != (rows, cols // dim):
            raise ValueError(f"indices of shape {list(indices.shape)} do not cut a {list(self.shape)} weight into "
                             f"{dim}-element sub-vectors")
        self.codebook = nn.Parameter(codebook.detach().clone().float())
        self.register_buffer("indices", indices.detach().clone().to(index_dtype(int(k))))
        self.register_buffer("mask", None if mask is None else mask.detach().clone().to(torch.bool).reshape(self.shape))

    @property
    def k(self) -> int:
        return int(self.codebook.shape[0])

    @property
    def dim(self) -> int:
        return int(self.codebook.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.codebook, self.codebook.new_zeros(1, self.dim)])
        w = table[self.indices.long()].reshape(self.shape)
        if self.mask is not None:
            w = w * self.mask
        return w.to(x.dtype)

    def canonical_original(self, original: torch.Tensor) -> torch.Tensor:
        """The output never depends on the raw tensor, so store zeros (they code to nothing)."""
        return torch.zeros_like(original)

    def ts_encoding_hint(self, tensor_name: str) -> dict[str, Any] | None:
        if tensor_name == "indices":
            return {"is_index": True, "num_symbols": self.k + 1}
        return None

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}, shape={self.shape}, masked={self.mask is not None}"


def _to_spec(p: ProductCodebook) -> dict[str, Any]:
    return {"k": p.k, "dim": p.dim, "shape": list(p.shape), "masked": p.mask is not None}


def _from_spec(s: dict[str, Any]) -> ProductCodebook:
    k, dim, shape = int(s["k"]), int(s["dim"]), tuple(int(v) for v in s["shape"])
    if k < 1 or dim < 1 or not shape or any(v < 0 for v in shape):
        raise ValueError(f"bad ProductCodebook spec {s}")
    cols = 1
    for v in shape[1:]:
        cols *= v
    if cols % dim:
        raise ValueError(f"dim {dim} does not divide the {cols} columns of a {list(shape)} weight")
    mask = torch.zeros(shape, dtype=torch.bool) if s.get("masked") else None
    return ProductCodebook(torch.zeros(k, dim), torch.zeros((shape[0], cols // dim), dtype=index_dtype(k)), shape,
                           mask)


register_parametrization(ProductCodebook, to_spec=_to_spec, from_spec=_from_spec, name="ProductCodebook")

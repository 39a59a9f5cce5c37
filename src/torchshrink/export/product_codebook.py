"""ONNX form of a product-quantized weight: the codebook table and the sub-vector indices as
initializers, the weight rebuilt in the graph by Gather + Reshape (and a Mul by the pruning
mask), so the file keeps one small index per `dim` weights instead of dense floats."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ProductCodebookWeight"]


class ProductCodebookWeight(nn.Module):
    """`forward(_)` returns the weight of a `ProductCodebook`; used inside `CodebookLayer`."""

    table: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor | None
    keeps_packed = True  # no constant folding: the gather must stay in the graph

    def __init__(self, pc: Any) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in pc.shape)
        table = torch.cat([pc.codebook.detach().float(), pc.codebook.detach().new_zeros(1, pc.dim)])
        self.register_buffer("table", table)
        self.register_buffer("indices", pc.indices.detach().clone().reshape(-1))
        mask = pc.mask
        self.register_buffer("mask", None if mask is None else mask.detach().clone())

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        w = self.table[self.indices.long()].reshape(self.shape)
        if self.mask is not None:
            w = w * self.mask.to(w.dtype)
        return w

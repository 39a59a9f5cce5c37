"""Embedding lookups on a bit-packed table: dequantize the rows looked up, not the table.

Dequantizing a 32k x 768 table costs 98 MB of float32 on every call; a lookup of a batch of
ids needs only its own rows. Rows start on byte boundaries when width x bits is a multiple of
8, and each row's grids (one per row, or one per group along the width) follow it.
"""

from __future__ import annotations

from typing import Any

import torch

from torchshrink.quant.fake import dequantize_codes
from torchshrink.quant.packing import unpack

__all__ = ["rows_addressable", "lookup_rows"]


def rows_addressable(layer: Any) -> bool:
    """`layer` (a WeightOnlyLayer) is an embedding whose rows can be read one by one."""
    return (layer.op["kind"] == "embedding" and layer.col_scale is None and layer.granularity != "tensor"
            and (layer.shape[1] * layer.bits) % 8 == 0)


def lookup_rows(layer: Any, ids: torch.Tensor) -> torch.Tensor:
    """`F.embedding(ids, layer.dequantized_weight())`, bit for bit, from the rows of `ids` only."""
    rows, width = layer.shape
    flat = ids.reshape(-1)
    codes = unpack(layer.packed.reshape(rows, -1)[flat].reshape(-1), layer.bits, flat.numel() * width,
                   dtype=torch.uint8)
    per_row = layer.scale.shape[0] // rows  # grids per table row: 1 per channel, width / group_size
    scale = layer.scale.reshape(rows, per_row)[flat].reshape(-1, 1)
    zero = torch.zeros_like(scale) if layer.zero_point is None else \
        layer.zero_point.reshape(rows, per_row)[flat].reshape(-1, 1).float()
    # the same elementwise operations as dequantized_weight, on the rows looked up only
    w = dequantize_codes(codes.reshape(scale.shape[0], -1), scale, zero, layer.bits, layer.symmetric)
    return w.reshape(*ids.shape, width)

"""Resident memory: the bytes of every tensor a model holds, each storage counted once."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["resident_bytes"]


def resident_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of `model` (parametrization originals included, as
    they are registered tensors), with tensors that share a storage (tied weights, views)
    counted once by the storage they live in."""
    seen: dict[tuple[str, int], int] = {}
    tensors: list[torch.Tensor] = [p for _, p in model.named_parameters(remove_duplicate=False)]
    tensors += [b for _, b in model.named_buffers(remove_duplicate=False) if b is not None]
    for t in tensors:
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        seen[key] = max(seen.get(key, 0), storage.nbytes())
    return sum(seen.values())

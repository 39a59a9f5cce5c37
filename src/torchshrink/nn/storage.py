"""Tied and shared tensors, found once by storage."""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["alias_groups"]


def _identity(t: torch.Tensor) -> tuple[object, ...]:
    # Same storage, offset, shape, strides and dtype: the same tensor seen under two names.
    # Views that only overlap are different tensors and are stored separately.
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype)


def alias_groups(state: Mapping[str, object]) -> dict[str, str]:
    """{alias key: first key} for every state_dict entry that is the same tensor as an
    earlier entry (tied embedding and head, one Parameter in two modules)."""
    first: dict[tuple[object, ...], str] = {}
    out: dict[str, str] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.numel() == 0 or value.is_meta:
            continue
        ident = _identity(value)
        if ident in first:
            out[key] = first[ident]
        else:
            first[ident] = key
    return out

"""Giving back the pages of a memory-mapped artifact that a decoder has finished reading.

A loader decodes each tensor from a view of the file map; pages of a map count in resident
memory once read, so a long stream (an LM head's codes) would sit in memory beside its
decoded values until the tensor is done. Decoders that read their stream front to back call
`release(view, upto)` as they go; it drops the pages when `view` lies inside a map that
registered itself here (`MappedArtifact`), and does nothing for any other buffer (dropping
pages of ordinary memory would zero them). The data stays in the page cache: a later read is
cheap and sees the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["address", "register", "unregister", "release"]

# (first address, one past the last, drop(start offset, end offset)) per open map
_MAPS: dict[int, tuple[int, int, Callable[[int, int], None]]] = {}


def address(view: memoryview) -> int:
    """The memory address of a buffer's first byte (0 for an empty one)."""
    return int(np.frombuffer(view, dtype=np.uint8, count=min(1, len(view))).ctypes.data) if len(view) else 0


def register(key: int, base: int, size: int, drop: Callable[[int, int], None]) -> None:
    _MAPS[key] = (base, base + size, drop)


def unregister(key: int) -> None:
    _MAPS.pop(key, None)


def release(view: memoryview | bytes, upto: int) -> None:
    """Drop the pages of view[:upto] if `view` is part of a registered map (bytes never are)."""
    if not _MAPS or upto <= 0 or not isinstance(view, memoryview) or not len(view):
        return
    at = address(view)
    for base, end, drop in _MAPS.values():
        if base <= at < end:
            drop(at - base, at - base + min(upto, len(view)))
            return

"""Sparse index coding by relative gaps (Deep Compression, section 4 and figure 3).

A sparse tensor is the positions of its non-background elements plus their values. Positions
are stored as gaps: the number of background elements skipped before each element.

- Fixed width (the paper's scheme): each gap takes `bits` bits. A gap that does not fit is
  split by *filler* entries: a filler skips 2**bits - 1 background elements and then stores one
  background element explicitly (the paper's "padding zero"), so it also costs a value.
- Entropy coded: gap symbols in [0, cap) mean "skip that many, then an element"; the symbol
  `cap` is a filler that only skips `cap` positions and carries no value. The gap symbols are
  then entropy coded (ANS), which adapts to the real gap distribution and usually wins.

All transforms are vectorized.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "gaps_of",
    "fixed_gaps",
    "fixed_positions",
    "escaped_gaps",
    "escaped_positions",
    "pack_bits",
    "unpack_bits",
    "best_cap",
]


def gaps_of(positions: np.ndarray) -> np.ndarray:
    """Background elements skipped before each (sorted, distinct) position."""
    p = np.asarray(positions, dtype=np.int64)
    return np.diff(np.concatenate([[-1], p])) - 1


def fixed_gaps(positions: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's fixed-width scheme: (gaps, is_filler) with every gap < 2**bits.

    A filler entry has gap 2**bits - 1 and stands for one explicit background element.
    """
    cap = (1 << bits) - 1
    g = gaps_of(positions)
    nfill = g // (cap + 1)
    total = int((nfill + 1).sum())
    out = np.full(total, cap, dtype=np.int64)
    filler = np.ones(total, dtype=bool)
    real = np.cumsum(nfill + 1) - 1
    out[real] = g % (cap + 1)
    filler[real] = False
    return out, filler


def fixed_positions(gaps: np.ndarray) -> np.ndarray:
    """Positions of every entry (fillers included) of a fixed-width gap stream."""
    return np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1


def escaped_gaps(positions: np.ndarray, cap: int) -> np.ndarray:
    """Entropy-coding scheme: symbols in [0, cap] where `cap` skips cap positions, no element."""
    g = gaps_of(positions)
    nfill = g // cap
    total = int((nfill + 1).sum())
    out = np.full(total, cap, dtype=np.int64)
    out[np.cumsum(nfill + 1) - 1] = g % cap
    return out


def escaped_positions(symbols: np.ndarray, cap: int) -> np.ndarray:
    """Inverse of `escaped_gaps`: the element positions."""
    s = np.asarray(symbols, dtype=np.int64)
    real = s < cap
    advance = np.where(real, s + 1, cap)
    return (np.cumsum(advance) - 1)[real]


def best_cap(positions: np.ndarray) -> int:
    """The escape cap (a power of two) that minimizes the empirical entropy of the gap stream."""
    from torchshrink.codec.ans import entropy_bits

    g = gaps_of(positions)
    if g.size == 0:
        return 1
    best, best_bits = 1, np.inf
    cap = 1
    top = max(2, int(g.max()) + 1)
    while True:
        s = escaped_gaps(positions, cap)
        bits = entropy_bits(np.bincount(s, minlength=cap + 1)) + 2 * (cap + 1)  # + a rough table cost
        if bits < best_bits:
            best, best_bits = cap, bits
        if cap >= top or cap >= 1 << 12:
            return best
        cap *= 2


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative ints < 2**bits at `bits` bits each, MSB first."""
    v = np.asarray(values, dtype=np.int64)
    if v.size == 0:
        return b""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    b = ((v[:, None] >> shifts) & 1).astype(np.uint8).ravel()
    return np.packbits(b).tobytes()


def unpack_bits(data: bytes | memoryview, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size * 8 < bits * count:
        raise ValueError("packed stream is truncated")
    b = np.unpackbits(raw, count=bits * count).reshape(count, bits).astype(np.int64)
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    return b @ weights if count else np.zeros(0, dtype=np.int64)

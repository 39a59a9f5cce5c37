"""Canonical, length-limited Huffman coding: compiled C where it builds (`codec.native`),
else vectorized NumPy writing the same bytes.

Code lengths come from the usual heap construction, limited to `MAX_LEN` bits by flattening the
histogram when needed, and codes are canonical so only the lengths are stored. Encoding writes
every bit of every code in one pass. Decoding peeks `MAX_LEN` bits through a lookup table; the
stream is cut into chunks whose bit lengths are stored, so all chunks decode side by side, one
NumPy step per symbol position.
"""

from __future__ import annotations

import functools
import heapq

import numpy as np

from torchshrink.codec import native

__all__ = ["MAX_LEN", "code_lengths", "canonical_codes", "encode", "decode", "chunks_for"]

MAX_LEN = 15


def chunks_for(n: int) -> int:
    """Parallel chunks for an n-symbol stream (>= ~4k symbols each, at most 256)."""
    c = 1
    while c < 256 and n >= c * 2 * 4096:
        c *= 2
    return c


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code lengths (0 for unused symbols), none longer than `max_len`."""
    counts = np.asarray(counts, dtype=np.int64)
    # The writer's size screen and the coder itself ask for the same histogram's lengths.
    return np.frombuffer(_cached_lengths(counts.tobytes(), max_len), dtype=np.int64).copy()


@functools.lru_cache(maxsize=8)
def _cached_lengths(counts_bytes: bytes, max_len: int) -> bytes:
    return _code_lengths(np.frombuffer(counts_bytes, dtype=np.int64), max_len).tobytes()


def _code_lengths(counts: np.ndarray, max_len: int) -> np.ndarray:
    used = np.flatnonzero(counts > 0)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used] = 1
        return lengths
    c = counts[used].astype(np.float64)
    floor = c.max() / (1 << (max_len - 1))
    while True:
        heap: list[tuple[float, int, list[int]]] = [(float(v), i, [i]) for i, v in enumerate(c)]
        heapq.heapify(heap)
        depth = np.zeros(used.size, dtype=np.int64)
        tie = used.size
        while len(heap) > 1:
            a = heapq.heappop(heap)
            b = heapq.heappop(heap)
            members = a[2] + b[2]
            depth[members] += 1
            heapq.heappush(heap, (a[0] + b[0], tie, members))
            tie += 1
        if depth.max() <= max_len:
            lengths[used] = depth
            return lengths
        # Too deep: flatten the distribution (raise the rarest counts) and rebuild; at worst all
        # counts become equal, whose depth ceil(log2(symbols)) fits.
        c = np.maximum(c, floor)
        floor *= 2


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values for the given lengths (symbols ordered by (length, symbol))."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    code = 0
    prev = 0
    for sym in order:
        ln = int(lengths[sym])
        code <<= ln - prev
        codes[sym] = code
        code += 1
        prev = ln
    return codes


def _pack(symbols: np.ndarray, lengths: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, int]:
    ln = lengths[symbols]
    cd = codes[symbols]
    total = int(ln.sum())
    starts = np.concatenate([[0], np.cumsum(ln)[:-1]])
    bits = np.zeros(total, dtype=np.uint8)
    for j in range(int(ln.max()) if ln.size else 0):
        sel = ln > j
        bits[starts[sel] + j] = (cd[sel] >> (ln[sel] - 1 - j)) & 1
    return bits, total


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, list[int]]:
    """(bit stream, chunk bit lengths except the last). Symbols are split into `chunks_for(n)`
    equal chunks so the decoder can work on all of them at once."""
    s = np.asarray(symbols).ravel()
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = canonical_codes(lengths)
    n = s.size
    chunks = chunks_for(n)
    if native.enabled() and lengths.max(initial=0) <= MAX_LEN:
        return native.huff_encode(s, lengths, codes, chunks)
    s = np.ascontiguousarray(s, dtype=np.int64)
    if np.any(lengths[s] == 0):
        raise ValueError("a symbol has no code")
    bits, _ = _pack(s, lengths, codes)
    per = -(-n // chunks) if n else 0
    ln = lengths[s]
    chunk_bits = [int(ln[i * per : (i + 1) * per].sum()) for i in range(chunks - 1)]
    return np.packbits(bits).tobytes(), chunk_bits


def decode(data: bytes | memoryview, lengths: np.ndarray, n: int, chunk_bits: list[int], *,
           compact: bool = False) -> np.ndarray:
    """Inverse of `encode`: int64 symbols, or with compact=True (compiled path) the smallest
    unsigned dtype that holds them. Raises ValueError on a malformed stream."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.max(initial=0) > MAX_LEN or lengths.max(initial=0) == 0:
        raise ValueError("bad Huffman code lengths")
    if float(np.sum(np.where(lengths > 0, 2.0 ** -lengths.astype(np.float64), 0.0))) > 1.0 + 1e-12:
        raise ValueError("Huffman code lengths violate the Kraft inequality")
    codes = canonical_codes(lengths)
    ml = int(lengths.max())
    # Lookup table over every ml-bit window: the symbol whose code prefixes it, and its length.
    lut_sym = np.full(1 << ml, -1, dtype=np.int64)
    lut_len = np.zeros(1 << ml, dtype=np.int64)
    for sym in np.flatnonzero(lengths):
        ln = int(lengths[sym])
        lo = int(codes[sym]) << (ml - ln)
        lut_sym[lo : lo + (1 << (ml - ln))] = sym
        lut_len[lo : lo + (1 << (ml - ln))] = ln
    chunks = chunks_for(n)
    if len(chunk_bits) != chunks - 1:
        raise ValueError("Huffman chunk table does not match the stream length")
    per = -(-n // chunks)
    pos = np.concatenate([[0], np.cumsum(np.asarray(chunk_bits, dtype=np.int64))])
    if native.enabled():
        out_dtype = np.int64 if not compact else np.uint8 if lengths.size <= 256 else np.uint16
        return native.huff_decode(data, lut_sym, lut_len, ml, n, chunks, pos, out_dtype)
    raw = np.frombuffer(data, dtype=np.uint8)
    nbits = raw.size * 8
    buf = np.concatenate([raw, np.zeros(4, np.uint8)]).astype(np.int64)
    counts = np.array([max(0, min(per, n - i * per)) for i in range(chunks)])
    out = np.zeros(chunks * per, dtype=np.int64)
    win_mask = (1 << ml) - 1
    for t in range(per):
        active = counts > t
        p = pos[active]
        if np.any(p + 1 > nbits):
            raise ValueError("Huffman stream is truncated")
        byte = p >> 3
        word = (buf[byte] << 16) | (buf[byte + 1] << 8) | buf[byte + 2]
        if ml > 17:
            raise ValueError("bad Huffman code lengths")
        window = (word >> (24 - (p & 7) - ml)) & win_mask
        sym = lut_sym[window]
        if np.any(sym < 0):
            raise ValueError("invalid Huffman code in stream")
        out[np.flatnonzero(active) * per + t] = sym
        pos[active] = p + lut_len[window]
    if np.any(pos > nbits):
        raise ValueError("Huffman stream is truncated")
    return np.concatenate([out[i * per : i * per + counts[i]] for i in range(chunks)])

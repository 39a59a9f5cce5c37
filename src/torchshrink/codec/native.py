"""ctypes bindings of the compiled entropy coders (`coder_source`), used by `codec.ans` and
`codec.huffman` when the library builds here; they fall back to their NumPy loops otherwise
(and when TORCHSHRINK_NATIVE_CODEC=0, which tests use to compare the two). Both paths write and
read the same bytes."""

from __future__ import annotations

import ctypes
import functools
import os
import sys

import numpy as np

from torchshrink import native
from torchshrink.codec import pages
from torchshrink.codec.coder_source import SOURCE

__all__ = ["enabled", "rans_encode", "rans_decode", "huff_encode", "huff_decode"]

_WIDTH = {np.dtype(np.uint8): 1, np.dtype(np.uint16): 2, np.dtype(np.int64): 8}
_PART = 1 << 20  # bytes of stream decoded between two page releases


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = native.build("coder", SOURCE)
    if lib is None:
        return None
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.ts_rans_encode.argtypes = [p, i32, i64, p, p, i64, i64, p, p, i64]
    lib.ts_rans_decode.argtypes = [p, i64, p, i64, p, p, p, i64, p, i32, i64, i64, p]
    lib.ts_huff_encode.argtypes = [p, i32, i64, p, p, i64, i64, p, p, i64]
    lib.ts_huff_decode.argtypes = [p, i64, p, p, i32, i64, i64, i64, p, p, i32, i64, i64]
    for fn in (lib.ts_rans_encode, lib.ts_rans_decode, lib.ts_huff_encode, lib.ts_huff_decode):
        fn.restype = i64
    return lib


def _allowed() -> bool:
    """Little-endian like the streams, and not switched off by TORCHSHRINK_NATIVE_CODEC=0."""
    return os.environ.get("TORCHSHRINK_NATIVE_CODEC", "1") != "0" and sys.byteorder == "little"


def enabled() -> bool:
    """Whether the compiled coders run here (built, and `_allowed`)."""
    return _allowed() and _library() is not None


def _lib() -> ctypes.CDLL:
    lib = _library()
    assert lib is not None
    return lib


def _symbols(symbols: np.ndarray) -> tuple[np.ndarray, int]:
    s = symbols.ravel()
    if s.dtype not in _WIDTH:
        s = s.astype(np.int64)
    return np.ascontiguousarray(s), _WIDTH[s.dtype]


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _table(freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, cumulative frequencies) as the C coder reads them (uint32)."""
    f = np.ascontiguousarray(freqs, dtype=np.uint32)
    return f, np.concatenate([[0], np.cumsum(f, dtype=np.uint64)[:-1]]).astype(np.uint32)


def rans_encode(symbols: np.ndarray, freqs: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(final lane states uint32, words uint16 in decoding order)."""
    s, sw = _symbols(symbols)
    f, cum = _table(freqs)
    states = np.empty(lanes, dtype=np.uint32)
    words = np.empty(s.size, dtype=np.uint16)  # at most one word per symbol
    k = _lib().ts_rans_encode(_ptr(s), sw, s.size, _ptr(f), _ptr(cum), f.size, lanes, _ptr(states),
                              _ptr(words), words.size)
    if k < 0:
        raise ValueError("a symbol has zero frequency")
    return states, words[:k]


def rans_decode(stream: memoryview | bytes, offset: int, states: np.ndarray, freqs: np.ndarray, n: int,
                out_dtype: type) -> np.ndarray:
    """Symbols of the rANS stream whose 16-bit words start at `offset` of `stream` (after the
    lane states), in parts: the pages of a memory-mapped stream are released as they are read."""
    buf = np.frombuffer(stream, dtype=np.uint8)
    nw = (buf.size - offset) // 2
    f, cum = _table(freqs)
    lut = np.repeat(np.arange(f.size, dtype=np.uint16), f.astype(np.int64))
    st = np.array(states, dtype=np.uint32)  # carried from part to part
    out: np.ndarray = np.empty(n, dtype=out_dtype)
    lanes = st.size
    steps = -(-n // lanes)
    ptr = np.zeros(1, dtype=np.int64)
    words = buf.ctypes.data + offset
    part = max(1, _PART // lanes)  # at most 2 bytes a symbol: <= 2 MiB of stream a part
    for t0 in range(0, steps, part):
        rc = _lib().ts_rans_decode(_ptr(st), lanes, words, nw, _ptr(f), _ptr(cum), _ptr(lut), n, _ptr(out),
                                   _WIDTH[out.dtype], t0, t0 + part, _ptr(ptr))
        if rc == -1:
            raise ValueError("rANS stream is truncated")
        if rc < 0:
            raise ValueError("rANS stream has an invalid state")
        pages.release(stream, offset + 2 * int(ptr[0]))
    if int(ptr[0]) != nw or (buf.size - offset) % 2:
        raise ValueError("rANS stream has trailing data")
    return out


def huff_encode(symbols: np.ndarray, lengths: np.ndarray, codes: np.ndarray,
                chunks: int) -> tuple[bytes, list[int]]:
    s, sw = _symbols(symbols)
    ln = np.ascontiguousarray(lengths, dtype=np.uint8)
    cd = np.ascontiguousarray(codes, dtype=np.uint32)
    per = -(-s.size // chunks) if s.size else 0
    chunk_bits = np.zeros(max(chunks - 1, 1), dtype=np.int64)
    cap = (s.size * int(ln.max(initial=0)) + 7) // 8 + 1
    out = np.empty(cap, dtype=np.uint8)
    k = _lib().ts_huff_encode(_ptr(s), sw, s.size, _ptr(ln), _ptr(cd), ln.size, per, _ptr(chunk_bits),
                              _ptr(out), cap)
    if k < 0:
        raise ValueError("a symbol has no code")
    return out[:k].tobytes(), chunk_bits[: chunks - 1].tolist()


def huff_decode(data: memoryview | bytes, lut_sym: np.ndarray, lut_len: np.ndarray, ml: int, n: int,
                chunks: int, starts: np.ndarray, out_dtype: type) -> np.ndarray:
    """Symbols of a chunked Huffman stream, decoded a group of chunks at a time (the pages of a
    memory-mapped stream are released as they are read)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    sym = np.ascontiguousarray(lut_sym, dtype=np.int32)
    lens = np.ascontiguousarray(lut_len, dtype=np.uint8)
    st = np.ascontiguousarray(starts, dtype=np.int64)
    out: np.ndarray = np.empty(n, dtype=out_dtype)
    per = -(-n // chunks)
    group = max(1, chunks * _PART // max(raw.size, 1))
    for c0 in range(0, chunks, group):
        rc = _lib().ts_huff_decode(_ptr(raw) if raw.size else 0, raw.size, _ptr(sym), _ptr(lens), ml, n, chunks,
                                   per, _ptr(st), _ptr(out), _WIDTH[out.dtype], c0, c0 + group)
        if rc == -1:
            raise ValueError("Huffman stream is truncated")
        if rc < 0:
            raise ValueError("invalid Huffman code in stream")
        if c0 + group < chunks:
            pages.release(data, int(st[c0 + group]) // 8)
    return out


@functools.cache
def _ctx_library() -> ctypes.CDLL | None:
    from torchshrink.codec.context_source import SOURCE as CTX_SOURCE

    lib = native.build("ctxcoder", CTX_SOURCE)
    if lib is None:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.ts_ctx_encode.argtypes = [p, p, i64, i64, i64, p, i64]
    lib.ts_ctx_decode.argtypes = [p, i64, i64, i64, i64, p, p, i64]
    lib.ts_ctx_encode.restype = lib.ts_ctx_decode.restype = i64
    return lib


def ctx_enabled() -> bool:
    """Whether the compiled context coder runs here (as `enabled` for the other coders)."""
    return _allowed() and _ctx_library() is not None


def ctx_encode(mask: np.ndarray, values: np.ndarray, n_values: int, depth: int) -> bytes:
    lib = _ctx_library()
    assert lib is not None
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    v = np.ascontiguousarray(values, dtype=np.int64)
    cap = m.size * (depth + 1) + 64  # a coded bit costs at most ~6.1 bits at the slowest probability
    out = np.empty(cap, dtype=np.uint8)
    k = lib.ts_ctx_encode(_ptr(m), _ptr(v) if v.size else 0, m.shape[0], m.shape[1], n_values, _ptr(out), cap)
    if k < 0:
        raise MemoryError(f"the context coder failed ({k})")
    return out[:k].tobytes()


def ctx_decode(data: bytes | memoryview, rows: int, cols: int, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    lib = _ctx_library()
    assert lib is not None
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size < 5:
        raise ValueError("context-coded stream is truncated")
    n = rows * cols
    pos, vals = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    k = lib.ts_ctx_decode(_ptr(raw), raw.size, rows, cols, n_values, _ptr(pos), _ptr(vals), n)
    if k == -1:
        raise ValueError("context-coded value out of range")
    if k < 0:
        raise MemoryError(f"the context decoder failed ({k})")
    return pos[:k].copy(), vals[:k].copy()

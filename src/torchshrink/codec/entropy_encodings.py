"""Entropy-coded tensor encodings for the artifact: ANS, Huffman and sparse gap coding.

Each applies to any tensor whose values come from a small alphabet: codebook indices, masks,
integer quantization grids, or float tensors with few distinct values. The tensor's bit
patterns are mapped to symbols (an offset range for integers, else a table of distinct values),
so the round trip is bit-exact for any dtype. Everything needed to decode is in the payload;
the JSON meta stays empty so the manifest stays small.

- `ans`: order-0 rANS over all elements.
- `huffman`: canonical Huffman over all elements.
- `sparse_ans`: positions of the non-background elements as escaped gaps, ANS-coded, plus the
  values at those positions, ANS-coded (Deep Compression's sparse format with entropy-coded
  gaps).
- `sparse_fixed`: the paper's exact format: fixed-width gaps with filler entries, values
  Huffman-coded.
The writer keeps whichever is smallest per tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torchshrink.codec import ans, huffman, sparse
from torchshrink.codec.encodings import TensorHint, register_encoding, varint

__all__ = [
    "MAX_ALPHABET",
    "AnsEncoding",
    "HuffmanEncoding",
    "SparseAnsEncoding",
    "SparseFixedEncoding",
    "SparseRawEncoding",
    "Writer",
    "Reader",
    "symbolize",
    "desymbolize",
]

MAX_ALPHABET = 4096
_TWIN: dict[int, tuple[torch.dtype, Any]] = {1: (torch.uint8, np.uint8), 2: (torch.int16, np.int16), 4: (torch.int32, np.int32),
         8: (torch.int64, np.int64)}


class Writer:
    """Bytes with LEB128 varints."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def varint(self, v: int) -> Writer:
        self.parts.append(varint(int(v)))
        return self

    def svarint(self, v: int) -> Writer:
        v = int(v)
        return self.varint(2 * v if v >= 0 else -2 * v - 1)

    def varints(self, vs: np.ndarray) -> Writer:
        for v in np.asarray(vs).tolist():
            self.varint(v)
        return self

    def raw(self, b: bytes) -> Writer:
        self.parts.append(bytes(b))
        return self

    def block(self, b: bytes) -> Writer:
        """Length-prefixed bytes."""
        return self.varint(len(b)).raw(b)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class Reader:
    """The inverse of Writer; every read is bounds-checked (ValueError when short)."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.buf = memoryview(data)
        self.pos = 0

    def varint(self, limit: int = 1 << 62) -> int:
        v = shift = 0
        while True:
            if self.pos >= len(self.buf):
                raise ValueError("payload is truncated")
            b = self.buf[self.pos]
            self.pos += 1
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                raise ValueError("varint is too long")
        if v > limit:
            raise ValueError(f"value {v} exceeds its bound {limit}")
        return v

    def svarint(self) -> int:
        v = self.varint()
        return v >> 1 if not v & 1 else -((v + 1) >> 1)

    def varints(self, count: int, limit: int = 1 << 62) -> np.ndarray:
        return np.array([self.varint(limit) for _ in range(count)], dtype=np.int64)

    def raw(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError("payload is truncated")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def block(self) -> memoryview:
        return self.raw(self.varint(len(self.buf)))

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise ValueError("payload has trailing bytes")


_SLICE = 1 << 20  # symbols mapped back at a time, so no tensor-sized int64 array is made


def _raw_view(t: torch.Tensor) -> np.ndarray:
    """The tensor's bit patterns as a flat read-only NumPy view (no copy when contiguous on CPU)."""
    twin, _ = _TWIN[t.element_size()]
    t = t.detach().cpu().contiguous()
    v = (t.view(twin) if t.dtype != twin else t).reshape(-1).numpy().view()
    v.flags.writeable = False
    return v


def _int_view(t: torch.Tensor) -> np.ndarray:
    return _raw_view(t).astype(np.int64)


def symbolize(t: torch.Tensor, w: Writer) -> tuple[np.ndarray, int] | None:
    """Map a tensor's bit patterns to symbols 0..A-1; write the alphabet to `w`.

    Returns (symbols, A), the symbols as uint8 (A <= 256) or uint16: a uint8 tensor whose
    values start at 0 is its own symbol array, and no tensor-sized int64 copy is made. None
    when there are too many distinct values to pay off.
    """
    if t.numel() == 0 or t.element_size() not in _TWIN:
        return None
    v = _raw_view(t)
    lo, hi = int(v.min()), int(v.max())
    if hi - lo < MAX_ALPHABET:
        w.raw(b"\x00").svarint(lo).varint(hi - lo + 1)
        sd = np.dtype(np.uint8 if hi - lo < 256 else np.uint16)
        if lo == 0 and v.dtype == sd:
            return v, hi + 1
        out = np.empty(v.size, dtype=sd)
        for i in range(0, v.size, _SLICE):
            out[i : i + _SLICE] = v[i : i + _SLICE].astype(np.int64) - lo
        return out, hi - lo + 1
    uniq, inv = np.unique(v, return_inverse=True)
    if uniq.size > MAX_ALPHABET or uniq.size * 4 > v.size:
        return None
    _, np_twin = _TWIN[t.element_size()]
    w.raw(b"\x01").varint(uniq.size).raw(uniq.astype(np_twin).astype(np.dtype(np_twin).newbyteorder("<")).tobytes())
    return inv.reshape(-1).astype(np.uint16), int(uniq.size)


def read_alphabet(r: Reader, dtype: torch.dtype) -> tuple[np.ndarray | int, int]:
    """(offset or value table, A) as written by `symbolize`."""
    mode = r.raw(1)[0]
    size = torch.empty((), dtype=dtype).element_size()
    if mode == 0:
        lo = r.svarint()
        a = r.varint(MAX_ALPHABET)
        return lo, a
    if mode == 1:
        a = r.varint(MAX_ALPHABET)
        _, np_twin = _TWIN[size]
        table = np.frombuffer(r.raw(a * size), dtype=np.dtype(np_twin).newbyteorder("<")).astype(np.int64)
        return table, a
    raise ValueError(f"unknown alphabet mode {mode}")




def desymbolize(symbols: np.ndarray, alphabet: np.ndarray | int, shape: tuple[int, ...],
                dtype: torch.dtype) -> torch.Tensor:
    size = torch.empty((), dtype=dtype).element_size()
    twin, np_twin = _TWIN[size]
    info = np.iinfo(np_twin)
    if (isinstance(alphabet, int) and symbols.dtype.kind == "u" and symbols.dtype.itemsize == size
            and symbols.flags.writeable and symbols.flags.c_contiguous and symbols.size):
        # Symbols already as wide as the values: map them in place (the caller hands over an
        # array of its own), so a large tensor is never held twice while it is decoded.
        top = int(symbols.max())
        # the signed view must keep every symbol's value, and adding the offset must not wrap
        if top > info.max or alphabet < info.min or alphabet + top > info.max:
            raise ValueError("decoded values do not fit the dtype")
        result = symbols.view(np_twin)
        if alphabet:
            result += np_twin(alphabet)
        return _as_tensor(result, twin, dtype, shape)
    result = np.empty(symbols.size, dtype=np_twin)
    for i in range(0, symbols.size, _SLICE):
        s = symbols[i : i + _SLICE].astype(np.int64)
        vals = s + alphabet if isinstance(alphabet, int) else alphabet[s]
        if vals.size and (int(vals.min()) < info.min or int(vals.max()) > info.max):
            # 1-byte tensors go through uint8; anything else out of range is corruption.
            raise ValueError("decoded values do not fit the dtype")
        result[i : i + _SLICE] = vals
    return _as_tensor(result, twin, dtype, shape)


def _as_tensor(result: np.ndarray, twin: torch.dtype, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    out = torch.from_numpy(result).view(twin)
    if dtype != twin:
        out = out.view(dtype)
    return out.reshape(shape)


def _guarded(fn: Any) -> Any:
    """Decoders meet corrupted bytes: any low-level failure becomes the ValueError the loader
    turns into an ArtifactError."""

    def wrapper(self: Any, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
                dtype: torch.dtype) -> torch.Tensor:
        try:
            return fn(self, payload, meta, shape, dtype)
        except ValueError:
            raise
        except (IndexError, KeyError, TypeError, OverflowError, MemoryError) as e:
            raise ValueError(f"corrupted {self.name} payload: {e}") from e

    wrapper.__doc__ = fn.__doc__
    return wrapper


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        if not isinstance(d, int) or d < 0:
            raise ValueError(f"bad shape {shape}")
        n *= d
    return n


def _table_cost(f: np.ndarray) -> int:
    """Bytes of a varint frequency table."""
    return int(np.where(f < 128, 1, np.where(f < 16384, 2, 3)).sum())


def _write_ans(w: Writer, symbols: np.ndarray, a: int) -> None:
    """Frequency table, then the rANS stream. The table is stored at the precision (6..16 bits)
    that minimizes table bytes plus coded bits, which matters for small tensors."""
    counts = np.bincount(symbols, minlength=a)
    used = int((counts > 0).sum())
    best: tuple[float, int, np.ndarray] | None = None
    for p in range(max(6, int(np.ceil(np.log2(max(used, 2))))), ans.PREC + 1):
        f = ans.quantize_freqs(counts, p)
        nz = counts > 0
        coded = float((counts[nz] * (p - np.log2(f[nz]))).sum()) / 8
        cost = coded + _table_cost(f)
        if best is None or cost < best[0]:
            best = (cost, p, f)
    assert best is not None
    _, p, f = best
    w.raw(bytes([p])).varints(f)
    w.block(ans.encode(symbols, f << (ans.PREC - p), counts))


def _read_ans(r: Reader, a: int, n: int, compact: bool = False) -> np.ndarray:
    p = r.raw(1)[0]
    if not 1 <= p <= ans.PREC:
        raise ValueError("bad ANS table precision")
    f = r.varints(a, 1 << p)
    if int(f.sum()) != 1 << p:
        raise ValueError("bad ANS frequency table")
    return ans.decode(r.block(), f << (ans.PREC - p), n, compact=compact)


def _write_huffman(w: Writer, symbols: np.ndarray, a: int) -> None:
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=a))
    w.raw(sparse.pack_bits(lengths, 4))
    stream, chunk_bits = huffman.encode(symbols, lengths)
    w.varints(np.asarray(chunk_bits, dtype=np.int64))
    w.block(stream)


def _read_huffman(r: Reader, a: int, n: int, compact: bool = False) -> np.ndarray:
    lengths = sparse.unpack_bits(r.raw((4 * a + 7) // 8), 4, a)
    chunks = huffman.chunks_for(n)
    chunk_bits = r.varints(chunks - 1, 1 << 40).tolist()
    return huffman.decode(r.block(), lengths, n, chunk_bits, compact=compact)


class _DenseEncoding:
    """Every element coded by one symbol coder; subclasses name the coder pair."""

    name = ""

    @staticmethod
    def _write(w: Writer, symbols: np.ndarray, a: int) -> None:
        raise NotImplementedError

    @staticmethod
    def _read(r: Reader, a: int, n: int, compact: bool = False) -> np.ndarray:
        raise NotImplementedError

    def encode(self, tensor: torch.Tensor, hint: TensorHint) -> tuple[bytes, dict[str, Any]] | None:
        w = Writer()
        sym = symbolize(tensor, w)
        if sym is None:
            return None
        self._write(w, sym[0], sym[1])
        return w.bytes(), {}

    @_guarded
    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        n = _numel(shape)
        r = Reader(payload)
        alphabet, a = read_alphabet(r, dtype)
        out = self._read(r, a, n, compact=True)  # desymbolize widens it slice by slice
        r.done()
        return desymbolize(out, alphabet, shape, dtype)


class AnsEncoding(_DenseEncoding):
    """Order-0 rANS over every element."""

    name = "ans"
    _write = staticmethod(_write_ans)
    _read = staticmethod(_read_ans)


class HuffmanEncoding(_DenseEncoding):
    """Canonical Huffman over every element."""

    name = "huffman"
    _write = staticmethod(_write_huffman)
    _read = staticmethod(_read_huffman)


def _background(symbols: np.ndarray, a: int) -> int:
    return int(np.argmax(np.bincount(symbols, minlength=a)))


def _write_escaped_gaps(w: Writer, pos: np.ndarray) -> None:
    """Sorted positions as escaped relative gaps: cap, count, then the ANS-coded gaps."""
    cap = sparse.best_cap(pos)
    gaps = sparse.escaped_gaps(pos, cap)
    w.varint(cap).varint(gaps.size)
    _write_ans(w, gaps, cap + 1)


def _read_escaped_gaps(r: Reader, n: int) -> np.ndarray:
    """The positions written by `_write_escaped_gaps`, checked against a tensor of n elements."""
    cap = r.varint(1 << 13)
    if cap < 1:
        raise ValueError("bad gap cap")
    count = r.varint(2 * n + 1)
    pos = sparse.escaped_positions(_read_ans(r, cap + 1, count), cap)
    if pos.size and (pos[-1] >= n or pos.size > n):
        raise ValueError("sparse positions run past the tensor")
    return pos


class _SparseEncoding:
    """The frame the sparse symbol coders share: alphabet, background symbol, then the
    subclass's positions and values of the non-background elements."""

    name = ""

    def _encode_sparse(self, w: Writer, s: np.ndarray, a: int, bg: int, pos: np.ndarray) -> None:
        raise NotImplementedError

    def _decode_sparse(self, r: Reader, n: int, a: int, bg: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, symbols there) of the non-background elements."""
        raise NotImplementedError

    def encode(self, tensor: torch.Tensor, hint: TensorHint) -> tuple[bytes, dict[str, Any]] | None:
        w = Writer()
        sym = symbolize(tensor, w)
        if sym is None:
            return None
        s, a = sym
        bg = _background(s, a)
        pos = np.flatnonzero(s != bg)
        if pos.size == 0 or pos.size > s.size // 2:
            return None  # not sparse: the dense coders do better
        self._encode_sparse(w.varint(bg), s, a, bg, pos)
        return w.bytes(), {}

    @_guarded
    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        n = _numel(shape)
        r = Reader(payload)
        alphabet, a = read_alphabet(r, dtype)
        bg = r.varint(a - 1)
        pos, vals = self._decode_sparse(r, n, a, bg)
        r.done()
        out = np.full(n, bg, dtype=np.uint16)  # symbols < MAX_ALPHABET; desymbolize widens by slices
        out[pos] = vals
        return desymbolize(out, alphabet, shape, dtype)


class SparseAnsEncoding(_SparseEncoding):
    """Escaped relative gaps (ANS) for the non-background positions, plus their values (ANS)."""

    name = "sparse_ans"

    def _encode_sparse(self, w: Writer, s: np.ndarray, a: int, bg: int, pos: np.ndarray) -> None:
        _write_escaped_gaps(w, pos)
        vals = s[pos]
        # The values never take the background symbol; remap to keep the table tight.
        _write_ans(w, np.where(vals > bg, vals - 1, vals), max(1, a - 1))

    def _decode_sparse(self, r: Reader, n: int, a: int, bg: int) -> tuple[np.ndarray, np.ndarray]:
        pos = _read_escaped_gaps(r, n)
        vals = _read_ans(r, max(1, a - 1), pos.size)
        return pos, np.where(vals >= bg, vals + 1, vals)


class SparseFixedEncoding(_SparseEncoding):
    """Deep Compression's format: fixed-width relative gaps with filler entries, and the values
    (fillers store the background value) Huffman-coded. The gap width is chosen per tensor."""

    name = "sparse_fixed"

    def _encode_sparse(self, w: Writer, s: np.ndarray, a: int, bg: int, pos: np.ndarray) -> None:
        best: tuple[int, bytes] | None = None
        for bits in range(1, 13):
            gaps, filler = sparse.fixed_gaps(pos, bits)
            vals = np.full(gaps.size, bg, dtype=np.int64)
            vals[~filler] = s[pos]
            body = Writer().varint(gaps.size).raw(sparse.pack_bits(gaps, bits))
            _write_huffman(body, vals, a)
            data = body.bytes()
            if best is None or len(data) < len(best[1]):
                best = (bits, data)
        assert best is not None
        w.raw(bytes([best[0]])).raw(best[1])

    def _decode_sparse(self, r: Reader, n: int, a: int, bg: int) -> tuple[np.ndarray, np.ndarray]:
        bits = r.raw(1)[0]
        if not 1 <= bits <= 12:
            raise ValueError("bad gap width")
        count = r.varint(n)
        gaps = sparse.unpack_bits(r.raw((count * bits + 7) // 8), bits, count)
        pos = sparse.fixed_positions(gaps)
        if pos.size and pos[-1] >= n:
            raise ValueError("sparse positions run past the tensor")
        return pos, _read_huffman(r, a, count)


class SparseRawEncoding:
    """Mostly-zero tensors of arbitrary values (a pruned layer's fp32 weights before sharing):
    escaped relative gaps (ANS) for the positions of the non-zero bit patterns, and their raw
    little-endian bytes."""

    name = "sparse_raw"

    def encode(self, tensor: torch.Tensor, hint: TensorHint) -> tuple[bytes, dict[str, Any]] | None:
        if tensor.numel() == 0 or tensor.element_size() not in _TWIN:
            return None
        v = _int_view(tensor)
        pos = np.flatnonzero(v != 0)
        if pos.size == 0 or pos.size > v.size // 2:
            return None
        w = Writer()
        _write_escaped_gaps(w, pos)
        _, np_twin = _TWIN[tensor.element_size()]
        w.raw(v[pos].astype(np_twin).astype(np.dtype(np_twin).newbyteorder("<")).tobytes())
        return w.bytes(), {}

    @_guarded
    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        n = _numel(shape)
        size = torch.empty((), dtype=dtype).element_size()
        r = Reader(payload)
        pos = _read_escaped_gaps(r, n)
        twin, np_twin = _TWIN[size]
        vals = np.frombuffer(r.raw(pos.size * size), dtype=np.dtype(np_twin).newbyteorder("<"))
        r.done()
        out = np.zeros(n, dtype=np_twin)
        out[pos] = vals
        t = torch.from_numpy(out).view(twin)
        return (t.view(dtype) if dtype != twin else t).reshape(shape)


register_encoding(AnsEncoding())
register_encoding(HuffmanEncoding())
register_encoding(SparseAnsEncoding())
register_encoding(SparseFixedEncoding())
register_encoding(SparseRawEncoding())

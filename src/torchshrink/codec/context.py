"""Context-adaptive coding of a sparse symbol tensor (the DeepCABAC idea, with a binary range coder).

A pruned, shared layer stores one symbol per weight: the background (pruned) or a codebook
index. Order-0 coders (ANS over escaped gaps and values, `sparse_ans`) ignore what the
neighbours say; this one does not. The tensor is scanned row by row as a (rows, rest) matrix and
every element is coded with an adaptive binary range coder (LZMA's: 11-bit probabilities, each
moved 1/32 of the way to every bit it codes):

- its significance (background or not) under a context of its two left neighbours, the element
  above it, and how dense its column has been so far (7 buckets) — on LeNet-300-100's fc1 the
  column is the input pixel, and the dead border pixels and the busy centre differ by 100x;
- a kept element's value as a binary tree of bits under the context of the previous kept value
  and whether it was the left neighbour (neighbouring pixels' weights to the same unit are
  alike).

Measured on the Deep Compression LeNet-300-100 (mnist5k, seed 0): fc1's indices take 10,936 B
as `sparse_ans`, 10,122 B by NNCodec (ISO/IEC 15938-17, DeepCABAC) and 10,024 B here
(bench/results/nncodec.json has every tensor). The coder is compiled once as plain C
(`context_source`) where a C compiler is found; its Python twin here writes the same bytes but
is far slower, so without a compiler the writer tries it only on tensors of at most
MAX_ELEMENTS (524,288).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torchshrink.codec.encodings import TensorHint, register_encoding
from torchshrink.codec.entropy_encodings import (
    Reader,
    Writer,
    _background,
    _guarded,
    _numel,
    desymbolize,
    read_alphabet,
    symbolize,
)

__all__ = ["MAX_ELEMENTS", "MAX_ELEMENTS_NATIVE", "MAX_VALUES", "max_elements", "SparseContextEncoding", "decode", "encode", "value_bits"]

MAX_VALUES = 256  # value alphabets up to 8-bit trees: 2 (values + 1) x 256 probabilities at most
# In Python the coder takes seconds per million elements each way (and the writer decodes what
# it wrote to check it): up to LeNet-sized layers (400k), not a language model's matrices.
MAX_ELEMENTS = 1 << 19
MAX_ELEMENTS_NATIVE = 1 << 24


def max_elements() -> int:
    """The largest tensor the writer tries this coder on, here."""
    from torchshrink.codec import native

    return MAX_ELEMENTS_NATIVE if native.ctx_enabled() else MAX_ELEMENTS
_PROB_BITS = 11
_ONE = 1 << _PROB_BITS
_HALF = _ONE // 2
_MOVE = 5
_TOP = 1 << 24
_DENSITY = (1, 3, 6, 10, 20, 35)  # column density thresholds, in percent
_SIG_CONTEXTS = 8 * (len(_DENSITY) + 1)


def value_bits(values: int) -> int:
    """Depth of the binary tree that codes `values` distinct kept values (at least 1)."""
    return max(1, int(values - 1).bit_length())


def _density_bucket(count: int, row: int) -> int:
    # (count + 0.5) / (row + 1) against the thresholds, in integers so every coder agrees
    left, right = (2 * count + 1) * 100, 2 * (row + 1)
    return sum(1 for t in _DENSITY if left >= t * right)


class _Encoder:
    def __init__(self) -> None:
        self.low, self.range, self.cache, self.pending = 0, 0xFFFFFFFF, 0, 1
        self.out = bytearray()

    def _shift(self) -> None:
        if self.low < 0xFF000000 or self.low >= 1 << 32:
            carry = self.low >> 32
            byte = self.cache
            while True:
                self.out.append((byte + carry) & 0xFF)
                byte = 0xFF
                self.pending -= 1
                if self.pending == 0:
                    break
            self.cache = (self.low >> 24) & 0xFF
        self.pending += 1
        self.low = (self.low & 0x00FFFFFF) << 8

    def bit(self, probs: list[int], i: int, b: int) -> None:
        p = probs[i]
        bound = (self.range >> _PROB_BITS) * p
        if b:
            self.low += bound
            self.range -= bound
            probs[i] = p - (p >> _MOVE)
        else:
            self.range = bound
            probs[i] = p + ((_ONE - p) >> _MOVE)
        while self.range < _TOP:
            self.range = (self.range << 8) & 0xFFFFFFFF
            self._shift()

    def finish(self) -> bytes:
        for _ in range(5):
            self._shift()
        return bytes(self.out)


class _Decoder:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data, self.pos = data, 5
        if len(data) < 5:
            raise ValueError("context-coded stream is truncated")
        self.range, self.code = 0xFFFFFFFF, int.from_bytes(bytes(data[1:5]), "big")

    def bit(self, probs: list[int], i: int) -> int:
        p = probs[i]
        bound = (self.range >> _PROB_BITS) * p
        if self.code < bound:
            self.range = bound
            probs[i] = p + ((_ONE - p) >> _MOVE)
            b = 0
        else:
            self.code -= bound
            self.range -= bound
            probs[i] = p - (p >> _MOVE)
            b = 1
        while self.range < _TOP:
            self.range = (self.range << 8) & 0xFFFFFFFF
            nxt = self.data[self.pos] if self.pos < len(self.data) else 0
            self.pos += 1
            self.code = ((self.code << 8) | nxt) & 0xFFFFFFFF
        return b


def encode(mask: np.ndarray, values: np.ndarray, n_values: int) -> bytes:
    """Code a (rows, cols) 0/1 `mask` and the kept `values` (in scan order, each < n_values):
    compiled where `codec.native` builds, else in Python; the same bytes either way."""
    from torchshrink.codec import native

    if native.ctx_enabled():
        return native.ctx_encode(mask, values, n_values, value_bits(n_values))
    return _encode_py(mask, values, n_values)


def decode(data: bytes | memoryview, rows: int, cols: int, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat positions of the kept elements, their values) of a stream `encode` wrote."""
    from torchshrink.codec import native

    if native.ctx_enabled():
        return native.ctx_decode(data, rows, cols, n_values)
    return _decode_py(data, rows, cols, n_values)


def _encode_py(mask: np.ndarray, values: np.ndarray, n_values: int) -> bytes:
    rows, cols = mask.shape
    depth = value_bits(n_values)
    sig = [_HALF] * _SIG_CONTEXTS
    tree = [_HALF] * ((2 * n_values + 2) << depth)
    col_count = [0] * cols
    above = [0] * cols
    enc = _Encoder()
    prev = n_values  # "no kept value yet"
    k = 0
    for i in range(rows):
        row = mask[i].tolist()
        l1 = l2 = 0
        for j in range(cols):
            s = row[j]
            ctx = ((l1 * 2 + l2) * 2 + above[j]) * 7 + _density_bucket(col_count[j], i)
            enc.bit(sig, ctx, s)
            if s:
                v = int(values[k])
                k += 1
                base, node = (prev * 2 + l1) << depth, 1
                for d in range(depth - 1, -1, -1):
                    b = (v >> d) & 1
                    enc.bit(tree, base + node, b)
                    node = node * 2 + b
                prev = v
                col_count[j] += 1
            above[j] = s
            l2, l1 = l1, s
    return enc.finish()


def _decode_py(data: bytes | memoryview, rows: int, cols: int, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    depth = value_bits(n_values)
    sig = [_HALF] * _SIG_CONTEXTS
    tree = [_HALF] * ((2 * n_values + 2) << depth)
    col_count = [0] * cols
    above = [0] * cols
    dec = _Decoder(data)
    prev = n_values
    pos: list[int] = []
    vals: list[int] = []
    for i in range(rows):
        l1 = l2 = 0
        for j in range(cols):
            ctx = ((l1 * 2 + l2) * 2 + above[j]) * 7 + _density_bucket(col_count[j], i)
            s = dec.bit(sig, ctx)
            if s:
                base, node = (prev * 2 + l1) << depth, 1
                for _ in range(depth):
                    node = node * 2 + dec.bit(tree, base + node)
                v = node - (1 << depth)
                if v >= n_values:
                    raise ValueError("context-coded value out of range")
                pos.append(i * cols + j)
                vals.append(v)
                prev = v
                col_count[j] += 1
            above[j] = s
            l2, l1 = l1, s
    return np.asarray(pos, dtype=np.int64), np.asarray(vals, dtype=np.int64)


class SparseContextEncoding:
    """`sparse_ctx`: alphabet, background symbol, then the context-coded stream of this module
    over the tensor as (first dimension, the rest). Applies where the tensor is mostly
    background, has at most MAX_VALUES other values and at most MAX_ELEMENTS elements."""

    name = "sparse_ctx"

    def encode(self, tensor: torch.Tensor, hint: TensorHint) -> tuple[bytes, dict[str, Any]] | None:
        if not 0 < tensor.numel() <= max_elements():
            return None
        w = Writer()
        sym = symbolize(tensor, w)
        if sym is None:
            return None
        s, a = sym
        if a - 1 > MAX_VALUES or a < 2:
            return None
        bg = _background(s, a)
        mask = s != bg
        kept = int(mask.sum())
        if kept == 0 or kept > s.size // 2:
            return None  # not sparse: the dense coders do better
        vals = s[mask].astype(np.int64)
        vals -= vals > bg  # the background is never a value: keep the tree tight
        rows = int(tensor.shape[0]) if tensor.dim() >= 2 else 1
        w.varint(bg)
        w.raw(encode(mask.reshape(rows, -1).astype(np.int64), vals, a - 1))
        return w.bytes(), {}

    @_guarded
    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = _numel(shape)
        r = Reader(payload)
        alphabet, a = read_alphabet(r, dtype)
        if a - 1 > MAX_VALUES or a < 2:
            raise ValueError("sparse_ctx alphabet out of range")
        bg = r.varint(a - 1)
        rows = int(shape[0]) if len(shape) >= 2 else 1
        pos, vals = decode(r.raw(len(payload) - r.pos), rows, n // max(1, rows), a - 1)
        out = np.full(n, bg, dtype=np.uint16)
        out[pos] = vals + (vals >= bg)
        return desymbolize(out, alphabet, shape, dtype)


register_encoding(SparseContextEncoding())

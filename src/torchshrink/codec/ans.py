"""Interleaved rANS (range asymmetric numeral systems): compiled C where it builds
(`codec.native`, a few ns a symbol), else vectorized NumPy writing the same bytes.

A single rANS coder is sequential; here `lanes` independent coders take symbols round-robin
(symbol i goes to lane i % lanes), and every step advances all lanes with one NumPy operation.
States are 32-bit in [2^16, 2^32), renormalization emits 16-bit words, and symbol
probabilities are quantized to 16 bits, so one renormalization per symbol always suffices
(which is what makes the lanes vectorizable). The cost beyond the entropy is the frequency
quantization (tiny at 16 bits) plus 4 bytes of final state per lane; the lane count grows with
the stream so that stays well under 1%.

Stream layout (all little-endian): one byte log2(lanes), the final lane states (uint32 x
lanes), then the 16-bit words in the order the decoder reads them.
"""

from __future__ import annotations

import numpy as np

from torchshrink.codec import native

__all__ = ["PREC", "quantize_freqs", "lanes_for", "encode", "decode", "entropy_bits"]

PREC = 16  # probability resolution: frequencies sum to 2**PREC
_L = 1 << 16  # lower bound of the state interval
_MAXLANES = 256


def lanes_for(n: int, payload_bits: float) -> int:
    """Lanes for an n-symbol stream of about `payload_bits`: a power of two with >= 1024
    symbols per lane whose 4-byte final states cost at most 0.4% of the payload (at most 256)."""
    lanes = 1
    while (lanes < _MAXLANES and n >= lanes * 2 * 1024
           and (lanes * 2) * 32 <= 0.004 * payload_bits):
        lanes *= 2
    return lanes


def entropy_bits(counts: np.ndarray) -> float:
    """Empirical (order-0) entropy of a symbol histogram, in total bits."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum()) if n else 0.0


def quantize_freqs(counts: np.ndarray, prec: int = PREC) -> np.ndarray:
    """Integer frequencies summing to 2**prec, >= 1 wherever count > 0, close to proportional."""
    counts = np.asarray(counts, dtype=np.int64)
    total = 1 << prec
    present = counts > 0
    if present.sum() > total:
        raise ValueError(f"alphabet of {int(present.sum())} used symbols exceeds 2**{prec}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return _quantize(counts, present, total)


def _quantize(counts: np.ndarray, present: np.ndarray, total: int) -> np.ndarray:
    n = counts.sum()
    f = np.where(present, np.maximum(1, np.floor(counts * (total / n)).astype(np.int64)), 0)
    diff = total - int(f.sum())
    if diff > 0:
        # Give the remainder to the symbols that lose most by rounding down, largest first.
        gain = np.where(present, counts * np.log2((f + 1) / np.maximum(f, 1)), -np.inf)
        order = np.argsort(-gain, kind="stable")
        f[order[: min(diff, int(present.sum()))]] += 1
        diff = total - int(f.sum())
        if diff > 0:
            f[int(np.argmax(f))] += diff
    while diff < 0:
        # Take from the symbols that lose least, never dropping a used symbol to 0.
        cost = np.where(f > 1, counts * np.log2(f / np.maximum(f - 1, 1)), np.inf)
        order = np.argsort(cost, kind="stable")
        take = order[: min(-diff, int((f > 1).sum()))]
        f[take] -= 1
        diff = total - int(f.sum())
    return f


def encode(symbols: np.ndarray, freqs: np.ndarray, counts: np.ndarray | None = None) -> bytes:
    """rANS-code `symbols` (ints in [0, len(freqs))) under quantized `freqs` (sum 2**PREC);
    `counts`, the symbols' histogram, when the caller has it already."""
    s = np.asarray(symbols).ravel()
    if s.dtype.kind not in "ui":
        s = s.astype(np.int64)
    n = s.size
    f = np.asarray(freqs, dtype=np.uint64)
    if n == 0:
        return b""
    if counts is None:
        counts = np.bincount(s, minlength=f.size) if s.min() >= 0 else None
    if counts is None or counts.size > f.size or np.any(f[counts > 0] == 0):
        raise ValueError("a symbol has zero frequency")
    nz = counts > 0
    est = float((counts[nz] * (PREC - np.log2(f[nz].astype(np.float64)))).sum())
    lanes = lanes_for(n, est)
    if native.enabled():
        states, words = native.rans_encode(s, f, lanes)
        return bytes([lanes.bit_length() - 1]) + states.astype("<u4").tobytes() + words.astype("<u2").tobytes()
    s = s.astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(f)[:-1]]).astype(np.uint64)
    steps = -(-n // lanes)
    pad = steps * lanes - n
    fs = np.concatenate([f[s], np.zeros(pad, np.uint64)]).reshape(steps, lanes)
    cs = np.concatenate([cum[s], np.zeros(pad, np.uint64)]).reshape(steps, lanes)
    bound = (np.uint64((_L >> PREC) << 16)) * fs  # renormalize while x >= bound
    x = np.full(lanes, _L, dtype=np.uint64)
    out: list[np.ndarray] = []
    sh16 = np.uint64(16)
    shp = np.uint64(PREC)
    mask16 = np.uint64(0xFFFF)
    last_active = lanes - pad
    for t in range(steps - 1, -1, -1):
        r = lanes if t < steps - 1 else last_active
        xs = x[:r]
        ft = fs[t, :r]
        need = xs >= bound[t, :r]
        if need.any():
            out.append((xs[need] & mask16).astype(np.uint16))
            xs = np.where(need, xs >> sh16, xs)
        x[:r] = ((xs // ft) << shp) + (xs % ft) + cs[t, :r]
    words = np.concatenate(out[::-1]) if out else np.zeros(0, np.uint16)
    return bytes([lanes.bit_length() - 1]) + x.astype("<u4").tobytes() + words.astype("<u2").tobytes()


def decode(data: bytes | memoryview, freqs: np.ndarray, n: int, *, compact: bool = False) -> np.ndarray:
    """Inverse of `encode`: `n` symbols as int64, or with compact=True in the smallest unsigned
    dtype that holds them (uint8 for 256 symbols: an eighth of the memory on a large tensor).
    Raises ValueError on a malformed stream."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    f = np.asarray(freqs, dtype=np.uint64)
    if int(f.sum()) != 1 << PREC:
        raise ValueError("frequency table does not sum to 2**16")
    cum = np.concatenate([[0], np.cumsum(f)[:-1]]).astype(np.uint64)
    sym_dtype = np.int64 if not compact else np.uint8 if f.size <= 256 else np.uint16 if f.size <= 65536 else np.int64
    buf = memoryview(data)
    if len(buf) < 1 or buf[0] > 8:
        raise ValueError("rANS stream is truncated or has a bad lane count")
    lanes = 1 << buf[0]
    buf = buf[1:]
    steps = -(-n // lanes)
    if len(buf) < 4 * lanes or (len(buf) - 4 * lanes) % 2:
        raise ValueError("rANS stream is truncated")
    x = np.frombuffer(buf[: 4 * lanes], dtype="<u4").astype(np.uint64)
    words = np.frombuffer(buf[4 * lanes :], dtype="<u2")  # widened step by step, not as a whole
    if np.any(x < _L):
        raise ValueError("rANS stream has an invalid state")
    if native.enabled() and f.size <= 1 << 16:
        return native.rans_decode(memoryview(data), 1 + 4 * lanes, x, f, n, sym_dtype)
    lut = np.repeat(np.arange(f.size, dtype=np.int64), f.astype(np.int64))
    out = np.empty(steps * lanes, dtype=sym_dtype)
    ptr = 0
    nw = words.size
    shp = np.uint64(PREC)
    sh16 = np.uint64(16)
    low = np.uint64((1 << PREC) - 1)
    last_active = n - (steps - 1) * lanes
    for t in range(steps):
        r = lanes if t < steps - 1 else last_active
        xs = x[:r]
        slot = xs & low
        sym = lut[slot.astype(np.int64)]
        out[t * lanes : t * lanes + r] = sym
        xs = f[sym] * (xs >> shp) + slot - cum[sym]
        need = xs < _L
        cnt = int(need.sum())
        if cnt:
            if ptr + cnt > nw:
                raise ValueError("rANS stream is truncated")
            xs[need] = (xs[need] << sh16) | words[ptr : ptr + cnt].astype(np.uint64)
            ptr += cnt
        x[:r] = xs
    if ptr != nw:
        raise ValueError("rANS stream has trailing data")
    return out[:n]

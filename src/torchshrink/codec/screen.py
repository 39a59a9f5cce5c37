"""Which encodings are worth running on a large tensor, judged from one pass over it.

The writer keeps the smallest bit-exact encoding of every tensor. Trying every coder on every
tensor is what small models can afford (a LeNet file codes in well under a second), but not a
language model: at 63M parameters, `np.unique` inside the symbol coders took 74 of the 82
seconds of a save (four coders sorting every fp32 weight matrix to find it has millions of
distinct values). So for a tensor of `SCREEN_MIN` bytes or more, `screened` estimates what each
built-in encoding would cost from statistics that take one pass (zero and constant checks, the
value range, a strided sample's distinct values, a histogram), and the writer runs exactly
only dense (the fallback) and the encoding whose estimate is smallest, when it beats dense
by more than 1% (and any other whose estimate is within its error of the smallest). The
estimates are the encodings' own cost models:

    ans            the coded bits under 16-bit quantized frequencies + table + lane states
    huffman        the Huffman code lengths of the histogram (exact) + code-length table
    sparse_ans     binary entropy of background vs. not + entropy of the other values
    sparse_fixed   as sparse_ans, plus 10% (fixed-width gaps and Huffman-coded values)
    sparse_raw     binary entropy of zero vs. not + the raw bytes of the non-zeros
    sparse_ctx     as sparse_ans (its order-0 bound), where it applies
    bits           one bit per element

The exact coder still decodes its stream to check it, as for every tensor. Encodings this
module does not know (registered by other packages) are always run: their cost is theirs to say.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from torchshrink.codec import ans, huffman
from torchshrink.codec.ans import entropy_bits
from torchshrink.codec.encodings import Encoding

__all__ = ["SCREEN_MIN", "estimates", "screened"]

SCREEN_MIN = 1 << 18  # raw bytes; smaller tensors try every encoding (small files stay as they were)
_SAMPLE = 1 << 13  # > 4096, so a sample with more distinct values proves the whole has more
_MAX_ALPHABET = 4096  # entropy_encodings.MAX_ALPHABET (not imported: that module registers coders)
_WIN = 0.99  # an estimate must beat dense by 1% for its coder to run
# How far each estimate may be off (relative; plus 32 bytes): rANS and Huffman are computed
# from the very histogram they code, the sparse formats' gap streams only approximated. Every
# coder whose range reaches below the best one's upper end runs, so a near tie is settled by
# the real sizes (a LeNet-5 codebook index tensor: ans 33,612 B vs sparse_ans 33,613 B).
_MARGIN = {"dense": 0.0, "zeros": 0.0, "const": 0.0, "bits": 0.0, "ans": 0.001, "huffman": 0.001,
           "sparse_ans": 0.15, "sparse_fixed": 0.15, "sparse_raw": 0.15, "sparse_ctx": 0.15}
# context.MAX_VALUES and context.MAX_ELEMENTS_NATIVE (not imported: that module registers its
# coder); where only its Python twin runs, the coder itself refuses tensors over MAX_ELEMENTS
_CTX_VALUES, _CTX_ELEMENTS = 256, 1 << 24
_TWIN = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _int_view(t: torch.Tensor) -> np.ndarray:
    twin = _TWIN[t.element_size()]
    return (t.view(twin) if t.dtype != twin else t).reshape(-1).numpy()


def _hb(p: float) -> float:
    """Binary entropy in bits."""
    return 0.0 if p <= 0.0 or p >= 1.0 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _histogram(v: np.ndarray, lo: int, hi: int) -> np.ndarray | None:
    """Counts of the distinct bit patterns (between lo and hi), or None when the symbol coders
    would refuse the tensor (more than 4096 distinct values, or more than a quarter of its elements)."""
    if hi - lo < _MAX_ALPHABET:
        if lo == 0 and v.dtype.kind == "u":
            return np.bincount(v, minlength=hi + 1)
        return np.bincount((v.astype(np.int64) - lo), minlength=hi - lo + 1)
    step = max(1, v.size // _SAMPLE)
    if np.unique(v[::step]).size > _MAX_ALPHABET:  # a sample already has too many: so has the whole
        return None
    _, counts = np.unique(v, return_counts=True)
    if counts.size > _MAX_ALPHABET or counts.size * 4 > v.size:
        return None
    return counts


def _ans_bytes(counts: np.ndarray) -> float:
    """rANS at 16-bit precision, as `entropy_encodings._write_ans` codes it: the coded bits under
    the quantized frequencies, the varint table, and 4 bytes of final state per lane (the
    writer may pick a lower precision, which only makes it smaller)."""
    f = ans.quantize_freqs(counts, ans.PREC)
    nz = counts > 0
    bits = float((counts[nz] * (ans.PREC - np.log2(f[nz]))).sum())
    table = float(np.where(f < 128, 1, np.where(f < 16384, 2, 3)).sum())
    return bits / 8 + table + 4 * ans.lanes_for(int(counts.sum()), bits) + 16


def estimates(tensor: torch.Tensor) -> dict[str, float]:
    """Estimated payload bytes per built-in encoding that applies to `tensor` (contiguous, CPU)."""
    n = tensor.numel()
    raw = float(n * tensor.element_size())
    out: dict[str, float] = {"dense": raw}
    if n == 0 or tensor.element_size() not in _TWIN:
        return out
    v = _int_view(tensor)
    nonzero = int(np.count_nonzero(v))
    if nonzero == 0:
        return {**out, "zeros": 0.0}
    lo, hi = int(v.min()), int(v.max())
    if lo == hi:
        return {**out, "const": 0.0}
    if tensor.dtype == torch.bool:
        out["bits"] = math.ceil(n / 8)
    if nonzero <= n // 2:
        out["sparse_raw"] = n * _hb(nonzero / n) / 8 + nonzero * tensor.element_size()
    counts = _histogram(v, lo, hi)
    if counts is not None:
        a = counts.size
        out["ans"] = _ans_bytes(counts)
        lengths = huffman.code_lengths(counts)
        out["huffman"] = float((counts * lengths).sum()) / 8 + a / 2 + 64
        bg = int(counts.max())
        rest = np.delete(counts, int(np.argmax(counts)))
        rest = rest[rest > 0]
        if 0 < n - bg <= n // 2:
            sparse = n * _hb((n - bg) / n) / 8 + entropy_bits(rest) / 8 + 1.5 * a + 128
            out["sparse_ans"] = sparse
            out["sparse_fixed"] = sparse * 1.1
            if a - 1 <= _CTX_VALUES and n <= _CTX_ELEMENTS:
                out["sparse_ctx"] = sparse  # order-0 bound; the contexts can only help it
    return out


def screened(tensor: torch.Tensor, candidates: list[Encoding]) -> list[Encoding]:
    """The encodings to run exactly on `tensor`: all of them below SCREEN_MIN bytes; above,
    dense, every built-in one whose estimate could be the smallest within that estimate's
    error (and beats dense), and every encoding not estimated here."""
    if tensor.numel() * tensor.element_size() < SCREEN_MIN:
        return candidates
    est = estimates(tensor)
    lo = {c: v * (1 - _MARGIN[c]) - 32 for c, v in est.items()}
    hi = {c: v * (1 + _MARGIN[c]) + 32 for c, v in est.items()}
    best = min((hi[c] for c in est if c != "dense"), default=None)
    keep = {"dense"}
    if best is not None:
        keep |= {c for c in est if c != "dense" and lo[c] <= best and est[c] < _WIN * est["dense"]}
    return [c for c in candidates if c.name in keep or c.name not in _MARGIN]

"""A compact CSR matmul for CPU inference, compiled once on this machine, with a pure-torch
fallback where no C compiler exists.

At batch 1 a Linear layer is bound by memory traffic, not arithmetic: dense fp32 reads 4 bytes
per weight. torch's CSR kernel reads 8-byte column indices and 4-byte values per nonzero plus
per-call setup, so at 9% density it barely beats dense. This kernel stores 2-byte column
indices (uint16, any layer up to 65,536 inputs) with either fp32 values (6 bytes per nonzero)
or 1-byte codebook indices into a 256-entry table (3 bytes per nonzero, Deep Compression's
shared weights), which is what makes the sparse form several times faster than dense.

The library is plain C (no torch headers), so it compiles in about a second; it is called
through ctypes with tensor data pointers, and cached by source hash under
`~/.cache/torchshrink/kernels`. No compiler, or a failed compile, leaves `available()` False
and callers run torch's own CSR or dense kernels instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["BLOCK_COLUMNS", "available", "blocked_csr", "csr_matmul", "library_path"]

BLOCK_COLUMNS = 4096  # 16 KB of fp32 inputs per block: half of a typical 32 KB L1 data cache

_SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* y (B, n_out) = x (B, n_in) W^T + bias, W as CSR rows; xt is x transposed (n_in, B). */
/* rowptr holds n_blocks consecutive row-pointer arrays, one per column block, so the slice of
   x a block gathers from stays in L1 cache; block 0 adds the bias, later blocks accumulate. */
#define ROW_LOOP(VALUE)                                                          \
  for (int64_t blk = 0; blk < n_blocks; ++blk) {                                 \
  const int32_t *rp = rowptr + blk * (n_out + 1);                                \
  for (int64_t r = 0; r < n_out; ++r) {                                          \
    int32_t s = rp[r], e = rp[r + 1];                                            \
    const float base = blk ? 0.f : (bias ? bias[r] : 0.f);                      \
    if (B == 1) {                                                                \
      float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;                              \
      float a4 = 0.f, a5 = 0.f, a6 = 0.f, a7 = 0.f;                              \
      int32_t j = s;                                                             \
      for (; j + 7 < e; j += 8) {                                                \
        a0 += VALUE(j) * xt[cols[j]];                                            \
        a1 += VALUE(j + 1) * xt[cols[j + 1]];                                    \
        a2 += VALUE(j + 2) * xt[cols[j + 2]];                                    \
        a3 += VALUE(j + 3) * xt[cols[j + 3]];                                    \
        a4 += VALUE(j + 4) * xt[cols[j + 4]];                                    \
        a5 += VALUE(j + 5) * xt[cols[j + 5]];                                    \
        a6 += VALUE(j + 6) * xt[cols[j + 6]];                                    \
        a7 += VALUE(j + 7) * xt[cols[j + 7]];                                    \
      }                                                                          \
      for (; j < e; ++j) a0 += VALUE(j) * xt[cols[j]];                           \
      const float t = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));   \
      y[r] = blk ? y[r] + t : t + base;                                          \
    } else {                                                                     \
      for (int64_t b0 = 0; b0 < B; b0 += 16) {                                   \
        int64_t nb = B - b0 < 16 ? B - b0 : 16;                                  \
        float acc[16];                                                           \
        for (int64_t b = 0; b < 16; ++b) acc[b] = 0.f;                           \
        for (int32_t j = s; j < e; ++j) {                                        \
          const float v = VALUE(j);                                              \
          const float *xr = xt + (int64_t)cols[j] * B + b0;                      \
          if (nb == 16) {                                                        \
            for (int64_t b = 0; b < 16; ++b) acc[b] += v * xr[b];                \
          } else {                                                               \
            for (int64_t b = 0; b < nb; ++b) acc[b] += v * xr[b];                \
          }                                                                      \
        }                                                                        \
        for (int64_t b = 0; b < nb; ++b) {                                       \
          float *yo = y + (b0 + b) * n_out + r;                                  \
          *yo = blk ? *yo + acc[b] : acc[b] + base;                              \
        }                                                                        \
      }                                                                          \
    }                                                                            \
  }                                                                              \
  }

#define F32_VALUE(j) vals[j]
#define CODE_VALUE(j) table[codes[j]]

void ts_csr_f32(int64_t n_out, int64_t n_blocks, int64_t B, const int32_t *rowptr, const uint16_t *cols,
                const float *vals, const float *xt, const float *bias, float *y) {
  ROW_LOOP(F32_VALUE)
}

void ts_csr_code(int64_t n_out, int64_t n_blocks, int64_t B, const int32_t *rowptr, const uint16_t *cols,
                 const uint8_t *codes, const float *table, const float *xt, const float *bias,
                 float *y) {
  ROW_LOOP(CODE_VALUE)
}
"""


def _cache_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "torchshrink" / "kernels"


# No -ffast-math: a shared library built with it sets flush-to-zero for the whole process on
# load, changing every other float computation of the user's program. Reassociation alone is
# what the accumulators need to vectorize.
_FLAGS = ("-O3", "-march=native", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
          "-fno-math-errno", "-fPIC", "-shared")


def _cpu_signature() -> str:
    """The CPU the library is built for (-march=native): a cache shared between machines
    must not hand one CPU's build to another."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def library_path() -> Path:
    key = "\0".join((_SOURCE, *_FLAGS, platform.machine(), _cpu_signature()))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return _cache_dir() / f"csr_{digest}.so"


@functools.cache
def _library() -> ctypes.CDLL | None:
    path = library_path()
    if not path.exists():
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")
        if cc is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            src, out = Path(tmp) / "csr.c", Path(tmp) / "csr.so"
            src.write_text(_SOURCE)
            cmd = [cc, *_FLAGS, "-x", "c", str(src), "-o", str(out)]
            try:
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            except (OSError, subprocess.SubprocessError):
                return None
            os.replace(out, path)  # atomic: a concurrent process sees the whole library or none
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.ts_csr_f32.argtypes = [i64, i64, i64, p, p, p, p, p, p]
    lib.ts_csr_code.argtypes = [i64, i64, i64, p, p, p, p, p, p, p]
    lib.ts_csr_f32.restype = lib.ts_csr_code.restype = None
    return lib


def available() -> bool:
    """Whether the compiled kernel can run here (a C compiler was found and the build worked)."""
    return _library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def csr_matmul(x: torch.Tensor, rowptr: torch.Tensor, cols: torch.Tensor, n_out: int, *,
               values: torch.Tensor | None = None, codes: torch.Tensor | None = None,
               table: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(B, n_in) float32 x times the column-blocked CSR matrix (int32 rowptr of shape
    (n_blocks, n_out + 1) with offsets into the whole arrays, uint16 cols, and either fp32
    `values` or uint8 `codes` into a float32 `table`), plus `bias`: (B, n_out) float32.
    The caller checks `available()` first."""
    lib = _library()
    assert lib is not None, "csr_matmul needs the compiled kernel; check available() first"
    batch = x.shape[0]
    n_blocks = rowptr.shape[0] if rowptr.dim() == 2 else 1
    xt = x.contiguous() if batch == 1 else x.t().contiguous()
    y = torch.empty(batch, n_out, dtype=torch.float32)
    if codes is not None:
        assert table is not None
        lib.ts_csr_code(n_out, n_blocks, batch, _ptr(rowptr), _ptr(cols), _ptr(codes), _ptr(table), _ptr(xt),
                        _ptr(bias), _ptr(y))
    else:
        assert values is not None
        lib.ts_csr_f32(n_out, n_blocks, batch, _ptr(rowptr), _ptr(cols), _ptr(values), _ptr(xt), _ptr(bias), _ptr(y))
    return y


def blocked_csr(keep: torch.Tensor, block: int = BLOCK_COLUMNS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a bool (out, in) keep-mask: the (n_blocks, out + 1) int32 row pointers, the uint16
    column indices, and the order that takes the weight's nonzeros (row-major) to the kernel's
    order (block-major, then row-major)."""
    out, n_in = keep.shape
    n_blocks = max(1, -(-n_in // block))
    rows, cols = keep.nonzero(as_tuple=True)
    blk = cols // block
    order = torch.argsort(blk * out + rows, stable=True)
    key = (blk * out + rows)[order]
    counts = torch.bincount(key, minlength=n_blocks * out).reshape(n_blocks, out)
    offsets = counts.reshape(-1).cumsum(0).reshape(n_blocks, out)
    rowptr = torch.zeros(n_blocks, out + 1, dtype=torch.int64)
    rowptr[:, 1:] = offsets
    rowptr[1:, 0] = offsets[:-1, -1]
    return rowptr.to(torch.int32), cols[order].to(torch.int32).to(torch.uint16).contiguous(), order

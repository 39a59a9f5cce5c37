"""A compact CSR matmul for CPU inference, compiled once on this machine, with a pure-torch
fallback where no C compiler exists.

At batch 1 a Linear layer is bound by memory traffic, not arithmetic: dense fp32 reads 4 bytes
per weight. torch's CSR kernel reads 8-byte column indices and 4-byte values per nonzero plus
per-call setup, so at 9% density it barely beats dense. This kernel stores 2-byte column
indices (uint16, any layer up to 65,536 inputs) with either fp32 values (6 bytes per nonzero)
or 1-byte codebook indices into a table of up to 256 entries (3 bytes per nonzero, Deep
Compression's shared weights), and gathers the inputs with SIMD gathers where the CPU has them
(`csr_source` says how), which is what makes the sparse form several times faster than dense.

The library is plain C (no torch headers), so it compiles in about a second; it is called
through ctypes with tensor data pointers (ctypes releases the GIL during the call), and cached
by source, flags and CPU under `~/.cache/torchshrink/kernels`. No compiler, or a failed
compile, leaves `available()` False and callers run torch's own CSR or dense kernels instead.
"""

from __future__ import annotations

import ctypes
import functools
import operator
from pathlib import Path

import torch

from torchshrink import native
from torchshrink.infer.csr_source import SOURCE

__all__ = ["BLOCK_COLUMNS", "MAX_TABLE", "BoundCsr", "available", "blocked_csr", "csr_matmul", "isa", "library_path"]

# 16 KB of fp32 inputs per block: the gathered slice of x stays in a 32 KB L1 data cache
# beside the streamed weights (measured: 2048 to 16384 columns run within noise of each other
# on a 48 KB L1, so the smaller caches decide).
BLOCK_COLUMNS = 4096
MAX_TABLE = 256  # uint8 codebook indices

_FLAGS = native.BASE_FLAGS


def library_path(extra_flags: tuple[str, ...] = ()) -> Path:
    return native.library_path("csr", SOURCE, (*_FLAGS, *extra_flags))


@functools.cache
def _build(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The library compiled with `_FLAGS` plus `extra_flags` (tests pass e.g. -mno-avx512f
    to check the AVX2 and plain-C loops on a CPU that would otherwise take the AVX-512 one)."""
    lib = native.build("csr", SOURCE, (*_FLAGS, *extra_flags))
    if lib is None:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.ts_csr_f32.argtypes = [i64, i64, i64, p, p, p, p, p, p, i64]
    lib.ts_csr_code.argtypes = [i64, i64, i64, p, p, p, p, i64, p, p, p, i64]
    lib.ts_csr_f32.restype = lib.ts_csr_code.restype = None
    lib.ts_csr_isa.argtypes = []
    lib.ts_csr_isa.restype = ctypes.c_int
    return lib


def _library() -> ctypes.CDLL | None:
    return _build(())


def available() -> bool:
    """Whether the compiled kernel can run here (a C compiler was found and the build worked)."""
    return _library() is not None


def isa() -> str:
    """Which loop the compiled kernel runs: "avx512", "avx2", "scalar", or "none" (not built)."""
    lib = _library()
    if lib is None:
        return "none"
    return {512: "avx512", 256: "avx2"}.get(int(lib.ts_csr_isa()), "scalar")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class BoundCsr:
    """A compact CSR matrix with its kernel arguments worked out once: at batch 1 a small
    layer's whole kernel call takes a few microseconds, so the Python around it (pointer
    look-ups, argument checks) must not take longer. Holds references to its tensors, so
    `bound_to` can tell when a module's buffers were replaced (`.to()`, assignment)."""

    def __init__(self, rowptr: torch.Tensor, cols: torch.Tensor, n_out: int, *,
                 values: torch.Tensor | None = None, codes: torch.Tensor | None = None,
                 table: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 lib: ctypes.CDLL | None = None) -> None:
        lib = lib or _library()
        assert lib is not None, "the compact CSR kernel needs the compiled library; check available() first"
        self.tensors = (rowptr, cols, values, codes, table, bias)
        self.n_out = n_out
        n_blocks = rowptr.shape[0] if rowptr.dim() == 2 else 1
        self._head = (n_out, n_blocks)
        if codes is not None:
            assert table is not None and 1 <= table.numel() <= MAX_TABLE, "codes need a table of 1..256 entries"
            self._fn = lib.ts_csr_code
            self._mid: tuple[int | None, ...] = (_ptr(rowptr), _ptr(cols), _ptr(codes), _ptr(table), table.numel())
        else:
            assert values is not None
            self._fn = lib.ts_csr_f32
            self._mid = (_ptr(rowptr), _ptr(cols), _ptr(values))
        self._bias = _ptr(bias)

    def bound_to(self, *tensors: torch.Tensor | None) -> bool:
        return all(map(operator.is_, self.tensors, tensors))

    def __call__(self, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
        """(B, n_in) float32 CPU x -> (B, n_out) float32."""
        batch = x.shape[0]
        xt = x.contiguous() if batch == 1 else x.t().contiguous()
        y = torch.empty(batch, self.n_out, dtype=torch.float32)
        n_threads = torch.get_num_threads() if threads is None else threads
        self._fn(*self._head, batch, *self._mid, xt.data_ptr(), self._bias, y.data_ptr(), n_threads)
        return y


def csr_matmul(x: torch.Tensor, rowptr: torch.Tensor, cols: torch.Tensor, n_out: int, *,
               values: torch.Tensor | None = None, codes: torch.Tensor | None = None,
               table: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               threads: int | None = None, _lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """(B, n_in) float32 x times the column-blocked CSR matrix (int32 rowptr of shape
    (n_blocks, n_out + 1) with offsets into the whole arrays, uint16 cols, and either fp32
    `values` or uint8 `codes` into a float32 `table` of 1..256 entries), plus `bias`:
    (B, n_out) float32. `threads` defaults to torch's intra-op thread count; small layers run
    on one whatever it says. The caller checks `available()` first."""
    bound = BoundCsr(rowptr, cols, n_out, values=values, codes=codes, table=table, bias=bias, lib=_lib)
    return bound(x, threads)


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

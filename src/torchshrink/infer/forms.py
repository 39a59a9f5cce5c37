"""The execution forms a layer of the inference form can take, each a small nn.Module holding
only what it computes with (no parametrizations, no zero-filled originals).

- `CompactSparseLinear`: CSR with int32 row pointers, uint16 column indices and either fp32
  values or uint8 codebook indices into a float table, run by the compiled kernel
  (`infer.kernels`, on torch's intra-op thread count); exact up to float summation order
  (tested: within 1e-6 of sum |w||x| against float64).
- `Int4Linear`: the weight in PyTorch's packed int4 CPU layout with bf16 scales and zeros,
  run by `aten._weight_int4pack_mm_for_cpu` (activations rounded to bf16).
- dense layers are plain `nn.Linear` / `nn.Conv*d` with the effective weight baked in.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from torchshrink.infer import kernels

__all__ = ["CompactSparseLinear", "Int4Linear", "MAX_NONZEROS", "MAX_SPARSE_INPUTS"]

MAX_SPARSE_INPUTS = 65536  # uint16 column indices
MAX_NONZEROS = 2**31  # int32 row pointers


class CompactSparseLinear(nn.Module):
    """y = x W^T + b with W in compact CSR (see the module docstring)."""

    rowptr: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor | None
    codes: torch.Tensor | None
    table: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *,
                 codebook: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """weight: the dense effective (out, in) weight. codebook: (table, indices of weight's
        shape) when the values are shared; pruned entries (weight == 0) are left out."""
        super().__init__()
        out_features, in_features = weight.shape
        if in_features > MAX_SPARSE_INPUTS:
            raise ValueError(f"compact CSR holds at most {MAX_SPARSE_INPUTS} inputs, got {in_features}; "
                             "keep such a layer dense or in torch CSR")
        keep = weight != 0
        if int(keep.sum()) >= MAX_NONZEROS:
            raise ValueError(f"compact CSR holds fewer than {MAX_NONZEROS} nonzeros (int32 row pointers), got "
                             f"{int(keep.sum())}; keep such a layer dense or in torch CSR")
        if codebook is not None and not 1 <= codebook[0].numel() <= kernels.MAX_TABLE:
            raise ValueError(f"compact CSR codebooks hold 1..{kernels.MAX_TABLE} values (uint8 indices), got "
                             f"{codebook[0].numel()}; use the fp32-values form")
        self.in_features, self.out_features = in_features, out_features
        rowptr, cols, order = kernels.blocked_csr(keep)
        self.register_buffer("rowptr", rowptr)
        self.register_buffer("cols", cols)
        if codebook is not None:
            table, indices = codebook
            self.register_buffer("values", None)
            self.register_buffer("codes", indices[keep][order].to(torch.uint8).contiguous())
            self.register_buffer("table", table.detach().float().contiguous().clone())
        else:
            self.register_buffer("values", weight[keep][order].float().contiguous())
            self.register_buffer("codes", None)
            self.register_buffer("table", None)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous().clone())

    @property
    def nnz(self) -> int:
        return int(self.cols.numel())

    @property
    def execution(self) -> str:
        what = "uint8 codebook indices" if self.codes is not None else "fp32 values"
        kernel = f"compiled kernel, {kernels.isa()}" if kernels.available() else "torch CSR fallback (no C compiler)"
        return f"compact CSR (uint16 columns, {what}, {kernel})"

    def _values(self) -> torch.Tensor:
        if self.values is not None:
            return self.values
        assert self.table is not None and self.codes is not None
        return self.table[self.codes.long()]

    def dense_weight(self) -> torch.Tensor:
        w = torch.zeros(self.out_features, self.in_features)
        w[self._rows(), self.cols.to(torch.int32).long()] = self._values()
        return w

    def _bound(self) -> kernels.BoundCsr:
        b = self._buffers  # not nn.Module.__getattr__: six of those cost more than a small layer's kernel
        tensors = (b["rowptr"], b["cols"], b["values"], b["codes"], b["table"], b["bias"])
        bound = self.__dict__.get("_bound_csr")
        if bound is None or not bound.bound_to(*tensors):
            cast = {n: t.dtype for n in ("values", "table", "bias") if (t := b[n]) is not None and t.dtype != torch.float32}
            if cast:
                raise ValueError(f"{type(self).__name__} computes in float32 but its {', '.join(cast)} are "
                                 f"{next(iter(cast.values()))} (the module was cast, e.g. .double()); call .float() on it")
            bound = kernels.BoundCsr(self.rowptr, self.cols, self.out_features, values=self.values, codes=self.codes,
                                     table=self.table, bias=self.bias)
            self.__dict__["_bound_csr"] = bound  # not a submodule or buffer: a cache of pointers
        return bound

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_bound_csr", None)  # pointers into this process's tensors: rebuilt on first call
        # Plain pickle cannot load a uint16 tensor back (torch's legacy unpickler asks its
        # untyped storage for a dtype): the columns travel as the same bytes viewed as int16.
        buffers = dict(self._buffers)
        buffers["cols"] = self.cols.view(torch.int16)
        state["_buffers"] = buffers
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        cols = self._buffers["cols"]
        if cols is not None and cols.dtype == torch.int16:
            self._buffers["cols"] = cols.view(torch.uint16)

    def _untraced_dense_weight(self) -> torch.Tensor:
        """The dense weight as one constant of the traced graph: built under the tracer, its
        scatter and index tensors would be recorded too (the ONNX file came out larger than fp32)."""
        get, put = getattr(torch._C, "_get_tracing_state", None), getattr(torch._C, "_set_tracing_state", None)
        if get is None or put is None or get() is None:
            return self.dense_weight()
        state = get()
        put(None)
        try:
            return self.dense_weight()
        finally:
            put(state)

    def _rows(self) -> torch.Tensor:
        """The row of every stored nonzero (in the kernel's block-major order)."""
        counts = torch.diff(self.rowptr.long(), dim=1).reshape(-1)
        rows = torch.arange(self.out_features).repeat(self.rowptr.shape[0])
        return torch.repeat_interleave(rows, counts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            # Exporters (ONNX, torch.export) cannot see into a ctypes call: they get the same
            # function as a dense matmul, which every runtime has.
            return nn.functional.linear(x, self._untraced_dense_weight().to(x.dtype),
                                        None if self.bias is None else self.bias.to(x.dtype))
        if x.shape[-1] != self.in_features:  # the kernel would read past x: check, never trust
            raise ValueError(f"{type(self).__name__} expects inputs with {self.in_features} features in the last "
                             f"dimension, got shape {tuple(x.shape)}")
        if x.device.type == "cpu" and kernels.available():
            bound = self._bound()
            if x.dim() == 2 and x.dtype == torch.float32:  # the common call, kept lean (see BoundCsr)
                return bound(x)
            return bound(x.reshape(-1, self.in_features).float()).to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        rows = x.reshape(-1, self.in_features)
        idx = torch.stack([self._rows(), self.cols.to(torch.int32).long()])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse support is in beta"
            coo = torch.sparse_coo_tensor(idx, self._values(), (self.out_features, self.in_features))
        y = torch.sparse.mm(coo, rows.float().t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def ts_effective_weights(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.dense_weight()}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"


class Int4Linear(nn.Module):
    """A 4-bit group-wise Linear in the layout of PyTorch's int4 CPU matmul kernel."""

    execution = "int4 kernel (aten._weight_int4pack_mm_for_cpu, bf16 activations)"
    half_operands = True  # the bf16 scales are the kernel's layout, not the model's precision
    # Set by quant.exact.exact_arithmetic: compute the decoded weight's float product instead of
    # the kernel's bf16 one (the function an exported file, which computes in float, matches).
    float_reference = False
    packed: torch.Tensor
    scales_zeros: torch.Tensor
    bias: torch.Tensor | None
    col_scale: torch.Tensor | None

    def __init__(self, packed: torch.Tensor, scales_zeros: torch.Tensor, *, in_features: int, out_features: int,
                 group_size: int, bias: torch.Tensor | None, col_scale: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", scales_zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("col_scale", None if col_scale is None else col_scale.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_reference:
            w = self.ts_effective_weights()
            return nn.functional.linear(x, w["weight"].to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        x2 = x.reshape(-1, self.in_features)
        if self.col_scale is not None:
            x2 = x2 / self.col_scale
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16), self.packed, self.group_size,
                                                       self._scales_zeros()).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _scales_zeros(self) -> torch.Tensor:
        sz = self.scales_zeros  # bf16 as built; a module cast with .float() holds the same values in fp32
        return sz if sz.dtype == torch.bfloat16 else sz.to(torch.bfloat16)

    def grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes, scale, zero): int32 codes 0..15 of shape (out, in) and float32 (out, groups)
        scale and zero, with weight = ((codes - 8) * scale + zero) / col_scale per group. The
        packed layout is private to the kernel, so the codes are read back from what it computes
        on the identity (bf16 output, exact after rounding: its error is under scale / 16)."""
        n, k, g = self.out_features, self.in_features, self.group_size
        sz = self._scales_zeros().float()
        scale, zero = sz[..., 0].t().reshape(n, k // g), sz[..., 1].t().reshape(n, k // g)
        eye = torch.eye(k, dtype=torch.bfloat16)
        w = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, g, self._scales_zeros()).float().t()
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero group: any code
        codes = torch.round((w.reshape(n, k // g, g) - zero[..., None]) / safe[..., None]) + 8
        return codes.clamp(0, 15).to(torch.int32).reshape(n, k), scale, zero

    def ts_effective_weights(self) -> dict[str, torch.Tensor]:
        codes, scale, zero = self.grid()
        n, k, g = self.out_features, self.in_features, self.group_size
        w = ((codes.reshape(n, k // g, g).float() - 8) * scale[..., None] + zero[..., None]).reshape(n, k)
        if self.col_scale is not None:
            w = w / self.col_scale
        out = {"weight": w}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"

"""Sparse execution of unstructured sparsity on CPU: swap a very sparse Linear for a CSR matmul,
only where a timing on this machine says it is faster.

A mask alone saves nothing at run time; dense kernels multiply the zeros. CSR (compressed sparse
row) kernels skip them but pay for irregular memory access, so on CPU they only win at high
sparsity (typically >= 90-95%) and for large enough layers. `SparseExecution` therefore times
both forms of every candidate layer at apply time (same input size, interleaved repeats, the
best of each round, median over rounds) and swaps only where the CSR form is faster by
`min_speedup`. Each layer's decision and timings are recorded on the model.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchshrink.codec.structure import register_module
from torchshrink.config import Config, check, check_range
from torchshrink.measure.latency import interleaved_times
from torchshrink.nn import select_layers, set_module
from torchshrink.prune.mask import weight_of
from torchshrink.registry import Context, register

__all__ = ["SparseLinear", "SparseExecution", "time_call"]


class SparseLinear(nn.Module):
    """y = x W^T + b with W stored as CSR (crow_indices, col_indices, values buffers)."""

    execution = "sparse CSR"
    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor

    def __init__(self, in_features: int, out_features: int, nnz: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("crow_indices", torch.zeros(out_features + 1, dtype=torch.int64))
        # Filled by from_linear or the loader; left untouched, they cost no memory meanwhile.
        self.register_buffer("col_indices", torch.empty(nnz, dtype=torch.int64))
        self.register_buffer("values", torch.empty(nnz))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> SparseLinear:
        w = weight_of(lin).detach()  # the masked weight when a PruningMask is attached
        csr = w.to_sparse_csr()
        new = cls(lin.in_features, lin.out_features, int(csr.values().numel()), lin.bias is not None)
        new.crow_indices.copy_(csr.crow_indices())
        new.col_indices.copy_(csr.col_indices())
        new.values = csr.values().clone()
        if lin.bias is not None:
            with torch.no_grad():
                new.bias.copy_(lin.bias.detach())  # type: ignore[union-attr]
        return new.to(w.device)

    def _csr(self) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                           (self.out_features, self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        # (W x^T)^T: the CSR operand must be on the left for the MKL/native sparse kernel.
        if self.bias is not None:
            y = torch.sparse.addmm(self.bias.unsqueeze(1), self._csr(), rows.t()).t()
        else:
            y = torch.sparse.mm(self._csr(), rows.t()).t()
        return y.reshape(*x.shape[:-1], self.out_features)

    def ts_effective_weights(self) -> dict[str, torch.Tensor]:
        out = {"weight": self._csr().to_dense()}
        if self.bias is not None:
            out["bias"] = self.bias.detach()
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.values.numel()}"


register_module(
    SparseLinear,
    to_spec=lambda m: {"in": m.in_features, "out": m.out_features, "nnz": int(m.values.numel()),
                       "bias": m.bias is not None},
    from_spec=lambda s: SparseLinear(s["in"], s["out"], s["nnz"], s["bias"]),
    name="SparseLinear",
)


def time_call(fns: dict[str, Callable[[], Any]], *, rounds: int = 7, inner: int = 5) -> dict[str, float]:
    """Seconds per call for each function, measured side by side: the fastest of `inner`
    back-to-back calls in each round (resists the preemption spikes of a shared CPU), then the
    median over rounds (resists slow drifts)."""
    with torch.no_grad():
        per = interleaved_times(fns, rounds=rounds, per_round=inner, warmup=1)
    return {k: sorted(min(r) for r in v)[len(v) // 2] / 1e3 for k, v in per.items()}


def _apply(model: nn.Module, config: SparseExecution, ctx: Context) -> nn.Module:
    layers = select_layers(model, types=(nn.Linear,), targets=config.targets, ignore=config.ignore)
    decisions: dict[str, dict[str, float | str]] = {}
    for name, lin in layers:
        assert isinstance(lin, nn.Linear)
        w = weight_of(lin).detach()
        sparsity = float((w == 0).float().mean())
        if sparsity < config.min_sparsity or w.device.type != "cpu":
            decisions[name] = {"sparsity": sparsity, "execution": "dense (not sparse enough)"
                               if sparsity < config.min_sparsity else "dense (not on CPU)"}
            continue
        sparse = SparseLinear.from_linear(lin).eval()
        x = torch.randn(config.batch, lin.in_features, dtype=w.dtype)
        dense_w, dense_b = w.clone(), None if lin.bias is None else lin.bias.detach().clone()
        t = time_call({"dense": functools.partial(torch.nn.functional.linear, x, dense_w, dense_b),
                       "csr": functools.partial(sparse, x)}, rounds=config.rounds)
        speedup = t["dense"] / t["csr"]
        chosen = speedup >= config.min_speedup
        decisions[name] = {"sparsity": sparsity, "dense_s": t["dense"], "csr_s": t["csr"], "speedup": speedup,
                           "execution": "sparse CSR" if chosen else "masked only (CSR measured slower)"}
        if chosen:
            sparse.train(lin.training)
            set_module(model, name, sparse)
    object.__setattr__(model, "torchshrink_sparse_execution", decisions)
    return model


@register(family="prune", handler=_apply)
@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseExecution(Config):
    """Run very sparse Linear layers as CSR matmuls where that is measured faster on this CPU.

    min_sparsity: layers below this fraction of zeros stay dense without timing.
    min_speedup: swap only when CSR is at least this much faster.
    batch: rows of the timing input (use your serving batch size).
    The swapped layers are inference-only (the CSR values are buffers, not trained).
    """

    min_sparsity: float = 0.8
    min_speedup: float = 1.1
    batch: int = 32
    rounds: int = 5
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("min_sparsity", self.min_sparsity, 0.0, 1.0)
        check(self.min_speedup >= 0, f"min_speedup must be >= 0, got {self.min_speedup}")
        check(self.batch >= 1, f"batch must be >= 1, got {self.batch}")
        check(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")

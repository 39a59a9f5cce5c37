"""The compact CSR kernel computes x W^T + b for every loop it has (AVX-512, AVX2, plain C),
every value form and thread count, on the shapes that break index arithmetic; and the torch
fallback does the same where no compiler exists."""

from __future__ import annotations

import itertools
import platform
from pathlib import Path

import pytest
import torch
from torch import nn

from torchshrink import native
from torchshrink.infer import CompactSparseLinear, kernels
from torchshrink.infer.forms import MAX_SPARSE_INPUTS

needs_kernel = pytest.mark.skipif(not kernels.available(), reason="no C compiler on this machine")

# Summation order differs from dense (lane-wise partial sums), so compare against float64 in
# units of sum |w| |x| + |b|: float32 rounding of that sum bounds the error.
TOL = 1e-6

# The build's own loop, then (on x86) the narrower loops a CPU without AVX-512 or AVX2 runs.
X86_LOOPS = {"avx2": ("-mno-avx512f",), "scalar": ("-mno-avx512f", "-mno-avx2")}


def _libs() -> dict[str, object]:
    libs: dict[str, object] = {"native": kernels._build(())}
    if platform.machine() in ("x86_64", "AMD64"):
        for name, flags in X86_LOOPS.items():
            lib = kernels._build(flags)
            if lib is not None:
                libs[name] = lib
    return libs


def _rel_err(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> float:
    x64, w64 = x.double(), w.double()
    b64 = None if b is None else b.double()
    ref = nn.functional.linear(x64, w64, b64)
    scale = nn.functional.linear(x64.abs(), w64.abs(), None if b64 is None else b64.abs()) + 1e-30
    return float(((y.double() - ref).abs() / scale).max())


def _case(out: int, n_in: int, density: float, k: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(out, n_in, generator=g) < density
    if out > 2:
        keep[1] = False  # an empty row between full ones
    table = torch.randn(max(k, 1), generator=g)
    idx = torch.randint(0, max(k, 1), (out, n_in), generator=g)
    w = (table[idx] if k else torch.randn(out, n_in, generator=g)) * keep
    return keep, w, table, idx, torch.randn(out, generator=g)


@needs_kernel
def test_every_loop_matches_dense_on_awkward_shapes() -> None:
    libs = _libs()
    shapes = [(37, 300, 0.1), (5, 9000, 0.3), (64, 4097, 0.05), (3, 17, 0.0), (20, 33, 1.0), (1, 1, 1.0)]
    # codebook sizes: fp32 values (0), register tables (1, 16, 17, 32) and the memory table (33, 256)
    for seed, ((out, n_in, d), k) in enumerate(itertools.product(shapes, [0, 1, 16, 17, 32, 33, 256])):
        keep, w, table, idx, b = _case(out, n_in, d, k, seed)
        rowptr, cols, order = kernels.blocked_csr(keep)
        vals = w[keep][order].contiguous()
        codes = idx[keep][order].to(torch.uint8).contiguous()
        for batch, threads in ((1, 1), (3, 2), (16, 1), (17, 3), (40, 1)):
            x = torch.randn(batch, n_in)
            bias = b if batch != 3 else None
            for name, lib in libs.items():
                form = {"codes": codes, "table": table} if k else {"values": vals}
                y = kernels.csr_matmul(x, rowptr, cols, out, bias=bias, threads=threads, _lib=lib, **form)
                assert y.shape == (batch, out)
                err = _rel_err(y, x, w, bias)
                assert err < TOL, (name, out, n_in, d, k, batch, threads, err)


@needs_kernel
def test_threads_split_rows_without_changing_a_bit() -> None:
    # Each row is summed by one thread in the same order, so any thread count gives the same bits.
    keep, w, table, idx, b = _case(512, 4096, 0.15, 16, seed=1)
    for layer in (CompactSparseLinear(w, b), CompactSparseLinear(w, b, codebook=(table, idx))):
        for batch in (1, 5):
            x = torch.randn(batch, 4096)
            one = kernels.csr_matmul(x, layer.rowptr, layer.cols, 512, values=layer.values, codes=layer.codes,
                                     table=layer.table, bias=layer.bias, threads=1)
            for threads in (2, 3, 7):
                many = kernels.csr_matmul(x, layer.rowptr, layer.cols, 512, values=layer.values, codes=layer.codes,
                                          table=layer.table, bias=layer.bias, threads=threads)
                assert torch.equal(one, many), threads
            assert _rel_err(one, x, w, b) < TOL


def test_layer_edge_cases_match_dense() -> None:
    torch.manual_seed(0)
    cases = {"all zero": torch.zeros(6, 50), "one input": torch.randn(4, 1),
             "wider than a block": torch.randn(9, kernels.BLOCK_COLUMNS + 3) * (torch.rand(9, kernels.BLOCK_COLUMNS + 3) < 0.2)}
    for name, w in cases.items():
        b = torch.randn(w.shape[0])
        layer = CompactSparseLinear(w, b)
        assert layer.nnz == int((w != 0).sum()), name
        for shape in ((1, w.shape[1]), (2, 3, w.shape[1])):  # leading dims are kept
            x = torch.randn(*shape)
            y = layer(x)
            assert y.shape == (*shape[:-1], w.shape[0]), name
            assert _rel_err(y.reshape(-1, w.shape[0]), x.reshape(-1, w.shape[1]), w, b) < TOL, name
        torch.testing.assert_close(layer.dense_weight(), w, rtol=0, atol=0)


def test_torch_fallback_without_a_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(native.shutil, "which", lambda _name: None)
    monkeypatch.setattr(native, "cache_dir", lambda: tmp_path)  # nothing built there
    assert kernels._build.__wrapped__(()) is None
    monkeypatch.setattr(kernels, "_library", lambda: None)
    assert not kernels.available() and kernels.isa() == "none"
    keep, w, table, idx, b = _case(30, 70, 0.2, 16, seed=2)
    for layer in (CompactSparseLinear(w, b), CompactSparseLinear(w, b, codebook=(table, idx))):
        assert "torch CSR fallback" in layer.execution
        for batch in (1, 4):
            x = torch.randn(batch, 70)
            assert _rel_err(layer(x), x, w, b) < TOL


@needs_kernel
def test_the_loop_in_use_is_named() -> None:
    assert kernels.isa() in ("avx512", "avx2", "scalar")
    assert kernels.isa() in CompactSparseLinear(torch.eye(3), None).execution


def test_layers_the_format_cannot_hold_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_SPARSE_INPUTS} inputs, got {MAX_SPARSE_INPUTS + 1}; keep"):
        CompactSparseLinear(torch.zeros(1, MAX_SPARSE_INPUTS + 1), None)
    w = torch.eye(4)
    with pytest.raises(ValueError, match="codebooks hold 1..256 values .* got 300; use the fp32-values form"):
        CompactSparseLinear(w, None, codebook=(torch.randn(300), torch.zeros(4, 4, dtype=torch.long)))


def test_an_inference_form_exports_to_onnx_as_the_same_function(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import torchshrink as ts

    torch.manual_seed(0)
    m = ts.cluster(ts.prune(ts.models.create("lenet300"), ts.MagnitudePruning(sparsity=0.92)),
                   ts.KMeansSharing(bits=4)).eval()
    x = torch.randn(2, 1, 28, 28)
    f = ts.for_inference(m, example=x, prefer="memory")
    assert all(isinstance(getattr(f, n), CompactSparseLinear) for n in ("fc1", "fc2", "fc3"))
    result = ts.export(f, tmp_path / "m.onnx", example=x)
    assert result.parity is not None and result.parity.passed
    # the compact layers are written as dense weights (one constant each), not scatter graphs
    fp32 = 4 * sum(p.numel() for p in ts.models.create("lenet300").parameters())
    assert result.bytes < 1.01 * fp32


@needs_kernel
def test_copies_and_bad_inputs_of_a_bound_layer() -> None:
    import copy

    keep, w, _, _, b = _case(12, 40, 0.3, 0, seed=3)
    layer = CompactSparseLinear(w, b)
    x = torch.randn(2, 40)
    first = layer(x)  # binds the kernel's pointers
    twin = copy.deepcopy(layer)  # its own tensors: it must not compute with the original's
    import pickle

    pickled = pickle.loads(pickle.dumps(layer))  # worker processes receive models this way
    assert pickled.cols.dtype == torch.uint16 and torch.equal(pickled(x), first)
    with torch.no_grad():
        layer.values.zero_()  # in place: same storage, so the bound layer sees it
    assert torch.equal(twin(x), first)
    torch.testing.assert_close(layer(x), b.expand(2, 12), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"expects inputs with 40 features in the last dimension, got shape \(2, 39\)"):
        layer(torch.randn(2, 39))
    with pytest.raises(ValueError, match="computes in float32 but its values, bias are torch.float64.*call .float"):
        twin.double()(x.double())
    assert _rel_err(twin.float()(x), x, w, b) < TOL

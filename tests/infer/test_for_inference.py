"""The inference form computes the compressed model's function, holds fewer bytes, and is
chosen by measurement."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.infer import CompactSparseLinear, Int4Linear, kernel_available
from torchshrink.measure import resident_bytes
from torchshrink.quant.static import StaticInt8Layer


def _compressed_lenet(sparsity: float = 0.92, bits: int | None = 4) -> nn.Module:
    torch.manual_seed(0)
    m = ts.prune(ts.models.create("lenet300"), ts.MagnitudePruning(sparsity=sparsity))
    return ts.cluster(m, ts.KMeansSharing(bits=bits)) if bits else m


def _fixed_timer(order: list[str]) -> Callable[[dict[str, Callable[[], Any]]], dict[str, float]]:
    """A timer that ranks candidates by `order` (first = fastest) and still calls each once."""
    def timer(fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
        for f in fns.values():
            f()
        return {k: (order.index(k) if k in order else len(order)) * 1e-3 + 1e-3 for k in fns}
    return timer


def test_codebook_and_sparse_forms_equal_the_compressed_model() -> None:
    m = _compressed_lenet()
    x = torch.randn(4, 1, 28, 28)
    for order in (["compact CSR + codebook"], ["compact CSR"], ["torch CSR"], ["dense"]):
        f = ts.for_inference(m, example=x, timer=_fixed_timer(order))
        assert all(r["chosen"] == order[0] for r in f.torchshrink_inference.values())
        with torch.no_grad():
            torch.testing.assert_close(f(x), m(x), rtol=1e-5, atol=1e-5)
    assert not any(ts.nn.params.is_parametrized(mod) for mod in f.modules())


def test_choice_follows_the_measurement_and_is_recorded() -> None:
    m = _compressed_lenet(bits=None)
    x = torch.randn(1, 1, 28, 28)
    f = ts.for_inference(m, example=x, timer=_fixed_timer(["torch CSR", "dense"]))
    rec = f.torchshrink_inference["fc1"]
    assert rec["chosen"] == "torch CSR" and rec["reason"] == "fastest measured"
    assert set(rec["times_ms"]) == {"dense", "compact CSR", "torch CSR"}
    report = ts.measure(f, example=x, latency=False)
    assert "torch CSR: fastest measured at batch 1" in next(r.execution for r in report.layers if r.name == "fc1")


def test_memory_preference_picks_fewest_bytes_and_is_small() -> None:
    m = _compressed_lenet()
    x = torch.randn(1, 1, 28, 28)
    f = ts.for_inference(m, example=x, prefer="memory", timer=_fixed_timer(["dense"]))
    assert all(r["chosen"] == "compact CSR + codebook" for r in f.torchshrink_inference.values())
    assert isinstance(f.fc1, CompactSparseLinear) and f.fc1.codes is not None
    fp32 = 4 * sum(p.numel() for p in ts.models.create("lenet300").parameters())
    assert resident_bytes(f) <= 0.35 * fp32
    with torch.no_grad():
        torch.testing.assert_close(f(x), m(x), rtol=1e-5, atol=1e-5)


def test_weight_only_int4_kernel_and_decoded_forms() -> None:
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32))
    fp32 = resident_bytes(lin)
    q = ts.quantize(lin, ts.WeightOnly(bits=4, group_size=64))
    x = torch.randn(2, 256)
    with torch.no_grad():
        ref = q.train()(x)  # training mode: the exact float path
        kernel_ref = q.eval()(x)  # eval mode: the int4 kernel by default
    f = ts.for_inference(q, example=x, timer=_fixed_timer(["int4 kernel"]))
    assert isinstance(f[0], Int4Linear)
    torch.testing.assert_close(f(x), kernel_ref, rtol=0, atol=0)
    torch.testing.assert_close(f(x), ref, rtol=3e-2, atol=3e-2)  # bf16 activations and scales
    f = ts.for_inference(q, example=x, timer=_fixed_timer(["dense (decoded once)"]))
    assert isinstance(f[0], nn.Linear)
    torch.testing.assert_close(f(x), ref, rtol=1e-5, atol=1e-5)
    f = ts.for_inference(q, example=x, prefer="memory", timer=_fixed_timer([]))
    assert isinstance(f[0], ts.quant.WeightOnlyLayer) and resident_bytes(f) < fp32 / 5


def test_resident_bytes_counts_shared_storage_once() -> None:
    lin = nn.Linear(10, 10)
    tied = nn.Sequential(lin, nn.Linear(10, 10))
    tied[1].weight = lin.weight
    assert resident_bytes(tied) == 4 * (100 + 10 + 10)
    assert ts.measure(lin, example=torch.randn(1, 10), latency=False).resident_bytes == 440


@pytest.mark.skipif(not kernel_available(), reason="no C compiler on this machine")
def test_compact_kernel_matches_dense_at_several_batches() -> None:
    torch.manual_seed(0)
    w = torch.randn(37, 300) * (torch.rand(37, 300) < 0.1)
    b = torch.randn(37)
    layer = CompactSparseLinear(w, b)
    for batch in (1, 5, 17, 40):
        x = torch.randn(batch, 300)
        torch.testing.assert_close(layer(x), nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.dense_weight(), w)


def test_bad_prefer_is_a_config_error() -> None:
    with pytest.raises(ts.ConfigError, match="prefer must be 'speed' or 'memory'"):
        ts.for_inference(nn.Linear(2, 2), example=torch.randn(1, 2), prefer="fast")  # type: ignore[arg-type]


def test_dynamic_int8_is_decoded_only_where_faster_and_kept_layers_are_recorded() -> None:
    torch.manual_seed(0)
    q = ts.quantize(nn.Sequential(nn.Linear(16, 8)), ts.DynamicInt8()).eval()
    x = torch.randn(3, 16)
    with torch.no_grad():
        ref = q(x)
    f = ts.for_inference(q, example=x, timer=_fixed_timer(["int8 kernel"]))
    assert f.torchshrink_inference["0"]["chosen"] == "int8 kernel"
    torch.testing.assert_close(f(x), ref, rtol=0, atol=0)
    f = ts.for_inference(q, example=x, timer=_fixed_timer(["dense (decoded once)"]))
    assert isinstance(f[0], nn.Linear)
    torch.testing.assert_close(f(x), ref, rtol=0.05, atol=0.05)  # activation rounding dropped
    f = ts.for_inference(q, example=x, decode_int8=False)
    assert f.torchshrink_inference["0"] == {"chosen": "kept", "reason": "int8 kernel (quantized::linear_dynamic)"}


def test_load_inference_needs_an_example(tmp_path: Any) -> None:
    m = _compressed_lenet()
    path = tmp_path / "m.tsz"
    ts.save(m, path)
    with pytest.raises(ts.ConfigError, match="needs example="):
        ts.load(path, inference=True)
    x = torch.randn(1, 1, 28, 28)
    f = ts.load(path, inference=True, example=x, prefer="memory")
    assert resident_bytes(f) < resident_bytes(ts.load(path)) / 10
    with torch.no_grad():
        torch.testing.assert_close(f(x), m(x), rtol=1e-5, atol=1e-5)


def test_loading_the_sparse_kernel_keeps_subnormal_floats() -> None:
    # A library built with -ffast-math turns on flush-to-zero for the whole process.
    from torchshrink.infer import kernels

    kernels.available()
    tiny = torch.tensor(1e-40, dtype=torch.float32)
    assert float(tiny * 1.0) != 0.0


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.Flatten(),
                         nn.Linear(8 * 7 * 7, 10)).eval()


@pytest.mark.parametrize("config", [ts.WeightOnly(bits=4, group_size=None), ts.Cast(dtype="bfloat16")],
                         ids=["weight_only", "cast"])
def test_quantized_convolutions_can_be_decoded_once(config: Any) -> None:
    """Convolutions in weight-only or low-precision form get a dense fp32 form too (without one,
    a weight-only conv decodes its codes on every call and runs slower than fp32)."""
    q = ts.quantize(_conv_net(), config).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = q(x)
    f = ts.for_inference(q, example=x, timer=_fixed_timer(["dense (decoded once)"]))
    for name in ("0", "2", "4"):
        assert f.torchshrink_inference[name]["chosen"] == "dense (decoded once)", name
        assert "dense (decoded once)" in f.torchshrink_inference[name]["bytes"]
    tol = 0 if isinstance(config, ts.WeightOnly) else 0.05  # bf16 products rounded in the original
    torch.testing.assert_close(f(x), ref, rtol=tol, atol=tol)
    if isinstance(config, ts.Cast):
        kept = ts.for_inference(q, example=x, decode_int8=False)
        assert all(r["chosen"] == "kept" for r in kept.torchshrink_inference.values())


def test_static_int8_layers_are_decoded_only_where_faster() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    calib = [torch.randn(8, 16) for _ in range(4)]
    q = ts.quantize(net, ts.StaticInt8(), calibration=calib).eval()
    x = torch.randn(3, 16)
    with torch.no_grad():
        ref, exact = q(x), net(x)
    assert isinstance(q[0], StaticInt8Layer)
    f = ts.for_inference(q, example=x, timer=_fixed_timer(["dense (decoded once)"]))
    assert {r["chosen"] for r in f.torchshrink_inference.values()} == {"dense (decoded once)"}
    # decoded, the layers keep the int8 weights but drop the activation rounding
    assert (f(x) - ref).abs().max() < 0.1
    torch.testing.assert_close(f[0].weight, q[0].ts_effective_weights()["weight"], rtol=0, atol=0)
    assert 0 < (f(x) - exact).abs().max() < 0.1  # int8 weights, float activations

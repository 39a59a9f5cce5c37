"""Post-training quantization: DynamicInt8, StaticInt8, WeightOnly, Cast on a trained model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.quant import DynamicInt8Linear, StaticInt8Layer, WeightOnlyLayer
from torchshrink.quant.cast import CastLayer
from torchshrink.quant.fake import sqnr_db
from torchshrink.quant.packing import packed_bytes
from torchshrink.train import evaluate


def _acc(model: nn.Module, loaders: tuple) -> float:
    return evaluate(model, loaders[2])["accuracy"]


def test_dynamic_int8_runs_int8_kernel_and_keeps_accuracy(trained: nn.Module, synthetic_loaders: tuple) -> None:
    base = _acc(trained, synthetic_loaders)
    ref = copy.deepcopy(trained)
    q = ts.quantize(trained, ts.DynamicInt8())
    layers = [m for m in q.modules() if isinstance(m, DynamicInt8Linear)]
    assert len(layers) == 2
    assert all(m.weight_int8.dtype == torch.int8 and "int8 kernel" in m.execution for m in layers)
    x = torch.randn(5, 1, 28, 28)
    y = q(x)
    assert y.dtype == torch.float32 and y.shape == (5, 10)
    assert sqnr_db(ref(x), y) > 25
    assert abs(_acc(q, synthetic_loaders) - base) <= 1.0
    w = layers[0].ts_effective_weights()["weight"]
    assert sqnr_db(ref.fc1.weight, w) >= 35


def test_static_int8_real_kernels_and_accuracy(trained: nn.Module, synthetic_loaders: tuple) -> None:
    base = _acc(trained, synthetic_loaders)
    q = ts.quantize(trained, ts.StaticInt8(observer="percentile", calibration_batches=4),
                    calibration=synthetic_loaders[0], progress=False)
    layers = {n: m for n, m in q.named_modules() if isinstance(m, StaticInt8Layer)}
    assert set(layers) == {"conv", "fc1", "fc2"}
    # fc2 produces the logits: float output (see the next test); the others run the int8 kernel
    assert all(m.real and m.execution.startswith("int8 kernel") for n, m in layers.items() if n != "fc2")
    assert isinstance(q.bn, nn.Identity)  # folded before quantizing
    assert abs(_acc(q, synthetic_loaders) - base) <= 1.0


def test_the_layer_producing_the_model_output_keeps_a_float_output(tmp_path: object) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    data = [(torch.randn(32, 16), torch.zeros(32, dtype=torch.long)) for _ in range(4)]
    q = ts.quantize(copy.deepcopy(model), ts.StaticInt8(calibration_batches=4), calibration=data, progress=False)
    first, last = q[0], q[2]
    assert isinstance(first, StaticInt8Layer) and isinstance(last, StaticInt8Layer)
    assert not first.float_output and first.real
    assert last.float_output and "float output" in last.execution
    x = torch.randn(64, 16)
    with torch.no_grad():
        y = q(x)
        # exactly the int8 input grid times the int8 weight grid, not rounded to an output grid
        h = q[1](first(x))
        expect = torch.nn.functional.linear(last._fq(h, "in"), last.weight, last.bias)
    assert torch.allclose(y, expect, atol=1e-6)
    steps = y / last.out_scale
    assert not torch.allclose(steps, steps.round(), atol=1e-3)  # off the output grid
    path = f"{tmp_path}/q.tsz"
    ts.save(q, path)
    back = ts.load(path, like=nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)))
    assert back[2].float_output and not back[0].float_output
    assert torch.equal(back(x), y)


def test_a_layer_followed_by_more_computation_keeps_its_output_grid() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.LogSoftmax(-1)).eval()
    data = [(torch.randn(32, 16), torch.zeros(32, dtype=torch.long)) for _ in range(2)]
    q = ts.quantize(model, ts.StaticInt8(calibration_batches=2), calibration=data, progress=False)
    assert isinstance(q[0], StaticInt8Layer) and not q[0].float_output


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile", "mse", "entropy"])
def test_every_observer_calibrates(observer: str, trained: nn.Module, synthetic_loaders: tuple) -> None:
    base = _acc(trained, synthetic_loaders)
    q = ts.quantize(trained, ts.StaticInt8(observer=observer, calibration_batches=2),
                    calibration=synthetic_loaders[0], progress=False)
    assert _acc(q, synthetic_loaders) >= base - 2.0


def test_static_int16_activations_are_simulated_and_labelled(trained: nn.Module, synthetic_loaders: tuple) -> None:
    q = ts.quantize(trained, ts.StaticInt8(activation_bits=16, calibration_batches=2),
                    calibration=synthetic_loaders[0], progress=False)
    assert q.fc1.execution.startswith("fake-quant (simulated")
    assert q(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_static_without_calibration_is_an_error(trained: nn.Module) -> None:
    with pytest.raises(ts.ConfigError, match="StaticInt8 needs calibration data"):
        ts.quantize(trained, ts.StaticInt8())


def test_calibration_batches_of_wrong_shape_are_an_error(trained: nn.Module) -> None:
    bad = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ts.DataError, match=r"calibration batch 0 has shape \(4, 3, 32, 32\), but the model expects"):
        ts.quantize(trained, ts.StaticInt8(), calibration=bad, progress=False)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))  # no input_shape: caught at run time
    with pytest.raises(ts.DataError, match="does not fit"):
        ts.quantize(plain, ts.StaticInt8(), calibration=[torch.randn(2, 100)], progress=False)


def test_calibration_shows_progress_bar(trained: nn.Module, synthetic_loaders: tuple,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    ts.quantize(trained, ts.StaticInt8(calibration_batches=2), calibration=synthetic_loaders[0], progress=True)
    assert "calibrate StaticInt8" in capsys.readouterr().err


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_only_packs_and_matches_fake_quant(bits: int, trained: nn.Module, synthetic_loaders: tuple) -> None:
    ref = copy.deepcopy(trained)
    q = ts.quantize(trained, ts.WeightOnly(bits=bits, group_size=None, ignore=("conv",)))
    fc1 = q.fc1
    assert isinstance(fc1, WeightOnlyLayer) and fc1.packed.dtype == torch.uint8
    assert fc1.packed.numel() == packed_bytes(64 * 8 * 14 * 14, bits)
    assert fc1.execution == f"bit-packed int{bits} dequant-on-the-fly"
    from torchshrink.quant.fake import FakeQuant

    expected = FakeQuant(tuple(ref.fc1.weight.shape), bits=bits, method="mse")(ref.fc1.weight.detach())
    assert torch.equal(fc1.ts_effective_weights()["weight"], expected)
    if bits >= 4:
        assert abs(_acc(q, synthetic_loaders) - _acc(ref, synthetic_loaders)) <= 3.0


def test_weight_only_int4_groupwise_sqnr() -> None:
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(512, 256))
    w = lin[0].weight.detach().clone()
    q = ts.quantize(lin, ts.WeightOnly(bits=4, group_size=128))
    assert sqnr_db(w, q[0].ts_effective_weights()["weight"]) >= 18
    assert q[0].packed.numel() == 512 * 256 // 2


def test_group_size_falls_back_per_layer_or_raises_when_strict(trained: nn.Module) -> None:
    with pytest.raises(ts.ConfigError, match=r"group_size=128 does not divide the input width 1568 of layer 'fc1'"):
        ts.quantize(copy.deepcopy(trained), ts.WeightOnly(bits=4, group_size=128, targets=("fc*",), strict=True))
    q = ts.quantize(trained, ts.WeightOnly(bits=4, group_size=128, targets=("fc*",)))
    assert q.fc1.group_size == 112  # the largest divisor of 1568 up to 128
    assert ts.coverage(q)[-1].notes["fc1"] == ("group_size=128 does not divide the input width 1568; "
                                               "used group_size=112")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cast_keeps_float32_interface(dtype: str, trained: nn.Module, synthetic_loaders: tuple) -> None:
    ref = copy.deepcopy(trained)
    q = ts.quantize(trained, ts.Cast(dtype=dtype))
    assert isinstance(q.fc1, CastLayer) and q.fc1.weight.dtype == getattr(torch, dtype)
    x = torch.randn(3, 1, 28, 28)
    assert q(x).dtype == torch.float32
    assert sqnr_db(ref(x), q(x)) > 25


@pytest.mark.parametrize(("bits", "group", "symmetric"), [(4, 16, True), (3, None, False), (8, None, True), (2, 32, False)])
def test_quantized_embedding_dequantizes_only_the_rows_it_looks_up(bits: int, group: int | None,
                                                                    symmetric: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(1000, 64))
    q = ts.quantize(model, ts.WeightOnly(bits=bits, group_size=group, symmetric=symmetric))
    layer = q[0]
    from torchshrink.quant.lookup import rows_addressable

    assert isinstance(layer, WeightOnlyLayer) and rows_addressable(layer)
    ids = torch.randint(0, 1000, (3, 7))
    table = layer.dequantized_weight()
    assert torch.equal(layer(ids), torch.nn.functional.embedding(ids, table))  # bit for bit


def test_a_hugging_face_lm_head_is_found_as_the_output_layer() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=4, vocab_size=256, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    calib = [torch.randint(0, 256, (2, 16)) for _ in range(2)]
    q = ts.quantize(model, ts.StaticInt8(calibration_batches=2), calibration=calib, progress=False)
    layers = {n: m for n, m in q.named_modules() if isinstance(m, StaticInt8Layer)}
    assert len(layers) == 15  # 7 linears per block x 2, and the head
    assert [n for n, m in layers.items() if m.float_output] == ["lm_head"]

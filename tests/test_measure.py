"""ts.measure: exact counts on the reference models, effective weights, latency stability."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import torchshrink as ts
from torchshrink.errors import ArtifactError, ConfigError, DataError
from torchshrink.measure import count_macs, num_threads, slice_batch, time_forward


def _report(name: str, **kw: object) -> ts.Report:
    model = ts.models.create(name)
    return ts.measure(model, example=ts.models.example_input(model, 1), latency=False, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "params", "macs"), [("lenet300", 266_610, 266_200),
                                                      ("lenet5", 431_080, 2_293_000)])
def test_reference_counts_are_exact(name: str, params: int, macs: int) -> None:
    r = _report(name)
    assert r.params == params
    assert r.nonzero_params <= params  # fresh init may contain no exact zeros, but never more
    assert r.dense_bytes == 4 * params
    assert r.macs == macs
    assert r.artifact_bytes is None


def test_lenet5_per_layer_macs_and_params() -> None:
    r = _report("lenet5")
    rows = {row.name: row for row in r.layers}
    assert [row.name for row in r.layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert rows["conv1"].macs == 20 * 24 * 24 * 25
    assert rows["conv2"].macs == 50 * 8 * 8 * 20 * 25
    assert rows["fc1"].params == 800 * 500 + 500
    assert all(row.execution == "dense" and row.type in ("Conv2d", "Linear") for row in r.layers)


@pytest.mark.parametrize("name", ["resnet_small", "gpt_tiny", "mobilenet_small"])
def test_macs_scale_with_batch(name: str) -> None:
    model = ts.models.create(name)
    one, _ = count_macs(model, ts.models.example_input(model, 1))
    four, _ = count_macs(model, ts.models.example_input(model, 4))
    assert one > 0
    assert four == 4 * one
    # Report.macs is per sample, whatever batch the example has.
    assert ts.measure(model, example=ts.models.example_input(model, 3), latency=False).macs == one


def test_gpt_attention_is_counted() -> None:
    cfg = ts.models.GPTConfig()
    model = ts.models.create("gpt_tiny")
    t, d = cfg.block_size, cfg.n_embd
    linear = cfg.n_layer * t * (4 * d * d + 2 * d * 4 * d) + t * d * cfg.vocab_size
    attention = cfg.n_layer * 2 * t * t * d  # q @ k^T and attn @ v over all heads
    macs, _ = count_macs(model, ts.models.example_input(model, 1))
    assert macs == linear + attention


def test_nonzeros_count_a_manually_zeroed_weight() -> None:
    torch.manual_seed(0)
    model = ts.models.create("lenet300")
    with torch.no_grad():
        model.fc2.weight[:50].zero_()  # 50 * 300 = 15,000 zeros
    r = ts.measure(model, example=ts.models.example_input(model), latency=False)
    assert r.params == 266_610
    assert r.nonzero_params == 266_610 - 15_000
    row = next(row for row in r.layers if row.name == "fc2")
    assert row.nonzeros == 30_100 - 15_000
    assert row.sparsity == pytest.approx(15_000 / 30_100)
    assert r.sparsity == pytest.approx(15_000 / 266_610)


class _HalfMask(nn.Module):
    execution = "masked only"

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        mask = torch.ones(shape)
        mask[: shape[0] // 2] = 0
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


class _Codebook(nn.Module):
    """Ignores its input: weight = centroids[indices], like weight sharing does."""

    execution = "shared weights (codebook)"

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.centroids = nn.Parameter(torch.tensor([0.0, 0.5, -0.5, 1.0]))
        self.register_buffer("indices", torch.randint(0, 4, shape, generator=torch.Generator().manual_seed(0)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.centroids[self.indices]


def test_parametrized_weights_count_their_effective_value() -> None:
    model = ts.models.create("lenet300")
    parametrize.register_parametrization(model.fc1, "weight", _HalfMask(model.fc1.weight.shape))
    parametrize.register_parametrization(model.fc3, "weight", _Codebook(model.fc3.weight.shape))
    r = ts.measure(model, example=ts.models.example_input(model), latency=False)
    # Neither `original` nor the codebook's centroids count: the layer computes with 300x784.
    assert r.params == 266_610
    rows = {row.name: row for row in r.layers}
    assert rows["fc1"].type == "Linear"
    assert rows["fc1"].execution == "masked only"
    assert rows["fc1"].params == 235_500
    assert rows["fc1"].nonzeros <= 235_500 - 150 * 784
    codes = model.fc3.parametrizations.weight[0].indices
    assert rows["fc3"].nonzeros == int((codes != 0).sum()) + int(torch.count_nonzero(model.fc3.bias))
    assert rows["fc3"].execution == "shared weights (codebook)"
    assert rows["fc2"].execution == "dense"
    assert r.macs == 266_200


class _PackedLinear(nn.Module):
    """Stores int8 codes and a scale; computes with codes * scale."""

    execution = "int8 weights, dequant on the fly"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        scale = linear.weight.detach().abs().max() / 127
        self.register_buffer("codes", torch.round(linear.weight.detach() / scale).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def ts_effective_weights(self) -> dict[str, torch.Tensor]:
        return {"weight": self.codes.float() * self.scale, "bias": self.bias}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.codes.float() * self.scale, self.bias)


def test_custom_module_reports_effective_weights() -> None:
    model = ts.models.create("lenet300")
    model.fc2 = _PackedLinear(model.fc2)
    r = ts.measure(model, example=ts.models.example_input(model), latency=False)
    assert r.params == 266_610  # codes are buffers; ts_effective_weights supplies the weight
    row = next(row for row in r.layers if row.name == "fc2")
    assert (row.type, row.params, row.execution) == ("_PackedLinear", 30_100, "int8 weights, dequant on the fly")
    assert r.macs == 266_200


def test_tied_weights_count_once() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    r = ts.measure(model, example=torch.arange(3)[None], latency=False)
    assert r.params == 40


def test_metric_and_artifact(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "blob.bin"
    path.write_bytes(b"x" * 1234)
    model = ts.models.create("lenet300")
    r = ts.measure(model, example=ts.models.example_input(model), latency=False, artifact=path,
                   evaluate=lambda m: {"loss": 0.5, "accuracy": 91.25})
    assert r.artifact_bytes == 1234
    assert r.metric == 91.25 and r.metric_name == "accuracy"
    assert r.compression_ratio == pytest.approx(4 * 266_610 / 1234)
    r2 = ts.measure(model, example=ts.models.example_input(model), latency=False, evaluate=lambda m: 0.75)
    assert (r2.metric, r2.metric_name) == (0.75, "metric")

    def top1(m: nn.Module) -> float:
        return 12.5

    r3 = ts.measure(model, example=ts.models.example_input(model), latency=False, evaluate=top1)
    assert (r3.metric, r3.metric_name, r3.to_dict()["top1"]) == (12.5, "top1", 12.5)
    with pytest.raises(ArtifactError, match="cannot read the size of artifact"):
        ts.measure(model, example=ts.models.example_input(model), latency=False, artifact=path.with_name("no"))


def test_table_and_json_keys() -> None:
    model = ts.models.create("lenet5")
    r = ts.measure(model, example=ts.models.example_input(model), batch_sizes=(1, 4), runs=5, warmup=1,
                   threads=1, evaluate=lambda m: 98.5, metric_name="accuracy")
    d = json.loads(r.to_json())
    for key in ("params", "nonzero_params", "dense_bytes", "artifact_bytes", "macs", "latency", "metric",
                "layers", "accuracy"):
        assert key in d
    assert (d["params"], d["macs"], d["accuracy"]) == (431_080, 2_293_000, 98.5)
    assert set(d["latency"]) == {"1", "4"}
    lat = d["latency"]["4"]
    assert (lat["batch"], lat["runs"], lat["threads"], lat["warmup"]) == (4, 5, 1, 1)
    assert lat["p25_ms"] <= lat["median_ms"] <= lat["p75_ms"]
    assert set(d["layers"][0]) >= {"name", "type", "params", "nonzeros", "sparsity", "execution", "macs"}
    text = r.table()
    for needle in ("431,080", "2,293,000", "conv1", "execution", "5 runs", "1 thr", "accuracy"):
        assert needle in text


def test_compare_reports_ratios() -> None:
    model = ts.models.create("lenet300")
    x = ts.models.example_input(model)
    before = ts.measure(model, example=x, runs=3, warmup=1, threads=1, evaluate=lambda m: 95.0,
                        metric_name="accuracy")
    with torch.no_grad():
        model.fc1.weight[:150].zero_()
    after = ts.measure(model, example=x, runs=3, warmup=1, threads=1, evaluate=lambda m: 94.5,
                       metric_name="accuracy")
    text = ts.compare(before, after)
    assert "accuracy" in text and "-0.50" in text
    nz = next(line for line in text.splitlines() if line.startswith("nonzero params"))
    ratio = before.nonzero_params / after.nonzero_params
    assert f"{ratio:.2f}x smaller" in nz
    assert "latency ms (batch 1, 1 thr)" in text
    params_line = next(line for line in text.splitlines() if line.startswith("params"))
    assert params_line.rstrip().endswith("same")


def test_latency_restores_threads_and_mode() -> None:
    model = ts.models.create("lenet300").train()
    before = torch.get_num_threads()
    stats = time_forward(model, ts.models.example_input(model, 2), runs=3, warmup=0, threads=1)
    assert (stats.threads, stats.runs, stats.batch) == (1, 3, 2)
    assert torch.get_num_threads() == before
    assert model.training
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_same_model_timed_twice_agrees_within_spread() -> None:
    """Two measurements of one model agree: each median lies inside the other's reported
    min-max band, and the reports say how many runs and threads they used.

    A shared CPU can change load for a whole measurement window; one retry of the pair keeps
    that from failing the test while a real inconsistency (e.g. timing the warm-up, or a
    thread count not applied) would fail every attempt.
    """
    torch.manual_seed(0)
    model = ts.models.create("lenet5")
    x = ts.models.example_input(model, 1)
    ok = False
    for _ in range(3):
        a = time_forward(model, x, runs=200, warmup=20, threads=1)
        b = time_forward(model, x, runs=200, warmup=20, threads=1)
        assert (a.runs, a.threads, b.runs, b.threads) == (200, 1, 200, 1)
        assert a.min_ms <= a.p25_ms <= a.median_ms <= a.p75_ms <= a.max_ms
        if a.min_ms <= b.median_ms <= a.max_ms and b.min_ms <= a.median_ms <= b.max_ms:
            ok = True
            break
    assert ok, f"medians {a.median_ms:.4f} and {b.median_ms:.4f} ms disagree beyond the bands"


def test_slice_batch() -> None:
    x = torch.arange(6).reshape(3, 2)
    assert slice_batch(x, 2).tolist() == [[0, 1], [2, 3]]
    assert slice_batch(x, 5).shape == (5, 2)
    pair = slice_batch((x, {"m": x}), 1)
    assert pair[0].shape == (1, 2) and pair[1]["m"].shape == (1, 2)


def test_bad_inputs_are_clear_errors() -> None:
    model = ts.models.create("lenet300")
    with pytest.raises(DataError, match=r"LeNet300 failed on the example input of shape \[1, 3, 5\]"):
        ts.measure(model, example=torch.zeros(1, 3, 5), latency=False)
    with pytest.raises(ConfigError, match="batch_sizes must be positive"):
        ts.measure(model, example=torch.zeros(1, 784), batch_sizes=(0,))
    with pytest.raises(ConfigError, match="needs example="):
        ts.measure(nn.Linear(3, 3), latency=False)
    with pytest.raises(ConfigError, match="runs must be >= 1"):
        time_forward(model, torch.zeros(1, 784), runs=0)


def test_interleaved_times_shape_and_order_of_calls() -> None:
    from torchshrink.measure.latency import interleaved_times

    calls: list[str] = []
    out = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                            rounds=3, per_round=2, warmup=1)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warm-up, then interleaved rounds
    assert [len(r) for r in out["a"]] == [2, 2, 2] and all(t >= 0 for r in out["b"] for t in r)


def test_time_forward_counts_page_faults_per_call() -> None:
    model = ts.models.create("lenet300")
    stats = time_forward(model, ts.models.example_input(model, 2), runs=3, warmup=1, threads=1)
    if sys.platform.startswith("linux"):
        assert stats.page_faults is not None and stats.page_faults >= 0
    assert "page_faults" in stats.to_dict()


def test_interleaved_times_waits_for_the_device_inside_each_timing() -> None:
    from torchshrink.measure.latency import interleaved_times

    log: list[str] = []
    interleaved_times({"a": lambda: log.append("a")}, rounds=2, warmup=1, sync=lambda: log.append("sync"))
    assert log == ["a", "sync", "a", "sync", "a", "sync"]

"""Layers as users have them: transformers Conv1D, MultiheadAttention, LSTM/GRU and Embedding
seen through nn.kinds, and the coverage record that says what each method changed."""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.nn.attention import SplitAttention, split_attention
from torchshrink.nn.kinds import weight_matrices
from torchshrink.nn.recurrent import GateLSTM, split_rnn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402


def _gpt2() -> nn.Module:
    pytest.importorskip("transformers")
    return zoo.ZOO["gpt2"].model()


def test_weight_only_int4_g32_quantizes_every_gpt2_projection_and_the_tied_pair_once() -> None:
    from transformers.pytorch_utils import Conv1D

    m = _gpt2()
    x = zoo.ZOO["gpt2"].input()
    assert m.lm_head.weight is m.transformer.wte.weight
    q = ts.quantize(m, ts.WeightOnly(bits=4, group_size=32))
    assert not any(isinstance(mod, (Conv1D, nn.Linear, nn.Embedding)) for mod in q.modules())
    # one set of codes for the tied head and embedding: the same tensors, not a copy
    assert q.lm_head.packed is q.transformer.wte.packed and q.lm_head.scale is q.transformer.wte.scale
    cov = ts.coverage(q)[-1]
    assert cov.share == 1.0 and not cov.skipped
    assert ("transformer.h.0.attn.c_attn", "Conv1D") in cov.converted
    with torch.no_grad():
        y = q(x).logits
    assert torch.isfinite(y).all() and y.shape == (2, 16, zoo.VOCAB)


def test_conv1d_conversion_computes_the_same_function() -> None:
    m = _gpt2()
    x = zoo.ZOO["gpt2"].input()
    with torch.no_grad():
        ref = m(x).logits
        ts.nn.kinds.normalize(m)
        assert isinstance(m.transformer.h[0].mlp.c_fc, nn.Linear)
        assert torch.allclose(m(x).logits, ref, atol=1e-5)


def test_kmeans_keeps_a_tied_weight_one_parameter_with_one_codebook() -> None:
    m = _gpt2()
    q = ts.cluster(m, ts.KMeansSharing(bits=4, max_iter=5))
    head, wte = q.lm_head, q.transformer.wte
    assert head.parametrizations.weight.original is wte.parametrizations.weight.original
    assert list(head.parametrizations.weight) == list(wte.parametrizations.weight)  # the same objects
    assert torch.unique(wte.weight).numel() <= 16


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 2,
                                         enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.enc(self.inp(x), src_key_padding_mask=pad).mean(1))


@pytest.mark.parametrize("config", [ts.DynamicInt8(), ts.WeightOnly(bits=8, group_size=None),
                                    ts.SvdFactorization(ratio=0.5)], ids=["dynamic", "weight_only", "svd"])
def test_transformer_encoder_runs_in_eval_after_swapping_methods(config: ts.Config) -> None:
    torch.manual_seed(0)
    m = _Encoder().eval()
    x = torch.randn(4, 10, 8)
    pad = torch.zeros(4, 10, dtype=torch.bool)
    pad[:, 7:] = True
    with torch.no_grad():
        ref = m(x, pad)
    q = ts.apply(m, config)
    assert isinstance(q.enc.layers[0].self_attn, SplitAttention)
    with torch.no_grad():
        y = q(x, pad)
    assert torch.isfinite(y).all()
    if isinstance(config, ts.SvdFactorization):  # random weights are not low rank: a bounded error
        assert (y - ref).norm() < ref.norm()
    else:
        assert (y - ref).abs().max() < 0.05


def test_static_int8_calibrates_a_transformer_encoder() -> None:
    torch.manual_seed(0)
    m = _Encoder().eval()
    x = torch.randn(8, 10, 8)
    with torch.no_grad():
        ref = m(x)
    q = ts.quantize(m, ts.StaticInt8(), calibration=[(x[:4],), (x[4:],)])
    with torch.no_grad():
        assert (q(x) - ref).abs().max() < 0.05


def test_split_attention_matches_multihead_attention_with_masks() -> None:
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=12, vdim=10).eval()
        q, k, v = torch.randn(3, 5, 16), torch.randn(3, 7, 12), torch.randn(3, 7, 10)
        if not batch_first:
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        pad = torch.rand(3, 7) > 0.7
        pad[:, 0] = False
        mask = torch.rand(5, 7) > 0.8
        mask[:, 0] = False
        split = split_attention("attn", mha)
        a, wa = mha(q, k, v, key_padding_mask=pad, attn_mask=mask)
        b, wb = split(q, k, v, key_padding_mask=pad, attn_mask=mask)
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(wa, wb, atol=1e-5)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_gate_rnn_matches_the_fused_kernel(cell: type[nn.LSTM] | type[nn.GRU]) -> None:
    torch.manual_seed(0)
    rnn = cell(5, 7, num_layers=2, bidirectional=True)
    x, h0 = torch.randn(6, 3, 5), torch.randn(4, 3, 7)
    hx = (h0, torch.randn(4, 3, 7)) if cell is nn.LSTM else h0
    a, ha = rnn(x, hx)
    b, hb = split_rnn("rnn", rnn)(x, hx)
    assert torch.allclose(a, b, atol=1e-5)
    for u, v in zip(ha if cell is nn.LSTM else (ha,), hb if cell is nn.LSTM else (hb,)):
        assert torch.allclose(u, v, atol=1e-5)


def test_cnn_lstm_at_half_sparsity_is_half_sparse_overall_and_saves(tmp_path: Path) -> None:
    m = zoo.ZOO["cnn_lstm"].model()
    x = zoo.ZOO["cnn_lstm"].input()
    q = ts.prune(m, ts.MagnitudePruning(sparsity=0.5))
    assert isinstance(q.lstm, GateLSTM)
    sizes = weight_matrices(q)
    zeros = sum(int((q.get_submodule(n).weight == 0).sum()) for n in sizes)
    total = sum(c for _, c in sizes.values())
    assert total == sum(p.numel() for n, p in zoo.ZOO["cnn_lstm"].model().named_parameters() if "weight" in n)
    assert zeros / total == pytest.approx(0.5, abs=1e-3)
    ts.save(q, tmp_path / "m.tsz")
    back = ts.load(tmp_path / "m.tsz", like=zoo.ZOO["cnn_lstm"].model())
    with torch.no_grad():
        assert torch.equal(back(x), q(x))


def test_a_method_that_leaves_most_weights_untouched_warns_naming_them() -> None:
    m = zoo.ZOO["resnet18"].model()
    with pytest.warns(UserWarning, match=r"DynamicInt8 left 100% of the model's weights untouched \(699696 of 700976\): "
                                         r"layer4\.0\.conv2 \(Conv2d, 147456 weights"):
        q = ts.quantize(m, ts.DynamicInt8())
    cov = ts.coverage(q)[-1]
    assert cov.changed == {"fc": "Linear -> DynamicInt8Linear"}
    assert cov.skipped["conv1"] == "Conv2d: not changed by DynamicInt8 (changed kinds: Linear)"


def test_targets_exclusions_are_recorded_not_warned() -> None:
    m = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = ts.prune(m, ts.MagnitudePruning(sparsity=0.5, targets=("0",)))
    assert ts.coverage(q)[-1].skipped == {"2": "excluded by targets/ignore", "4": "excluded by targets/ignore"}


def test_weight_only_group_fallback_is_recorded_and_strict_raises() -> None:
    m = nn.Sequential(nn.Linear(96, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.raises(ts.ConfigError, match=r"group_size=128 does not divide the input width 96 of layer '0'"):
        ts.quantize(copy.deepcopy(m), ts.WeightOnly(group_size=128, strict=True))
    q = ts.quantize(m, ts.WeightOnly(group_size=128))
    assert q[0].granularity == "channel" and q[2].granularity == "channel"
    assert ts.coverage(q)[-1].notes == {
        "0": "group_size=128 does not divide the input width 96; used one scale per output channel",
        "2": "group_size=128 does not divide the input width 32; used one scale per output channel"}


def test_dynamic_int8_reduce_range_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchshrink.quant import dynamic

    for vnni in (True, False):
        monkeypatch.setattr(dynamic, "has_vnni", lambda v=vnni: v)
        q = ts.quantize(nn.Sequential(nn.Linear(8, 8)), ts.DynamicInt8())
        assert q[0].reduce_range is (not vnni)
    q = ts.quantize(nn.Sequential(nn.Linear(8, 8)), ts.DynamicInt8(reduce_range=True))
    assert q[0].reduce_range is True


def test_channel_pruning_on_a_transformer_encoder_is_not_a_silent_no_op() -> None:
    # fx sees the encoder's residual stream as one fixed group; the module-structure path
    # (heads and MLP width) is what ChannelPruning uses for it, so half the width really goes.
    m = _Encoder().eval()
    x = torch.randn(2, 10, 8)
    out = ts.prune(m, ts.ChannelPruning(ratio=0.5), example=x)
    layer = out.enc.layers[0]
    assert layer.linear1.out_features == 32 and layer.self_attn.num_heads == 2
    assert out(x).shape == (2, 3)


def test_recipes_select_layers_by_type_position_and_role() -> None:
    from torchshrink.nn import select_layers

    m = zoo.ZOO["transformer_encoder"].model()
    ts.nn.kinds.normalize(m)
    names = [n for n, _ in select_layers(m, targets=["Linear"], ignore=["last"])]
    assert names[0] == "encoder.layers.0.self_attn.q_proj" and "head" not in names and len(names) == 12
    assert [n for n, _ in select_layers(m, targets=["role:mlp"])] == [
        "encoder.layers.0.linear1", "encoder.layers.0.linear2", "encoder.layers.1.linear1", "encoder.layers.1.linear2"]
    q = ts.prune(m, ts.MagnitudePruning(sparsity=0.5, per_layer={"first": 0.0}, ignore=("last",)))
    assert float((q.encoder.layers[0].self_attn.q_proj.weight == 0).float().mean()) == 0.0
    assert float((q.encoder.layers[0].linear1.weight == 0).float().mean()) == 0.5
    assert ts.coverage(q)[-1].skipped["head"] == "excluded by targets/ignore"
    with pytest.raises(ts.ConfigError, match=r"targets pattern 'Conv2d' matches no Linear/Conv1d/Conv2d layer in "
                                             r"EncoderClassifier\. Layers: encoder\.layers\.0\.self_attn\.q_proj"):
        select_layers(m, targets=["Conv2d"])

"""SmoothQuant W8A8: smoothing alone leaves the float model's function unchanged, it is folded
into the norms that feed q/k/v and the MLP, it is refused where a norm's output also feeds a
residual (post-LN BERT), and with an outlier channel it brings the int8 model much closer to
the float one than int8 without smoothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.errors import ConfigError
from torchshrink.quant.dynamic import DynamicInt8Linear
from torchshrink.quant.smoothquant import _smooth, smoothing_scale

transformers = pytest.importorskip("transformers")


def _llama(outlier: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=256, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    if outlier:  # the outlier channels LLMs grow: a few norm gains far above the rest
        with torch.no_grad():
            for layer in model.model.layers:
                layer.input_layernorm.weight[[3, 17]] = outlier
                layer.post_attention_layernorm.weight[[5, 40]] = outlier
    return model


def _calib(n: int = 4, vocab: int = 256) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (2, 16), generator=g) for _ in range(n)]


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def test_the_scale_follows_the_formula_and_keeps_dead_channels() -> None:
    act = torch.tensor([4.0, 1.0, 0.0])
    w = torch.tensor([[1.0, 4.0, 2.0], [-2.0, 1.0, 1.0]])  # column maxima 2, 4, 2
    s = smoothing_scale(act, [w], 0.5)
    torch.testing.assert_close(s, torch.tensor([(4 / 2) ** 0.5, (1 / 4) ** 0.5, 1.0]))


def test_smoothing_alone_keeps_the_function_and_folds_into_the_norms() -> None:
    model = _llama(outlier=20.0)
    ids = _calib()
    before = _logits(model, ids[0])
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    smoothed = _smooth(model, layers, ids, ts.SmoothQuant())
    assert smoothed == 4  # q/k/v and gate/up, in each of the two blocks
    torch.testing.assert_close(_logits(model, ids[0]), before, rtol=1e-4, atol=1e-4)


def test_with_an_outlier_channel_smoothing_brings_int8_close_to_float() -> None:
    model = _llama(outlier=30.0)
    ids = _calib()
    ref = _logits(model, ids[-1])
    plain = ts.quantize(copy.deepcopy(model), ts.DynamicInt8(activations="token"))
    smooth = ts.quantize(copy.deepcopy(model), ts.SmoothQuant(), calibration=ids[:-1])
    assert all(isinstance(m, DynamicInt8Linear) for n, m in smooth.named_modules() if n.endswith("_proj"))
    err_plain = float((_logits(plain, ids[-1]) - ref).abs().max())
    err_smooth = float((_logits(smooth, ids[-1]) - ref).abs().max())
    assert err_smooth < 0.5 * err_plain, (err_smooth, err_plain)
    notes = ts.coverage(smooth)[-1].notes
    assert "folded into it" in notes["model.layers.0.input_layernorm"]
    assert "not smoothed (no single op produces its input" in notes["model.layers.1.mlp.down_proj"]


def test_a_norm_that_also_feeds_a_residual_is_left_alone() -> None:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                  vocab_size=128)
    bert = transformers.BertModel(cfg).eval()
    ids = [torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with torch.no_grad():
        before = bert(ids[0]).last_hidden_state
    layers = [(n, m) for n, m in bert.named_modules() if isinstance(m, nn.Linear)]
    q = ts.quantize(copy.deepcopy(bert), ts.SmoothQuant(), calibration=ids)
    assert any("also feeds other ops" in t for t in ts.coverage(q)[-1].notes.values())
    _smooth(bert, layers, ids, ts.SmoothQuant())
    with torch.no_grad():
        torch.testing.assert_close(bert(ids[0]).last_hidden_state, before, rtol=1e-4, atol=1e-4)


def test_bad_settings_and_missing_data_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="alpha must be in \\[0, 1\\], got 1.5"):
        ts.SmoothQuant(alpha=1.5)
    with pytest.raises(ConfigError, match="needs calibration data"):
        ts.quantize(_llama(), ts.SmoothQuant())
    with pytest.raises(ConfigError, match="yielded no batches"):
        ts.quantize(_llama(), ts.SmoothQuant(), calibration=[])

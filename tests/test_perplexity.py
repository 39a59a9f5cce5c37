"""ts.evaluate_lm: strided windows as in the GPTQ paper, on text, files, the default corpus,
torchshrink and Hugging Face models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import torchshrink as ts
from torchshrink.errors import ConfigError, DataError


class _Uniform(nn.Module):
    """Logits that are all equal: perplexity is exactly the vocabulary size."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape, 256) + self.w


def test_uniform_model_has_vocabulary_perplexity_and_windows_do_not_overlap() -> None:
    r = ts.evaluate_lm(_Uniform(), "abcdefghij" * 20, seq_len=16)
    assert r["perplexity"] == pytest.approx(256.0, rel=1e-5)
    assert r["windows"] == len(range(0, 200 - 16, 16)) and r["tokens"] == 16 * r["windows"]
    # a one-line text longer than a file name may be is text, not a path to look up
    assert ts.evaluate_lm(_Uniform(), "hello world " * 300, seq_len=16)["tokens"] > 0


def test_matches_a_hand_computed_loss_on_gpt_tiny_and_reads_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ts.models.create("gpt_tiny").eval()
    text = "def f(x):\n    return x + 1\n" * 20
    (tmp_path / "t.txt").write_text(text)
    r = ts.evaluate_lm(model, str(tmp_path / "t.txt"))  # seq_len from the model's block_size
    ids = torch.tensor(list(text.encode()))
    T = model.config.block_size
    losses = []
    for s in range(0, ids.numel() - T, T):
        w = ids[s:s + T + 1]
        with torch.no_grad():
            losses.append(F.cross_entropy(model(w[None, :-1])[0], w[1:], reduction="sum"))
    want = float(sum(losses)) / (T * len(losses))
    assert r["seq_len"] == T and r["loss"] == pytest.approx(want, rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
    # strided: every token after the first window scored once, with more context
    s = ts.evaluate_lm(model, text, stride=T // 4)
    assert s["tokens"] == T + (s["windows"] - 1) * (T // 4)


def test_default_corpus_and_a_hugging_face_model() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=256,
        max_position_embeddings=32)).eval()
    r = ts.evaluate_lm(model, seq_len=32, max_windows=4)
    assert r["windows"] == 4 and r["tokens"] == 128 and 100 < r["perplexity"] < 1000  # near uniform (256)


def test_bad_input_words() -> None:
    with pytest.raises(ConfigError, match=r"stride must be in \[1, seq_len=8\], got 9"):
        ts.evaluate_lm(_Uniform(), "x" * 100, seq_len=8, stride=9)
    with pytest.raises(ConfigError, match="pass seq_len"):
        ts.evaluate_lm(_Uniform(), "x" * 100)
    with pytest.raises(DataError, match="fewer than seq_len"):
        ts.evaluate_lm(_Uniform(), "short", seq_len=8)

"""Head and MLP-width pruning of transformer blocks read from module structure (no tracing)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.errors import ConfigError, UnsupportedModelError
from torchshrink.prune.channel import count_macs

tf = pytest.importorskip("transformers")

V = 97


def _gpt2() -> nn.Module:
    return tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=V, n_positions=64))


def _bert() -> nn.Module:
    return tf.BertModel(tf.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                      intermediate_size=128, vocab_size=V, max_position_embeddings=64))


def _opt() -> nn.Module:
    return tf.OPTForCausalLM(tf.OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128,
                                          vocab_size=V, max_position_embeddings=64, word_embed_proj_dim=64))


def _llama() -> nn.Module:
    return tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                              num_key_value_heads=2, intermediate_size=128, vocab_size=V,
                                              max_position_embeddings=64))


def _qwen2() -> nn.Module:  # a single key/value head: only query heads can go
    return tf.Qwen2ForCausalLM(tf.Qwen2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                              num_key_value_heads=1, intermediate_size=128, vocab_size=V,
                                              max_position_embeddings=64))


def _vit() -> nn.Module:
    return tf.ViTModel(tf.ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                    intermediate_size=128, image_size=16, patch_size=4))


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, dropout=0.0)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def _ids() -> torch.Tensor:
    return torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))


ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "gpt2": (_gpt2, _ids),
    "bert": (_bert, _ids),
    "opt": (_opt, _ids),
    "llama": (_llama, _ids),
    "qwen2": (_qwen2, _ids),
    "vit": (_vit, lambda: torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))),
    "encoder": (_encoder, lambda: torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(1))),
}
# (heads, key/value heads) per layer after removing half of them
HEADS_AFTER = {"gpt2": (2, 2), "bert": (2, 2), "opt": (2, 2), "llama": (2, 1), "qwen2": (2, 1), "vit": (2, 2),
               "encoder": (2, 2)}


def _out(y: Any) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y
    logits = getattr(y, "logits", None)
    return logits if logits is not None else y.last_hidden_state


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    make, example = ZOO[name]
    return make().eval(), example()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_half_heads_and_mlp_halve_block_macs(name: str, tmp_path: Path) -> None:
    model, x = _build(name)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        y0 = _out(model(x))
    macs0 = count_macs(model, x)
    pruned = ts.prune(model, ts.HeadPruning(heads=0.5, mlp=0.5)).eval()
    with torch.no_grad():
        y = _out(pruned(x))
    assert y.shape == y0.shape
    ratio = count_macs(pruned, x) / macs0
    # every block's projections lose half their width; embeddings, heads and patch convs stay
    assert 0.49 <= ratio <= 0.58, ratio
    info = pruned.torchshrink_head_pruning
    assert info["attention"] == 2 and info["mlp"] == 2
    for change in info["blocks"].values():
        if "heads" in change:
            assert (change["heads"][1], change["kv_heads"][1]) == HEADS_AFTER[name]
        else:
            assert change["width"][1] * 2 == change["width"][0]
    config = getattr(pruned, "config", None)
    if config is not None:
        assert config.num_attention_heads == 2
        assert config.head_dim == 16
    path = tmp_path / f"{name}.tsz"
    ts.save(pruned, path)
    loaded = ts.load(path, like=fresh)
    with torch.no_grad():
        assert torch.equal(_out(loaded(x)), y)
    if config is not None:
        assert loaded.config.num_attention_heads == 2
    pruned.train()
    assert _out(pruned(x)).shape == y0.shape  # the training path runs too


@pytest.mark.parametrize("name", ["gpt2", "llama", "encoder"])
def test_ratio_zero_is_identity(name: str) -> None:
    model, x = _build(name)
    with torch.no_grad():
        y0 = _out(model(x))
        same = ts.prune(copy.deepcopy(model), ts.HeadPruning(heads=0.0, mlp=0.0))
        assert torch.equal(_out(same(x)), y0)


def test_config_widths_updated_and_save_pretrained_reloads(tmp_path: Path) -> None:
    model, x = _build("llama")
    pruned = ts.prune(model, ts.HeadPruning(heads=0.5, mlp=0.75))
    c = pruned.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size) == (2, 1, 16, 32)
    attn = pruned.model.layers[0].self_attn
    assert attn.num_key_value_groups == 2 and attn.q_proj.out_features == 32 and attn.k_proj.out_features == 16
    pruned.save_pretrained(tmp_path)
    again = tf.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(_out(again(x)), _out(pruned(x)))


def test_gpt2_fused_qkv_attributes() -> None:
    model, x = _build("gpt2")
    pruned = ts.prune(model, ts.HeadPruning(heads=0.75, mlp=0.5))
    attn = pruned.transformer.h[1].attn
    assert (attn.num_heads, attn.split_size, attn.embed_dim) == (1, 16, 16)
    # Methods see transformers' Conv1D as the equivalent nn.Linear (weight stored (out, in)).
    assert tuple(attn.c_attn.weight.shape) == (48, 64) and tuple(attn.c_proj.weight.shape) == (64, 16)
    assert pruned.config.n_inner == 128
    assert pruned(x).logits.shape == (2, 12, V)


def test_heads_kept_are_the_largest() -> None:
    model, _ = _build("bert")
    q = model.encoder.layer[0].attention.self.query
    with torch.no_grad():
        q.weight[16:32] *= 100  # head 1 dominates
        q.weight[:16] *= 0.01  # head 0 is negligible
    ts.prune(model, ts.HeadPruning(heads=0.5, mlp=0.0))
    kept = model.encoder.layer[0].attention.self.query.weight
    assert kept[:16].abs().mean() > 10 * kept[16:].abs().mean()  # head 1 kept, first in order


def test_channel_pruning_routes_hf_models_through_structure() -> None:
    model, x = _build("opt")
    macs0 = count_macs(model, x)
    pruned = ts.prune(model, ts.ChannelPruning(ratio=0.5))
    assert count_macs(pruned, x) / macs0 < 0.6
    assert pruned.config.ffn_dim == 64 and pruned.config.num_attention_heads == 2


def test_channel_pruning_shrinks_transformer_encoder() -> None:
    model, x = _build("encoder")
    macs0 = count_macs(model, x)
    pruned = ts.prune(model, ts.ChannelPruning(ratio=0.5)).eval()
    assert count_macs(pruned, x) == macs0 // 2
    assert pruned(x).shape == (2, 12, 64)


def test_refusals_name_the_problem() -> None:
    with pytest.raises(UnsupportedModelError, match="no attention or MLP block recognisable"):
        ts.prune(nn.Sequential(nn.Conv2d(3, 4, 3)), ts.HeadPruning())
    with pytest.raises(ConfigError, match="heads"):
        ts.HeadPruning(heads=1.0)
    model, _ = _build("bert")
    ts.prune(model, ts.MagnitudePruning(sparsity=0.5))
    with pytest.raises(UnsupportedModelError, match="structure first"):
        ts.prune(model, ts.HeadPruning())


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_pruned_hf_artifact_loads_without_like(name: str, tmp_path: Path) -> None:
    model, x = _build(name)
    pruned = ts.prune(model, ts.HeadPruning(heads=0.5, mlp=0.5)).eval()
    ts.save(pruned, tmp_path / "m.tsz")
    loaded = ts.load(tmp_path / "m.tsz")  # skeleton from the recorded config, then the replay
    with torch.no_grad():
        assert torch.equal(_out(loaded(x)), _out(pruned(x)))

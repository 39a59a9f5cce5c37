"""ONNX export of recurrent layers, nn.TransformerEncoder and Hugging Face encoders/decoders,
with dict inputs and named dynamic axes, checked in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchshrink as ts

pytest.importorskip("onnxruntime")


class _Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(8, 16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _run(path: str, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    import onnxruntime as ort

    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, {k: v.numpy() for k, v in feeds.items()})


def test_dict_example_names_the_graph_inputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _llama().eval()
    path = str(tmp_path / "hf.onnx")
    r = ts.export(model, path, example=_ids(6), dynamic=("batch", "sequence"))
    assert r.parity is not None and r.parity.passed
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_inputs()]
    assert names == ["input_ids", "attention_mask"]
    feeds = _ids(9, 1)
    with torch.no_grad():
        ref = model(**feeds, use_cache=False).logits
    assert np.abs(_run(path, feeds)[0] - ref.numpy()).max() < 1e-4


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_recurrent_models_export_with_dynamic_sequence(cell: type[nn.Module], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Recurrent(cell).eval()
    path = str(tmp_path / "rnn.onnx")
    r = ts.export(model, path, example=torch.randn(2, 5, 8), dynamic=("batch", "sequence"))
    assert r.parity is not None and r.parity.passed and r.parity.max_abs_error < 1e-5
    for length in (3, 9):
        x = torch.randn(4, length, 8)
        got = _run(path, {"input": x})[0]
        assert np.abs(got - model(x).detach().numpy()).max() < 1e-5


def test_transformer_encoder_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(32, 5)).eval()
    r = ts.export(model, str(tmp_path / "enc.onnx"), example=torch.randn(2, 6, 32))
    assert r.parity is not None and r.parity.passed and r.parity.max_abs_error < 1e-5


def test_user_code_branching_on_values_is_still_refused(tmp_path: Path) -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(ts.UnsupportedModelError, match=r"operator 'aten::Bool'.*test_transformers_export\.py"):
        ts.export(Branchy(), str(tmp_path / "b.onnx"), example=torch.randn(2, 3))


def test_dynamic_axis_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ts.ConfigError, match="unknown dynamic axis 'seq'.*Did you mean 'sequence'"):
        ts.export(nn.Linear(3, 3), str(tmp_path / "m.onnx"), example=torch.randn(2, 3), dynamic=("seq",))


tf = pytest.importorskip("transformers")


def _ids(length: int, batch: int = 2) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(length))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _gpt2() -> nn.Module:
    return tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=64))


def _bert() -> nn.Module:
    return tf.BertModel(tf.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                      intermediate_size=128, vocab_size=97, max_position_embeddings=64))


def _llama() -> nn.Module:
    return tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                              num_key_value_heads=2, intermediate_size=128, vocab_size=97,
                                              max_position_embeddings=64))


@pytest.mark.slow
@pytest.mark.parametrize("make", [_gpt2, _bert, _llama], ids=["gpt2", "bert", "llama"])
def test_hf_models_export_with_named_inputs_at_two_lengths(make: type[nn.Module], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = make().eval()
    path = str(tmp_path / "hf.onnx")
    r = ts.export(model, path, example=_ids(12), dynamic=("batch", "sequence"))
    assert r.parity is not None and r.parity.passed
    for length, batch in ((12, 2), (5, 3)):
        feeds = _ids(length, batch)
        with torch.no_grad():
            out = model(**feeds, use_cache=False)
        ref = out.logits if hasattr(out, "logits") else out.last_hidden_state
        got = _run(path, feeds)[0]
        assert got.shape == tuple(ref.shape)
        assert np.abs(got - ref.numpy()).max() < 1e-4


@pytest.mark.slow
def test_compressed_transformer_forms_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pruned = ts.prune(_llama().eval(), ts.HeadPruning(heads=0.5, mlp=0.5))
    r = ts.export(pruned, str(tmp_path / "p.onnx"), example=_ids(8), dynamic=("batch", "sequence"))
    assert r.parity is not None and r.parity.passed and r.form == "float"
    q = ts.quantize(_llama().eval(), ts.DynamicInt8())
    r = ts.export(q, str(tmp_path / "q.onnx"), example=_ids(8), dynamic=("batch", "sequence"))
    assert r.form == "quantized" and r.parity is not None and r.parity.passed

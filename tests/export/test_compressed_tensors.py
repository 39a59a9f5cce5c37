"""compressed-tensors export: the folder reloads in transformers with our logits, the int32
packing is the format's own, and models it cannot describe get clear errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.errors import ConfigError, UnsupportedModelError
from torchshrink.export.compressed_tensors import pack_int32, unpack_int32

transformers = pytest.importorskip("transformers")


def _llama(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg).eval()


def _reload_diff(model: nn.Module, path: Path) -> float:
    pytest.importorskip("compressed_tensors", reason="loading the folder in transformers needs the "
                        "compressed-tensors extra (pip install torchshrink[compressed-tensors])")
    x = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x).logits
        theirs = transformers.AutoModelForCausalLM.from_pretrained(str(path)).eval()(x).logits
    return float((ours - theirs).abs().max())


LAYERS = ("model.layers.*",)


@pytest.mark.parametrize("bits,group", [(4, 32), (4, None), (8, None)])
def test_weight_only_reloads_in_transformers_with_our_logits(tmp_path: Path, bits: int, group: int | None) -> None:
    model = ts.quantize(_llama(), ts.WeightOnly(bits=bits, group_size=group, targets=LAYERS))
    r = ts.export(model, tmp_path / "ct", format="compressed-tensors")
    assert r.format == "compressed-tensors" and r.form == "quantized" and len(r.swapped) == 14
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    w = qc["config_groups"]["group_0"]["weights"]
    assert qc["format"] == "pack-quantized" and w["num_bits"] == bits and w["group_size"] == group
    assert w["strategy"] == ("group" if group else "channel") and qc["ignore"] == ["lm_head"]
    # int4 decodes the same weight and runs the same float matmul: bit-exact. Our int8 layers
    # scale the output instead of the weight (summation order differs by float rounding).
    assert _reload_diff(model, tmp_path / "ct") <= (1e-5 if bits == 8 else 0.0)
    tsz = tmp_path / "m.tsz"
    ts.save(model, tsz)
    assert tsz.stat().st_size < r.bytes


def test_gptq_2_4_sparse_int4_reloads_with_the_sparsity_recorded(tmp_path: Path) -> None:
    model = ts.prune(_llama(), ts.NMPruning(n=2, m=4, targets=LAYERS))
    calib = [torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    model = ts.quantize(model, ts.WeightOnly(bits=4, group_size=32, algorithm="gptq", targets=LAYERS),
                        calibration=calib)
    r = ts.export(model, tmp_path / "ct", format="compressed-tensors")
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["sparsity_config"]["sparsity_structure"] == "2:4"
    assert len(qc["sparsity_config"]["targets"]) == 14 and "lm_head" in qc["sparsity_config"]["ignore"]
    assert r.bytes > 0 and _reload_diff(model, tmp_path / "ct") == 0.0


def test_2_4_sparse_float_model_reloads(tmp_path: Path) -> None:
    model = ts.prune(_llama(), ts.NMPruning(n=2, m=4, targets=LAYERS))
    r = ts.export(model, tmp_path / "ct", format="compressed-tensors")
    assert r.form == "float"
    assert _reload_diff(model, tmp_path / "ct") == 0.0


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_int32_packing_is_the_formats_own(bits: int) -> None:
    ct = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers",
                             reason="compressed-tensors is not installed")
    g = torch.Generator().manual_seed(bits)
    for cols in (64, 100):  # a whole number of words per row, and a padded last word
        codes = torch.randint(0, 2**bits, (6, cols), generator=g)
        ours = pack_int32(codes, bits)
        theirs = ct.pack_to_int32((codes - 2 ** (bits - 1)).to(torch.int8), bits)
        assert torch.equal(ours, theirs)
        assert torch.equal(unpack_int32(ours, bits, cols), codes.to(torch.int32))


def test_affine_layers_are_written_dense_with_a_warning(tmp_path: Path) -> None:
    model = ts.quantize(_llama(), ts.WeightOnly(bits=4, group_size=32, symmetric=False,
                                                targets=("model.layers.0.*",)))
    model = ts.quantize(model, ts.WeightOnly(bits=4, group_size=32, targets=("model.layers.1.*",)))
    with pytest.warns(UserWarning, match="affine grid"):
        r = ts.export(model, tmp_path / "ct", format="compressed-tensors")
    assert sum(v == "dense" for v in r.swapped.values()) == 7
    assert _reload_diff(model, tmp_path / "ct") == 0.0


def test_bad_inputs_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="transformers config"):
        ts.export(ts.quantize(nn.Sequential(nn.Linear(64, 64)), ts.WeightOnly(bits=4, group_size=32)),
                  tmp_path / "a", format="compressed-tensors")
    with pytest.raises(ConfigError, match="quantize it first"):
        ts.export(_llama(), tmp_path / "b", format="compressed-tensors")
    (tmp_path / "file").write_text("x")
    q = ts.quantize(_llama(), ts.WeightOnly(bits=4, group_size=32, targets=LAYERS))
    with pytest.raises(ConfigError, match="writes a folder"):
        ts.export(q, tmp_path / "file", format="compressed-tensors")
    with pytest.raises(ConfigError, match="pass example="):
        ts.export(q, tmp_path / "m.onnx", format="onnx")


def test_an_existing_folder_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "ct"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ts.export(ts.quantize(_llama(), ts.WeightOnly(bits=4, group_size=32, targets=LAYERS)), out,
                  format="compressed-tensors")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

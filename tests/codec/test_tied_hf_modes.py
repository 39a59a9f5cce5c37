"""Tied parameters stored once and re-tied, Hugging Face models rebuilt from their config,
file modes that follow the umask, and codec modules that import no higher layer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import torchshrink as ts
from torchshrink.errors import ArtifactError


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x))


def _unique_bytes(m: nn.Module) -> int:
    seen: dict[int, int] = {}
    for t in list(m.parameters()) + list(m.buffers()):
        seen[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def test_tied_weights_are_stored_once_and_come_back_tied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = TiedLM()
    path = tmp_path / "tied.tsz"
    n = ts.save(m, path)
    assert n <= _unique_bytes(m) + 1024  # one copy of the 50x16 matrix plus the header
    assert ts.read_info(path).manifest["a"] == {"head.weight": "emb.weight"}
    back = ts.load(path, like=TiedLM())
    assert back.head.weight is back.emb.weight
    assert torch.equal(back.emb.weight, m.emb.weight)
    # Untied skeleton: the artifact ties it, because the saved model was tied.
    untied = TiedLM()
    untied.head.weight = nn.Parameter(untied.emb.weight.detach().clone())
    retied = ts.load(path, like=untied)
    assert retied.head.weight is retied.emb.weight


class Halve(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5


ts.codec.structure.register_parametrization(Halve, to_spec=lambda p: {}, from_spec=lambda s: Halve(),
                                            name="test.Halve")


def test_tied_weight_under_a_parametrization_is_encoded_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = TiedLM()
    parametrize.register_parametrization(m.head, "weight", Halve())
    path = tmp_path / "tied_p.tsz"
    n = ts.save(m, path)
    info = ts.read_info(path)
    assert [r.key for r in info.tensors] == ["emb.weight"]
    assert info.manifest["a"] == {"head.parametrizations.weight.original": "emb.weight"}
    assert n <= _unique_bytes(m) + 1024
    back = ts.load(path, like=TiedLM())
    assert back.head.parametrizations.weight.original is back.emb.weight
    x = torch.arange(10).reshape(2, 5)
    assert torch.equal(back(x), m(x))


def test_like_that_refuses_deepcopy_is_an_error_not_an_edit(tmp_path: Path) -> None:
    class NoCopy(TiedLM):
        def __deepcopy__(self, memo: object) -> NoCopy:
            raise TypeError("no copies")

    path = tmp_path / "t.tsz"
    ts.save(TiedLM(), path)
    like = NoCopy()
    before = like.emb.weight.detach().clone()
    with pytest.raises(ArtifactError, match=r"cannot be copied \(TypeError: no copies\).*inplace=True"):
        ts.load(path, like=like)
    assert torch.equal(like.emb.weight, before)
    assert ts.load(path, like=like, inplace=True) is like


def test_saved_file_mode_follows_the_umask_and_failed_save_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.tsz"
    old = os.umask(0o027)
    try:
        ts.save(TiedLM(), path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    before = path.read_bytes()

    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("q", torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8))

    with pytest.raises(ArtifactError):
        ts.save(Broken(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.tsz"]  # no temporary file left


def test_codec_modules_import_no_higher_layer() -> None:
    """Each codec module alone, under a bare `torchshrink` package, imports neither api, cli,
    models nor recipe."""
    src = Path(ts.__file__).parent
    mods = sorted(f"torchshrink.codec.{p.stem}" for p in (src / "codec").glob("*.py") if p.stem != "__init__")
    code = (
        "import sys, types, importlib, torch\n"
        "bad = ('torchshrink.api', 'torchshrink.cli', 'torchshrink.models', 'torchshrink.recipe')\n"
        "for name in sys.argv[1:]:\n"
        "    for m in [m for m in sys.modules if m.startswith('torchshrink')]:\n"
        "        del sys.modules[m]\n"
        f"    pkg = types.ModuleType('torchshrink'); pkg.__path__ = [{str(src)!r}]\n"
        "    sys.modules['torchshrink'] = pkg\n"
        "    importlib.import_module(name)\n"
        "    hit = [m for m in sys.modules if m.startswith(bad)]\n"
        "    assert not hit, (name, hit)\n"
        "print('ok', len(sys.argv) - 1)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == f"ok {len(mods)}", out.stderr[-2000:]
    assert len(mods) >= 10


transformers = pytest.importorskip("transformers")


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=1000, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_hf_gpt2_unmodified_file_is_at_most_1_02_of_unique_parameter_bytes(tmp_path: Path) -> None:
    m = _gpt2()
    assert m.lm_head.weight is m.transformer.wte.weight
    path = tmp_path / "gpt2.tsz"
    n = ts.save(m, path)
    unique = _unique_bytes(m)
    assert n <= 1.02 * unique, (n, unique)
    back = ts.load(path, like=transformers.AutoModelForCausalLM.from_config(m.config))
    assert back.lm_head.weight is back.transformer.wte.weight
    x = torch.randint(0, 1000, (2, 10))
    assert torch.equal(back(x).logits, m(x).logits)


def test_hf_model_loads_without_like_from_its_recorded_config(tmp_path: Path) -> None:
    m = _gpt2()
    path = tmp_path / "gpt2.tsz"
    ts.save(m, path)
    info = ts.read_info(path)
    assert info.manifest["hf"]["c"] == "GPT2LMHeadModel" and info.manifest["hf"]["k"] == "GPT2Config"
    back = ts.load(path)
    assert type(back) is transformers.GPT2LMHeadModel
    assert back.lm_head.weight is back.transformer.wte.weight
    x = torch.randint(0, 1000, (1, 7))
    assert torch.equal(back(x).logits, m(x).logits)


@pytest.mark.parametrize(("record", "words"), [
    ({"c": "AutoConfig", "k": "GPT2Config", "d": {}}, "not a transformers model class"),
    ({"c": "GPT2LMHeadModel", "k": "GPT2LMHeadModel", "d": {}}, "not a transformers config class"),
    ({"c": "GPT2LMHeadModel", "k": "GPT2Config", "d": {"n_head": 0}}, "cannot build GPT2LMHeadModel"),
    ({"c": "GPT2LMHeadModel", "k": "GPT2Config", "d": {"vocab_size": 10**13}}, "does not match like="),
    ({"c": 3}, "malformed"),
])
def test_hf_records_outside_the_allowlist_or_hostile_are_artifact_errors(tmp_path: Path, record: dict,
                                                                          words: str) -> None:
    from tests.codec.test_hostile_manifests import _split, _text, _with_manifest

    path = tmp_path / "gpt2.tsz"
    ts.save(_gpt2(), path)
    header, manifest, body = _split(path.read_bytes())
    manifest["hf"] = record
    path.write_bytes(_with_manifest(header, _text(manifest), body))
    with pytest.raises(ArtifactError, match=words):
        ts.load(path)


def test_hf_gpt2_int4_g32_file_is_at_most_a_fifth_of_the_fp32_parameters(tmp_path: Path) -> None:
    """Every projection and the tied head/embedding at 4 bits in groups of 32: the file, all
    overhead counted, holds at most 0.2 of the fp32 parameters' bytes, and reloads with the
    head and embedding still sharing one set of codes."""
    m = _gpt2()
    unique = _unique_bytes(m)
    q = ts.quantize(m, ts.WeightOnly(bits=4, group_size=32))
    path = tmp_path / "gpt2_int4.tsz"
    n = ts.save(q, path)
    assert n <= 0.2 * unique, (n, unique, n / unique)
    back = ts.load(path, like=transformers.AutoModelForCausalLM.from_config(m.config))
    assert back.lm_head.packed is back.transformer.wte.packed
    x = torch.randint(0, 1000, (2, 10))
    q.eval(), back.eval()
    with torch.no_grad():
        assert torch.equal(back(x).logits, q(x).logits)

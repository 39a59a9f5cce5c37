"""The artifact: bit-exact round trips, structure replay, atomic writes, and refusing bad files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchshrink as ts
from torchshrink import models
from torchshrink.api import HISTORY_ATTR
from torchshrink.codec import container, encodings, fileformat, structure
from torchshrink.errors import ArtifactError, ConfigError
from torchshrink.nn import params


def _same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert sa[k].shape == sb[k].shape, k
        assert encodings.tensor_bytes(sa[k]) == encodings.tensor_bytes(sb[k]), k


ALL_ENCODINGS = "every_registered_encoding"


@pytest.fixture(autouse=True)
def builtin_encodings(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Only the built-in encodings, so choices are predictable and tests fast; tests named
    with `every_registered_encoding` in their docstring run with the entropy coders that
    other modules register, too."""
    if ALL_ENCODINGS in (request.function.__doc__ or ""):
        return
    monkeypatch.setattr(encodings, "_ENCODINGS", {k: v for k, v in encodings._ENCODINGS.items()
                                                  if k in ("dense", "zeros", "const", "bits")})


# ----------------------------------------------------------------------------- test types


class Mask(nn.Module):
    """A pruning-mask parametrization, as issue 3 would write it."""

    execution = "masked only"

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask

    def canonical_original(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.mask


class Scale(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class TwoLinear(nn.Module):
    """A factorized Linear, as issue 6 would write it."""

    def __init__(self, cin: int, rank: int, cout: int) -> None:
        super().__init__()
        self.a = nn.Linear(cin, rank, bias=False)
        self.b = nn.Linear(rank, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class Unregistered(nn.Linear):
    pass


structure.register_parametrization(
    Mask, to_spec=lambda p: {"shape": list(p.mask.shape)},
    from_spec=lambda s: Mask(torch.ones(s["shape"], dtype=torch.bool)), name="test.Mask")
structure.register_parametrization(
    Scale, to_spec=lambda p: {"n": p.scale.shape[0]}, from_spec=lambda s: Scale(s["n"]), name="test.Scale")
structure.register_module(
    TwoLinear, to_spec=lambda m: {"i": m.a.in_features, "r": m.a.out_features, "o": m.b.out_features},
    from_spec=lambda s: TwoLinear(s["i"], s["r"], s["o"]), name="test.TwoLinear")


def _trained_like(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = models.create(name)
    with torch.no_grad():  # move BatchNorm statistics off their defaults, too
        for k, v in m.state_dict().items():
            if v.is_floating_point():
                v.add_(torch.randn_like(v) * 0.01)
            elif "num_batches" in k:
                v.fill_(7)
    return m.eval()


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", models.names())
def test_reference_models_round_trip_bit_exact(name: str, tmp_path: Path) -> None:
    m = _trained_like(name)
    path = tmp_path / f"{name}.tsz"
    n = ts.save(m, path)
    assert n == path.stat().st_size
    dense = sum(v.numel() * v.element_size() for v in m.state_dict().values())
    # One blob plus a compact manifest: the header costs little next to the weights.
    assert n <= dense + 8192
    back = ts.load(path)  # no like=: the file names its reference model
    assert type(back) is type(m)
    _same_state(m, back)
    x = models.example_input(m, 2)
    assert torch.equal(m(x), back(x))


def test_file_is_plain_safetensors_with_big_tensors_as_entries(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = tmp_path / "m.tsz"
    m = models.create("lenet300")
    ts.save(m, path)
    tensors = load_file(str(path))
    # fc1's 940 KB are an entry of their own (real dtype and shape); the rest sits in the blob.
    assert list(tensors) == ["fc1.weight", "b"] and tensors["b"].dtype == torch.uint8
    assert torch.equal(tensors["fc1.weight"], m.fc1.weight)
    info = ts.read_info(path)
    assert info.model_name == "lenet300" and info.format_version == container.FORMAT_VERSION
    assert info.payload_bytes == 266610 * 4
    assert info.header_bytes < 600  # the reference architecture itself costs no structure specs


def test_parametrized_model_round_trip_and_canonical_original(tmp_path: Path) -> None:
    """every_registered_encoding: entropy coders included, not only the built-in ones."""
    torch.manual_seed(0)
    m = models.create("lenet300")
    mask = torch.rand(300, 784) > 0.9
    params.add(m.fc1, Mask(mask))
    params.add(m.fc1, Scale(300))
    with torch.no_grad():
        m.fc1.parametrizations.weight[1].scale.mul_(1.5)
    params.add(m.fc2, Mask(torch.rand(100, 300) > 0.5))
    path = tmp_path / "p.tsz"
    ts.save(m, path)
    back = ts.load(path)
    assert [type(p) for p in params.chain(back.fc1)] == [Mask, Scale]
    assert [type(p) for p in params.chain(back.fc2)] == [Mask]
    x = models.example_input(m, 4)
    assert torch.equal(m(x), back(x))
    assert torch.equal(m.fc1.weight, back.fc1.weight)
    # The stored original is canonical: pruned positions hold zeros, so they code cheaply.
    orig = params.original(back.fc1)
    assert int((orig[~mask] != 0).sum()) == 0
    assert torch.equal(orig[mask], params.original(m.fc1)[mask])
    info = ts.read_info(path)
    # A bool mask costs at most 1 bit per element (entropy coders registered by other
    # modules may do better still).
    mask_rec = next(r for r in info.tensors if r.key == "fc1.parametrizations.weight.0.mask")
    assert mask_rec.nbytes <= (300 * 784 + 7) // 8
    assert mask_rec.encoding != "dense"


def test_bool_masks_take_one_bit_with_builtin_encodings(tmp_path: Path) -> None:
    m = models.create("lenet300")
    params.add(m.fc1, Mask(torch.rand(300, 784) > 0.9))
    ts.save(m, tmp_path / "b.tsz")
    rec = {r.key: r for r in ts.read_info(tmp_path / "b.tsz").tensors}["fc1.parametrizations.weight.0.mask"]
    assert (rec.encoding, rec.nbytes) == ("bits", (300 * 784 + 7) // 8)
    back = ts.load(tmp_path / "b.tsz")
    assert torch.equal(back.fc1.weight, m.fc1.weight)
    assert torch.equal(back.fc1.parametrizations.weight[0].mask, m.fc1.parametrizations.weight[0].mask)


def test_structure_replay_thinner_and_factorized_layers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = models.create("lenet300")
    m.fc1 = nn.Linear(784, 40)  # channel pruning left a thinner layer
    m.fc2 = nn.Linear(40, 100)
    m.fc3 = TwoLinear(100, 4, 10)  # a factorized layer
    path = tmp_path / "s.tsz"
    ts.save(m, path)
    info = ts.read_info(path)
    assert set(info.manifest["s"]) == {"fc1", "fc2", "fc3"}
    for like in (None, "lenet300", models.create("lenet300")):
        back = ts.load(path, like=like)
        assert back.fc1.out_features == 40 and isinstance(back.fc3, TwoLinear)
        _same_state(m, back)
        x = models.example_input(m, 3)
        assert torch.equal(m(x), back(x))


def test_custom_model_needs_like_and_replays_on_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    m[0] = nn.Linear(6, 3)
    m[2] = nn.Linear(3, 2)
    path = tmp_path / "c.tsz"
    ts.save(m, path)
    with pytest.raises(ArtifactError, match="not a torchshrink reference model; pass like="):
        ts.load(path)
    skeleton = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    back = ts.load(path, like=skeleton)
    assert skeleton[0].out_features == 5  # like= is copied, never edited
    x = torch.randn(4, 6)
    assert torch.equal(m(x), back(x))


def test_history_and_metadata_travel(tmp_path: Path) -> None:
    m = models.create("lenet300")
    object.__setattr__(m, HISTORY_ATTR, [{"method": "magnitude_pruning", "sparsity": 0.9}])
    path = tmp_path / "h.tsz"
    ts.save(m, path, metadata={"accuracy": 97.5, "data": "mnist5k"})
    assert ts.read_info(path).history == []  # off by default: it would outweigh the rest of the manifest
    ts.save(m, path, metadata={"accuracy": 97.5, "data": "mnist5k"}, history=True)
    info = ts.read_info(path)
    assert info.history == [{"method": "magnitude_pruning", "sparsity": 0.9}]
    assert info.metadata == {"accuracy": 97.5, "data": "mnist5k"}
    assert getattr(ts.load(path), HISTORY_ATTR) == info.history
    with pytest.raises(ConfigError, match="JSON"):
        ts.save(m, path, metadata={"x": object()})


def test_gpt_config_is_recorded(tmp_path: Path) -> None:
    m = models.create("gpt_tiny", n_layer=1, n_embd=32, n_head=2, block_size=16)
    path = tmp_path / "g.tsz"
    ts.save(m, path)
    back = ts.load(path)
    assert len(back.blocks) == 1 and back.config.n_embd == 32
    _same_state(m, back)


def test_unregistered_replacement_is_refused_at_save(tmp_path: Path) -> None:
    m = models.create("lenet300")
    m.fc2 = Unregistered(300, 100)
    with pytest.raises(ArtifactError, match="register_module"):
        ts.save(m, tmp_path / "u.tsz")
    assert not list(tmp_path.iterdir())


def test_unregistered_parametrization_is_refused(tmp_path: Path) -> None:
    class Free(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    m = models.create("lenet300")
    params.add(m.fc1, Free())
    with pytest.raises(ArtifactError, match="register_parametrization"):
        ts.save(m, tmp_path / "u.tsz")


def test_like_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.tsz"
    ts.save(models.create("lenet300"), path)
    with pytest.raises(ArtifactError, match="does not match like=.*LeNet5.*LeNet300"):
        ts.load(path, like=models.create("lenet5"))
    with pytest.raises(ArtifactError, match="shape"):
        ts.load(path, like=models.LeNet300(num_classes=5))


# ----------------------------------------------------------------------------- encodings


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5)])
def test_every_dtype_round_trips(dtype: torch.dtype, shape: tuple[int, ...], tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        t = torch.rand(shape, generator=g) > 0.5
    elif dtype.is_floating_point:
        t = (torch.randn(shape, generator=g) * 100).to(dtype)
        if t.numel() >= 3:  # bit patterns value equality would miss
            t.view(-1)[0], t.view(-1)[1], t.view(-1)[2] = float("nan"), -0.0, float("inf")
    else:
        t = torch.randint(0, 100, shape, generator=g).to(dtype)
    m = nn.Module()
    m.register_buffer("t", t)
    m.register_buffer("z", torch.zeros(shape, dtype=dtype))
    path = tmp_path / "d.tsz"
    ts.save(m, path)
    like = nn.Module()
    like.register_buffer("t", torch.empty(shape, dtype=dtype))
    like.register_buffer("z", torch.empty(shape, dtype=dtype))
    back = ts.load(path, like=like)
    _same_state(m, back)
    rec = {r.key: r for r in ts.read_info(path).tensors}
    if t.numel():
        assert rec["z"].encoding == "zeros" and rec["z"].nbytes == 0


def test_constant_and_zero_tensors_cost_no_payload(tmp_path: Path) -> None:
    m = nn.Module()
    m.register_buffer("c", torch.full((100, 100), -0.0))  # -0.0 is not all-zero bits
    m.register_buffer("k", torch.full((50,), 3.25, dtype=torch.bfloat16))
    m.register_buffer("z", torch.zeros(1000, dtype=torch.int64))
    path = tmp_path / "c.tsz"
    ts.save(m, path)
    info = ts.read_info(path)
    assert {r.key: r.encoding for r in info.tensors} == {"c": "const", "k": "const", "z": "zeros"}
    assert info.payload_bytes == 0
    like = nn.Module()
    for k, v in m.state_dict().items():
        like.register_buffer(k, torch.empty_like(v))
    back = ts.load(path, like=like)
    _same_state(m, back)
    assert torch.signbit(back.c).all()


class _Liar:
    """Claims to code everything in 1 byte and decodes garbage: must never be chosen."""

    name = "test_liar"

    def encode(self, tensor: torch.Tensor, hint: Any) -> tuple[bytes, dict[str, Any]]:
        return b"\x00", {}

    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        return torch.ones(shape, dtype=dtype)


class _Boom:
    name = "test_boom"

    def encode(self, tensor: torch.Tensor, hint: Any) -> tuple[bytes, dict[str, Any]] | None:
        if hint.key == "fc2.weight":
            raise RuntimeError("disk full in the middle of coding")
        return None

    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        raise AssertionError


class _Spy:
    name = "test_spy"

    def __init__(self) -> None:
        self.hints: dict[str, Any] = {}

    def encode(self, tensor: torch.Tensor, hint: Any) -> None:
        self.hints[hint.key] = hint
        return None

    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        raise AssertionError


def test_encoding_that_is_not_bit_exact_is_skipped(tmp_path: Path) -> None:
    encodings.register_encoding(_Liar())
    try:
        m = models.create("lenet300")
        with pytest.warns(UserWarning, match="not bit-exact"):
            ts.save(m, tmp_path / "l.tsz")
        info = ts.read_info(tmp_path / "l.tsz")
        assert "test_liar" not in {r.encoding for r in info.tensors}
        _same_state(m, ts.load(tmp_path / "l.tsz"))
    finally:
        encodings.unregister_encoding("test_liar")


def test_hints_name_layer_tensor_and_index_kind(tmp_path: Path) -> None:
    spy = _Spy()
    encodings.register_encoding(spy)
    try:
        m = models.create("lenet300")
        params.add(m.fc1, Mask(torch.ones(300, 784, dtype=torch.bool)))
        m.register_buffer("codes", torch.zeros(3, dtype=torch.int8))
        ts.save(m, tmp_path / "s.tsz")
    finally:
        encodings.unregister_encoding("test_spy")
    h = spy.hints["fc1.parametrizations.weight.original"]
    assert (h.module, h.tensor, h.is_index) == ("fc1", "parametrizations.weight.original", False)
    assert spy.hints["codes"].is_index and spy.hints["codes"].module == ""


def test_duplicate_encoding_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        encodings.register_encoding(type("D", (encodings.Dense,), {})())


# ----------------------------------------------------------------------------- atomic writes


def test_failed_save_leaves_previous_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "m.tsz"
    ts.save(models.create("lenet300"), path)
    before = path.read_bytes()
    encodings.register_encoding(_Boom())
    try:
        with pytest.raises(ArtifactError, match="test_boom.*fc2.weight.*nothing was written"):
            ts.save(models.create("lenet300"), path)
    finally:
        encodings.unregister_encoding("test_boom")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.tsz"]  # no temp file left behind


def test_failed_write_leaves_previous_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.tsz"
    ts.save(models.create("lenet300"), path)
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ArtifactError, match="No space left"):
        ts.save(models.create("lenet5"), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.tsz"]
    with pytest.raises(ArtifactError, match="does not exist"):
        ts.save(models.create("lenet300"), tmp_path / "no" / "such" / "dir.tsz")


# ----------------------------------------------------------------------------- bad files


def test_foreign_and_missing_files_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(ArtifactError, match="does not exist"):
        ts.load(tmp_path / "missing.tsz")
    with pytest.raises(ArtifactError, match="is a directory"):
        ts.load(tmp_path)
    empty = tmp_path / "empty.tsz"
    empty.write_bytes(b"")
    with pytest.raises(ArtifactError, match="not a readable torchshrink artifact: the file is empty"):
        ts.load(empty)
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64)))
    with pytest.raises(ArtifactError, match="not a readable torchshrink artifact"):
        ts.load(png)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(3)}, str(plain))
    with pytest.raises(ArtifactError, match="safetensors file without a torchshrink manifest"):
        ts.load(plain)
    text = tmp_path / "notes.txt"
    text.write_text("hello world, this is not a model")
    with pytest.raises(ArtifactError, match="not a readable torchshrink artifact"):
        ts.load(text)


def _rewrite_manifest(path: Path, edit: Any) -> None:
    from tests.codec.test_hostile_manifests import _split

    _, manifest, body = _split(path.read_bytes())  # the tensor table spelled out
    edit(manifest)
    path.write_bytes(fileformat.pack_text(json.dumps(manifest), body))


def test_newer_format_is_refused_naming_versions(tmp_path: Path) -> None:
    path = tmp_path / "new.tsz"
    ts.save(models.create("lenet300"), path)
    _rewrite_manifest(path, lambda m: m.update(f=container.FORMAT_VERSION + 1, v="9.0"))
    with pytest.raises(ArtifactError, match=rf"format version {container.FORMAT_VERSION + 1}, newer than format "
                                            rf"version {container.FORMAT_VERSION}.*torchshrink 9.0.*Upgrade"):
        ts.load(path)


def test_unknown_encoding_and_module_type_are_named(tmp_path: Path) -> None:
    path = tmp_path / "m.tsz"
    ts.save(models.create("lenet300"), path)
    _rewrite_manifest(path, lambda m: m["t"][0].__setitem__(1, "zstd9"))
    with pytest.raises(ArtifactError, match="encoding 'zstd9'.*upgrade torchshrink"):
        ts.load(path)
    m = models.create("lenet300")
    m.fc3 = nn.Linear(100, 7)
    ts.save(m, path)
    _rewrite_manifest(path, lambda m: m["S"][0].__setitem__(0, "ts.future.FancyLinear"))
    with pytest.raises(ArtifactError, match="module type 'ts.future.FancyLinear'"):
        ts.load(path)


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, nn.Module]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    params.add(m[0], Mask(torch.rand(4, 8) > 0.5))
    path = tmp_path_factory.mktemp("fuzz") / "small.tsz"
    ts.save(m, path)
    return path.read_bytes(), m


def _fresh_like() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=10**6))
def test_fuzz_truncation_is_always_an_artifact_error(cut: int, small_artifact: tuple[bytes, nn.Module],
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    data, _ = small_artifact
    cut %= len(data)  # every proper prefix, including the empty file
    path = tmp_path_factory.mktemp("cut") / "t.tsz"
    path.write_bytes(data[:cut])
    with pytest.raises(ArtifactError):
        ts.load(path, like=_fresh_like())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(min_value=0, max_value=10**6), bit=st.integers(min_value=0, max_value=7))
def test_fuzz_bit_flips_are_caught_or_harmless(pos: int, bit: int, small_artifact: tuple[bytes, nn.Module],
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    data, model = small_artifact
    pos %= len(data)
    flipped = bytearray(data)
    flipped[pos] ^= 1 << bit
    path = tmp_path_factory.mktemp("flip") / "f.tsz"
    path.write_bytes(bytes(flipped))
    try:
        back = ts.load(path, like=_fresh_like())
    except ArtifactError:
        return
    _same_state(model, back)  # a flip that loads at all changed nothing that matters


def test_every_single_bit_flip_in_the_payload_is_detected(small_artifact: tuple[bytes, nn.Module],
                                                          tmp_path: Path) -> None:
    data, _ = small_artifact
    (n,) = struct.unpack("<Q", data[:8])
    path = tmp_path / "f.tsz"
    for pos in range(8 + n, len(data)):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << (pos % 8)
        path.write_bytes(bytes(flipped))
        with pytest.raises(ArtifactError, match="checksum"):
            ts.load(path, like=_fresh_like())


class _Codes(nn.Module):
    """A codebook parametrization that describes its index tensor to the encoders."""

    def __init__(self, n: int, k: int) -> None:
        super().__init__()
        self.register_buffer("indices", torch.zeros(n, dtype=torch.uint8))
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def ts_encoding_hint(self, tensor_name: str) -> dict[str, Any] | None:
        if tensor_name == "indices":
            return {"is_index": True, "num_symbols": self.k, "bits": 5, "codebook": "linear"}
        return {"extra_note": "original"}


structure.register_parametrization(_Codes, to_spec=lambda p: {"n": p.indices.numel(), "k": p.k},
                                   from_spec=lambda s: _Codes(s["n"], s["k"]), name="test.Codes")


def test_modules_describe_their_tensors_to_encoders(tmp_path: Path) -> None:
    spy = _Spy()
    encodings.register_encoding(spy)
    try:
        m = nn.Linear(4, 3)
        params.add(m, _Codes(12, 32))
        ts.save(m, tmp_path / "c.tsz")
    finally:
        encodings.unregister_encoding("test_spy")
    h = spy.hints["parametrizations.weight.0.indices"]
    assert (h.is_index, h.num_symbols, h.bits, h.extra) == (True, 32, 5, {"codebook": "linear"})
    assert spy.hints["parametrizations.weight.original"].extra == {"extra_note": "original"}
    back = ts.load(tmp_path / "c.tsz", like=nn.Linear(4, 3))
    assert isinstance(params.chain(back)[0], _Codes)

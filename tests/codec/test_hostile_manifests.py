"""Manifests that are well formed and checksummed but hostile: every load raises ArtifactError
(or loads a consistent model) quickly and without allocating much."""

from __future__ import annotations

import copy
import json
import math
import struct
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchshrink as ts
from torchshrink.codec import fileformat, model_decode
from torchshrink.errors import ArtifactError

TIME_BOUND_S = 2.0
MEMORY_BOUND = 200 * 2**20


def _split(data: bytes, *, explicit: bool = True) -> tuple[None, dict[str, Any], bytes]:
    """(unused, manifest, payload) of a file, as format 2 (a format 3 file's entries inlined
    into the payload, in table order); explicit: with the tensor table spelled out (names,
    shapes, dtypes), as files of models without a registered skeleton store it."""
    found = fileformat.locate(memoryview(data), "f")
    manifest = found.manifest
    spelled = manifest
    if fileformat.implicit(manifest):
        spelled = fileformat.explicit_rows(manifest, model_decode.layout(manifest, "f", None), "f")
        if explicit:
            manifest = {k: v for k, v in spelled.items() if k != "K"}
    recs = fileformat.records(spelled, found.payload_len, "f", payload_start=found.payload_start,
                              entries=found.entries)
    body = b"".join(data[r.start : r.start + r.nbytes] for r in recs)
    manifest = {k: v for k, v in manifest.items() if k != "E"}
    manifest["f"] = min(manifest["f"], 2)
    return None, manifest, body


def _with_manifest(header: None, text: str, body: bytes) -> bytes:
    return fileformat.pack_text(text, body)


def v1_file(manifest: dict[str, Any], body: bytes) -> bytes:
    """A format 1 file (the manifest JSON in the safetensors metadata), as torchshrink wrote
    before format 2."""
    manifest = {**manifest, "f": 1, "x": f"{zlib.crc32(body) & 0xFFFFFFFF:08x}"}
    text = json.dumps(manifest)
    header = {"__metadata__": {"ts": text, "c": f"{zlib.crc32(text.encode()) & 0xFFFFFFFF:08x}"},
              "b": {"dtype": "U8", "shape": [len(body)], "data_offsets": [0, len(body)]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _deep(levels: int) -> str:
    """A marker that `_text` expands into `levels` nested lists (json.dumps itself would recurse)."""
    return f"@deep{levels}@"


def _text(manifest: dict[str, Any]) -> str:
    text = json.dumps(manifest, allow_nan=True)  # NaN and Infinity are what a hostile writer would put there
    for levels in (100, 200, 5000):
        text = text.replace(f'"@deep{levels}@"', "[" * levels + "0" + "]" * levels)
    return text


def _load_bounded(path: Path) -> None:
    """ts.load must raise ArtifactError or return a model, within the time and memory bound."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        ts.load(path)
    except ArtifactError:
        pass
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < TIME_BOUND_S, f"load took {elapsed:.2f} s"
    assert peak < MEMORY_BOUND, f"load allocated {peak / 2**20:.0f} MiB"


@pytest.fixture(scope="module")
def gpt_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    m = ts.models.GPTTiny(ts.models.GPTConfig(n_layer=1, n_embd=32, n_head=2, block_size=16))
    path = tmp_path_factory.mktemp("hostile") / "gpt.tsz"
    ts.save(m, path)
    return path


# Hand-written cases from the field: each names the manifest edit and the words of the error.
HOSTILE: list[tuple[str, Any, str]] = [
    ("num_classes -1", lambda m: m.update(m="lenet300", mk={"num_classes": -1}), "num_classes must be an integer"),
    ("num_classes 1e13", lambda m: m.update(m="lenet300", mk={"num_classes": 10**13}), "num_classes must be"),
    ("num_classes float", lambda m: m.update(m="lenet300", mk={"num_classes": 1e13}), "num_classes must be"),
    ("n_head 0", lambda m: m["mk"].update(n_head=0), "n_head must be an integer"),
    ("n_head 3", lambda m: m["mk"].update(n_head=3), "must be divisible by n_head"),
    ("odd kwarg", lambda m: m["mk"].update(wings=2), "unexpected keyword argument 'wings'"),
    ("kwargs a list", lambda m: m.update(mk=[1, 2]), "not a JSON object"),
    ("huge vocab", lambda m: m["mk"].update(vocab_size=2**20), "does not match like=|has shape"),
    ("deep nesting", lambda m: m.update(u=_deep(5000)), "not valid JSON|nests deeper"),
    ("deep-ish nesting", lambda m: m.update(u=_deep(200)), "nests deeper than 64"),
    ("huge shape", lambda m: m["t"][0].__setitem__(2, [2**40, 2**40]), "bad tensor record|decode to more"),
    ("negative size", lambda m: m["t"][0].__setitem__(2, [-1, 32]), "bad tensor record"),
    ("bool shape", lambda m: m["t"][0].__setitem__(2, [True]), "bad tensor record"),
    ("wrong dtype", lambda m: m["t"][0].__setitem__(3, "f99"), "unknown tensor dtype"),
    ("dtype a list", lambda m: m["t"][0].__setitem__(3, ["f32"]), "bad tensor record"),
    ("zeros of 4 PB", lambda m: m["t"].append(["x", "zeros", [2**25, 2**25], "f32", 0]), "decode to more than"),
    ("name not in model", lambda m: m["t"][0].__setitem__(0, "nope.weight"), "missing tensors"),
    ("name listed twice", lambda m: m["t"][1].__setitem__(0, m["t"][0][0]), "listed twice"),
    ("lengths inconsistent", lambda m: m["t"][0].__setitem__(4, m["t"][0][4] + 1), "covers"),
    ("alias to nothing", lambda m: m.update(a={"head.weight": "ghost"}), "tied-tensor table"),
    ("unknown reference", lambda m: m.update(m="gpt_huge"), "not registered"),
    ("hf class not allowed", lambda m: m.update(m=None, hf={"c": "os", "k": "GPT2Config", "d": {}}),
     "not a transformers model class|install transformers"),
    ("spec of a huge Linear", lambda m: m.update(S=[["Linear", {"in": 2**40, "out": 2**40, "bias": True}]],
                                                 s={"head": 0}), "does not match like=|has shape|cannot rebuild"),
    ("spec not a dict", lambda m: m.update(S=[["Linear", 7]], s={"head": 0}), "malformed structure"),
    ("format version a bool", lambda m: m.update(f=True), "no format version"),
]


@pytest.mark.parametrize(("what", "edit", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_manifest_is_refused_in_words(gpt_artifact: Path, tmp_path: Path, what: str, edit: Any,
                                              words: str) -> None:
    header, manifest, body = _split(gpt_artifact.read_bytes())
    edit(manifest)
    path = tmp_path / "h.tsz"
    path.write_bytes(_with_manifest(header, _text(manifest), body))
    with pytest.raises(ArtifactError, match=words):
        ts.load(path)
    _load_bounded(path)


_HOSTILE_VALUES = st.sampled_from([-1, 0, 1, 10**13, 2**63, 1e13, math.nan, math.inf, -0.5, True, None, "x",
                                   "", [], [1, 2], {}, {"a": 1}, _deep(100)])


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(manifest: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(manifest) if p]
        where = data.draw(st.sampled_from(paths))
        parent: Any = manifest
        for k in where[:-1]:
            parent = parent[k]
        action = data.draw(st.sampled_from(["set", "set", "drop", "add"]))
        if action == "drop" and isinstance(parent, dict):
            del parent[where[-1]]
        elif action == "add" and isinstance(parent, dict):
            key = data.draw(st.sampled_from(["zz", "m", "mk", "hf", "a", "S", "s", "p"]))
            parent[key] = copy.deepcopy(data.draw(_HOSTILE_VALUES))
        else:
            parent[where[-1]] = copy.deepcopy(data.draw(_HOSTILE_VALUES))
    return manifest


def _fuzz(gpt_artifact: Path, tmp_path: Path, data: st.DataObject) -> None:
    header, manifest, body = _split(gpt_artifact.read_bytes(), explicit=data.draw(st.booleans()))
    manifest = _mutate(manifest, data)
    path = tmp_path / "fuzz.tsz"
    path.write_bytes(_with_manifest(header, _text(manifest), body))
    _load_bounded(path)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_manifests_raise_artifact_error_within_bounds(gpt_artifact: Path, tmp_path: Path,
                                                             data: st.DataObject) -> None:
    _fuzz(gpt_artifact, tmp_path, data)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_manifests_many(gpt_artifact: Path, tmp_path: Path, data: st.DataObject) -> None:
    _fuzz(gpt_artifact, tmp_path, data)


IMPLICIT_HOSTILE: list[tuple[str, Any, str]] = [
    ("layout checksum", lambda m: m.update(K="00000000"), "does not match like="),
    ("a row too many", lambda m: m["t"].append(["zeros", 0]), "rows for"),
    ("row a string", lambda m: m["t"].__setitem__(0, "dense"), "bad tensor record"),
    ("lengths inconsistent", lambda m: m["t"][0].__setitem__(1, m["t"][0][1] + 1), "covers"),
    ("architecture changed", lambda m: m["mk"].update(n_embd=64), "does not match like=|has shape"),
]


@pytest.mark.parametrize(("what", "edit", "words"), IMPLICIT_HOSTILE, ids=[h[0] for h in IMPLICIT_HOSTILE])
def test_hostile_implicit_tensor_table_is_refused_in_words(gpt_artifact: Path, tmp_path: Path, what: str,
                                                           edit: Any, words: str) -> None:
    _, manifest, body = _split(gpt_artifact.read_bytes(), explicit=False)
    assert "K" in manifest and all(len(r) in (2, 3) for r in manifest["t"])  # the compact table
    edit(manifest)
    path = tmp_path / "h.tsz"
    path.write_bytes(_with_manifest(None, _text(manifest), body))
    with pytest.raises(ArtifactError, match=words):
        ts.load(path)
    _load_bounded(path)


def test_corrupted_compressed_manifest_is_refused(gpt_artifact: Path, tmp_path: Path) -> None:
    data = bytearray(gpt_artifact.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 + n + 6] ^= 0xFF  # inside the deflated manifest
    path = tmp_path / "c.tsz"
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum does not match"):
        ts.load(path)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    z = bomb.compress(b" " * (64 * 2**20)) + bomb.flush()  # 64 MiB of spaces in 64 KB
    from torchshrink.codec.encodings import varint as _varint  # the format's own length coding

    rest = _varint(len(z)) + z
    blob = struct.pack("<I", zlib.crc32(rest) & 0xFFFFFFFF) + rest
    header = json.dumps({"b": {"dtype": "U8", "shape": [len(blob)], "data_offsets": [0, len(blob)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + blob)
    with pytest.raises(ArtifactError, match="does not inflate|inflates to more than"):
        ts.load(path)
    _load_bounded(path)


def test_format_1_files_still_load(tmp_path: Path) -> None:
    """Files written before format 2 (manifest JSON in the safetensors metadata) load as before."""
    torch.manual_seed(0)
    m = ts.cluster(ts.prune(ts.models.create("lenet300"), ts.MagnitudePruning(sparsity=0.9)), ts.KMeansSharing(bits=4))
    path = tmp_path / "new.tsz"
    ts.save(m, path)
    _, manifest, body = _split(path.read_bytes())
    old = tmp_path / "old.tsz"
    old.write_bytes(v1_file(manifest, body))
    back = ts.load(old)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(back(x), m(x))
    assert ts.read_info(old).format_version == 1
    # A file whose tensors all code below ENTRY_MIN is still format 2 (format 3 adds entries).
    assert ts.read_info(path).format_version == fileformat.FORMAT_PACKED == 2

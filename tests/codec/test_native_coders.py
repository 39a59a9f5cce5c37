"""The compiled rANS and Huffman coders write exactly the bytes the NumPy loops write, read
both, and reject corrupted streams the same way."""

from __future__ import annotations

import numpy as np
import pytest

from torchshrink.codec import ans, huffman, native

pytestmark = pytest.mark.skipif(not native.enabled(), reason="no C compiler on this machine")


@pytest.fixture
def numpy_path(monkeypatch: pytest.MonkeyPatch):
    def use(flag: bool) -> None:
        monkeypatch.setenv("TORCHSHRINK_NATIVE_CODEC", "0" if flag else "1")
    return use


def _streams(rng: np.random.Generator) -> list[np.ndarray]:
    geo = np.minimum(rng.geometric(0.3, size=200_003) - 1, 40)  # skewed, odd length
    return [
        np.array([3]),  # one symbol
        np.zeros(5000, dtype=np.int64),  # a single used symbol
        rng.integers(0, 16, size=77_777),  # int4-like, near uniform
        geo,
        rng.integers(0, 4096, size=300_000),  # the largest alphabet the coders take
        (rng.random(70_000) < 0.02).astype(np.int64),  # mostly zeros: long renormalization gaps
    ]


@pytest.mark.parametrize("case", range(6))
def test_rans_native_matches_numpy_bytes_and_round_trips(case: int, numpy_path) -> None:
    s = _streams(np.random.default_rng(case))[case]
    a = int(s.max()) + 1
    f = ans.quantize_freqs(np.bincount(s, minlength=a))
    numpy_path(True)
    ref = ans.encode(s, f)
    back_numpy = ans.decode(ref, f, s.size)
    numpy_path(False)
    fast = ans.encode(s, f)
    assert fast == ref
    for compact in (False, True):
        back = ans.decode(fast, f, s.size, compact=compact)
        np.testing.assert_array_equal(back.astype(np.int64), s)
    np.testing.assert_array_equal(back_numpy, s)
    # uint8 symbols in (what a compact decode returns) code the same stream
    if a <= 256:
        assert ans.encode(s.astype(np.uint8), f) == ref


@pytest.mark.parametrize("case", range(6))
def test_huffman_native_matches_numpy_bytes_and_round_trips(case: int, numpy_path) -> None:
    s = _streams(np.random.default_rng(10 + case))[case]
    lengths = huffman.code_lengths(np.bincount(s))
    numpy_path(True)
    ref = huffman.encode(s, lengths)
    numpy_path(False)
    fast = huffman.encode(s, lengths)
    assert fast == ref
    np.testing.assert_array_equal(huffman.decode(fast[0], lengths, s.size, fast[1]), s)


def test_native_decoders_reject_corrupted_streams(numpy_path) -> None:
    rng = np.random.default_rng(0)
    s = np.minimum(rng.geometric(0.2, size=50_000) - 1, 30)
    f = ans.quantize_freqs(np.bincount(s))
    data = ans.encode(s, f)
    for bad, message in ((data[:-2], "rANS stream is truncated"), (data + b"\x00\x00", "rANS stream has trailing data")):
        for flag in (True, False):
            numpy_path(flag)
            with pytest.raises(ValueError, match=f"^{message}$"):
                ans.decode(bad, f, s.size)
    lengths = huffman.code_lengths(np.bincount(s))
    stream, chunks = huffman.encode(s, lengths)
    for flag in (True, False):
        numpy_path(flag)
        with pytest.raises(ValueError, match="^Huffman stream is truncated$"):
            huffman.decode(stream[: len(stream) // 2], lengths, s.size, chunks)
    numpy_path(False)
    with pytest.raises(ValueError, match="^a symbol has zero frequency$"):
        ans.encode(np.array([0, 1, 2]), np.array([1 << 16, 0, 0]))


def test_decoding_in_parts_releases_mapped_pages_and_keeps_every_symbol(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path) -> None:
    """Streams decode a part at a time, the pages of a mapped artifact handed back after each
    part; with tiny parts (hundreds of them per tensor) a saved model still loads bit-exactly."""
    import torch
    from torch import nn

    import torchshrink as ts
    from torchshrink.codec import pages

    released: list[int] = []
    real = pages.release

    def spy(view, upto):
        released.append(upto)
        real(view, upto)

    monkeypatch.setattr(native, "_PART", 64)
    monkeypatch.setattr(pages, "release", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 64))
    q = ts.quantize(model, ts.WeightOnly(bits=4, group_size=64), progress=False)
    path = tmp_path / "q.tsz"
    ts.save(q, path)
    back = ts.load(path, like=nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 64)))
    for (k, a), (_, b) in zip(q.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    assert len(released) > 10
    # a buffer outside any map is never touched
    data = bytearray(range(256)) * 64
    pages.release(memoryview(data), len(data))
    assert data == bytearray(range(256)) * 64


def test_without_a_compiler_the_numpy_coders_run(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from torchshrink import native as build

    monkeypatch.setattr(build.shutil, "which", lambda _name: None)
    monkeypatch.setattr(build, "cache_dir", lambda: tmp_path)  # nothing built there
    assert native._library.__wrapped__() is None
    monkeypatch.setattr(native, "_library", lambda: None)
    assert not native.enabled()
    s = np.random.default_rng(0).integers(0, 9, size=5000)
    f = ans.quantize_freqs(np.bincount(s))
    np.testing.assert_array_equal(ans.decode(ans.encode(s, f), f, s.size), s)

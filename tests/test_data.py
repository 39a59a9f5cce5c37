"""Data sets by name: seeded stratified splits, augmentation, text blocks, and errors that say
how to get what is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchshrink import data
from torchshrink.data.core import FASHION_MNIST_DIR, random_shift, read_idx, stratified_split
from torchshrink.errors import DataError


def _equal(a: data.Splits, b: data.Splits) -> bool:
    return all(torch.equal(x, y) for part in ("train", "val", "test")
               for x, y in zip(getattr(a, part).tensors, getattr(b, part).tensors))


def test_stratified_split_is_deterministic_disjoint_and_proportional() -> None:
    y = np.repeat(np.arange(5), [100, 200, 50, 400, 250])
    a = stratified_split(y, (0.7, 0.1, 0.2), seed=3)
    b = stratified_split(y, (0.7, 0.1, 0.2), seed=3)
    c = stratified_split(y, (0.7, 0.1, 0.2), seed=4)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    allidx = np.concatenate(a)
    assert len(allidx) == len(y) and len(np.unique(allidx)) == len(y)  # a partition
    for part, frac in zip(a, (0.7, 0.1, 0.2)):
        counts = np.bincount(y[part], minlength=5)
        assert np.all(np.abs(counts - frac * np.bincount(y)) <= 1)


def test_digits_splits_deterministic_and_stratified() -> None:
    a, b, c = data.load("digits"), data.load("digits"), data.load("digits", seed=1)
    assert _equal(a, b) and not _equal(a, c)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert sum(a.sizes().values()) == 1797
    assert a.train.tensors[0].shape[1:] == (1, 8, 8) and a.train.tensors[1].dtype == torch.int64
    ratio = np.bincount(a.test.tensors[1].numpy(), minlength=10) / len(a.test)
    overall = np.bincount(np.concatenate([getattr(a, p).tensors[1].numpy() for p in ("train", "val", "test")]),
                          minlength=10) / 1797
    assert np.abs(ratio - overall).max() < 0.01


def test_mnist5k_shapes_and_normalization() -> None:
    s = data.load("mnist5k")
    assert s.sizes() == {"train": 3500, "val": 500, "test": 1000}
    x = s.train.tensors[0]
    assert x.shape == (3500, 1, 28, 28) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1


def test_synthetic_is_fixed_and_split_by_seed() -> None:
    a, b = data.load("synthetic"), data.load("synthetic")
    assert _equal(a, b) and a.sizes() == {"train": 1400, "val": 200, "test": 400}


def test_unknown_data_set_suggests_a_name() -> None:
    with pytest.raises(DataError, match=r"unknown data set 'mnist5'\. Did you mean 'mnist5k'"):
        data.load("mnist5")
    with pytest.raises(DataError, match=r"unknown data set 'fashion'.*'fashion_mnist'"):
        data.load("fashion")


def test_missing_fashion_dir_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"apt-get update && apt-get install -y dataset-fashion-mnist") as e:
        data.load("fashion_mnist", root=tmp_path)
    assert str(tmp_path) in str(e.value) and FASHION_MNIST_DIR in str(e.value)


def test_bad_fractions_are_refused() -> None:
    with pytest.raises(DataError, match="must be in"):
        data.load("digits", val_fraction=0.6, test_fraction=0.5)


def test_idx_reader_rejects_bad_and_truncated_files(tmp_path: Path) -> None:
    good = tmp_path / "ok-idx1-ubyte"
    good.write_bytes(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 8, 9]))
    assert read_idx(good).tolist() == [7, 8, 9]
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x89PNG....")
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes([1, 2]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(short)
    with pytest.raises(DataError, match="cannot read idx file"):
        read_idx(tmp_path / "nope")


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_keeps_the_official_test_set() -> None:
    s = data.load("fashion_mnist", val_fraction=0.1)
    assert s.sizes() == {"train": 54000, "val": 6000, "test": 10000}
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert np.bincount(s.test.tensors[1].numpy()).tolist() == [1000] * 10


def test_random_shift_moves_each_image_within_bounds() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 10, 12] = 1.0
    g = torch.Generator().manual_seed(0)
    y = random_shift(x, 2, g)
    assert y.shape == x.shape
    pos = y[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 28, pos % 28
    assert torch.all((rows - 10).abs() <= 2) and torch.all((cols - 12).abs() <= 2)
    assert len({(int(r), int(c)) for r, c in zip(rows, cols)}) > 5  # offsets really vary
    assert torch.all(y.sum((1, 2, 3)) == 1.0)  # the pixel moved, never vanished
    assert torch.equal(random_shift(x, 0), x)
    assert torch.equal(random_shift(x, 2, torch.Generator().manual_seed(0)), y)


def test_loaders_shift_option_and_errors() -> None:
    s = data.load("synthetic")
    tr, va, te = data.loaders(s, batch_size=50, shift=2, seed=5)
    xb, yb = next(iter(tr))
    assert xb.shape == (50, 1, 28, 28) and yb.shape == (50,)
    tr2, _, _ = data.loaders(s, batch_size=50, shift=2, seed=5)
    assert torch.equal(next(iter(tr2))[0], xb)  # seeded: same shuffles and shifts
    plain = next(iter(data.loaders(s, batch_size=50, seed=5)[0]))[0]
    assert not torch.equal(plain, xb)
    assert torch.equal(next(iter(va))[0], s.val.tensors[0][:1000])  # evaluation never augmented
    with pytest.raises(DataError, match="shift must be >= 0"):
        data.loaders(s, shift=-1)


def test_text_blocks_from_the_standard_library() -> None:
    a = data.load_text(max_bytes=50_000, block_size=32)
    b = data.load_text(max_bytes=50_000, block_size=32)
    assert _equal(a, b)
    x, y = a.train.tensors
    assert x.shape[1] == 32 and x.dtype == torch.int64 and int(x.max()) < 256
    assert torch.equal(x[:, 1:], y[:, :-1])  # next-byte targets
    assert a.num_classes == 256


def test_text_from_a_file_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "corpus.txt"
    f.write_text("hello torchshrink " * 200)
    s = data.load_text(f, block_size=16)
    assert len(s.train) > 0
    with pytest.raises(DataError, match="does not exist"):
        data.load_text(tmp_path / "missing.txt")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abc")
    with pytest.raises(DataError, match="too few"):
        data.load_text(tiny, block_size=16)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DataError, match="no .txt"):
        data.load_text(empty_dir)

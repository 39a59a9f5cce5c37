"""Byte-level language-model data from any file or folder (default: the standard library)."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from torchshrink.data.core import Splits
from torchshrink.errors import DataError

__all__ = ["DEFAULT_CORPUS_MODULES", "read_corpus", "load_text"]

# A fixed list, so the default corpus is the same bytes on every machine with the same Python.
DEFAULT_CORPUS_MODULES = (
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "collections/__init__.py",
    "configparser.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "datetime.py",
    "difflib.py", "enum.py", "fnmatch.py", "fractions.py", "functools.py", "gzip.py", "heapq.py",
    "inspect.py", "ipaddress.py", "json/__init__.py", "json/decoder.py", "json/encoder.py",
)


def read_corpus(path: str | os.PathLike[str] | None = None, *, max_bytes: int | None = None) -> bytes:
    """The corpus as bytes: one file, every *.txt/*.py/*.md file under a folder (sorted), or by
    default the fixed list of standard-library modules."""
    if path is None:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        files = [stdlib / m for m in DEFAULT_CORPUS_MODULES if (stdlib / m).exists()]
        if not files:
            raise DataError(f"standard library sources not found under {stdlib}; pass a corpus path")
    else:
        p = Path(path)
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in {".txt", ".py", ".md", ".rst"})
            if not files:
                raise DataError(f"no .txt/.py/.md/.rst files under corpus folder {str(p)!r}")
        else:
            raise DataError(f"corpus path {str(p)!r} does not exist; give a text file or a folder of them")
    data = b"\n".join(f.read_bytes() for f in files)
    return data[:max_bytes] if max_bytes else data


def load_text(path: str | os.PathLike[str] | None = None, *, block_size: int = 64, stride: int | None = None,
              val_fraction: float = 0.05, test_fraction: float = 0.05, max_bytes: int | None = None,
              seed: int = 0) -> Splits:
    """Next-byte prediction blocks: x = bytes[i:i+T], y = bytes[i+1:i+T+1].

    The corpus is split by position (train first, then val, then test) so no block in val or
    test overlaps training text; `seed` is accepted for API symmetry and does not reorder.
    """
    del seed
    data = torch.frombuffer(bytearray(read_corpus(path, max_bytes=max_bytes)), dtype=torch.uint8).long()
    n = data.numel()
    if n < 4 * (block_size + 1):
        raise DataError(f"corpus has {n} bytes, too few for block_size={block_size}")
    stride = stride or block_size
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    parts = (data[: n - n_val - n_test], data[n - n_val - n_test : n - n_test], data[n - n_test :])

    def blocks(t: torch.Tensor) -> TensorDataset:
        if t.numel() <= block_size + 1:
            return TensorDataset(torch.empty(0, block_size, dtype=torch.long), torch.empty(0, block_size, dtype=torch.long))
        starts = torch.arange(0, t.numel() - block_size - 1, stride)
        idx = starts[:, None] + torch.arange(block_size + 1)[None, :]
        w = t[idx]
        return TensorDataset(w[:, :-1].contiguous(), w[:, 1:].contiguous())

    return Splits("text", blocks(parts[0]), blocks(parts[1]), blocks(parts[2]), (block_size,), 256)

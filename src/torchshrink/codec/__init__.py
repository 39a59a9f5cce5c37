"""Coding: structure specs, tensor encodings (dense now; sparse, Huffman, ANS) and the artifact."""

from torchshrink.codec import kind_specs  # noqa: F401  (registers converted kinds)
from torchshrink.codec.container import (
    FORMAT_VERSION,
    ArtifactInfo,
    TensorRecord,
    load,
    read_info,
    save,
)
from torchshrink.codec.encodings import Encoding, TensorHint, get_encoding, register_encoding

__all__ = [
    "FORMAT_VERSION",
    "ArtifactInfo",
    "Encoding",
    "TensorHint",
    "TensorRecord",
    "get_encoding",
    "load",
    "read_info",
    "register_encoding",
    "save",
]

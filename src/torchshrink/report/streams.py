"""Where a file's bytes go: per layer and per stream, read from the real artifact.

The manifest's tensor table (`t`) gives each state_dict tensor's encoding and payload bytes;
what a tensor is for follows from its name (a Codebook's `codebook` and `indices`, a mask, a
quantized layer's `scale`), and the sparse encodings are parsed to split their bytes into
positions (the coded gaps) and values. Streams:

    values      weights, biases, integer codes, codebook indices at kept positions
    positions   where the kept weights are: masks, coded gaps, CSR indices
    codebooks   shared-value tables (centroids)
    scales      quantization scales and zero points
    header      the safetensors header with the JSON manifest (one row of its own)

A dense entropy coder (`ans`, `huffman`) codes a mostly-zero index tensor's positions and
values in one stream; its bytes are split by the entropy identity H(X) = H(zero or not) +
P(kept) H(value | kept), which order-0 coding attains to within its table overhead. Such
splits are marked `estimated`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np
import torch

__all__ = ["STREAMS", "FileStreams", "LayerStreams", "file_streams", "layer_of"]

STREAMS = ("values", "positions", "codebooks", "scales", "header")
_CODEBOOK = ("codebook", "table")
_SCALES = ("scale", "zero_point", "scales_zeros", "col_scale", "weight_scale")
_POSITIONS = ("mask", "crow_indices", "col_indices", "rowptr", "cols")
_SPARSE = ("sparse_ans", "sparse_fixed", "sparse_raw")
_ENTROPY = ("ans", "huffman")


def layer_of(key: str) -> str:
    """The layer a state_dict key belongs to: 'fc1' for 'fc1.parametrizations.weight.0.indices'
    and for 'fc1.bias'; '' for a root-level tensor."""
    if key.startswith("parametrizations."):
        return ""
    if ".parametrizations." in key:
        return key.split(".parametrizations.", 1)[0]
    return key.rpartition(".")[0]


def _role(key: str) -> str:
    leaf = key.rpartition(".")[2]
    if leaf in _CODEBOOK:
        return "codebooks"
    if leaf in _SCALES:
        return "scales"
    if leaf in _POSITIONS:
        return "positions"
    return "values"


@dataclasses.dataclass
class LayerStreams:
    layer: str
    bytes: dict[str, int]
    estimated: bool = False  # some of the positions/values split comes from the entropy identity
    bias_bytes: int = 0  # the part of `values` that is biases (per-weight bit counts leave it out)

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


@dataclasses.dataclass
class FileStreams:
    path: str
    file_bytes: int
    header_bytes: int
    layers: list[LayerStreams]

    def totals(self) -> dict[str, int]:
        out = {s: 0 for s in STREAMS}
        for r in self.layers:
            for s, v in r.bytes.items():
                out[s] += v
        out["header"] += self.header_bytes
        return out

    def layer_bytes(self) -> dict[str, int]:
        """Payload bytes per layer (what inference fetches; the header is not)."""
        return {r.layer: r.total for r in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "file_bytes": self.file_bytes, "header_bytes": self.header_bytes,
                "totals": self.totals(),
                "layers": [{"layer": r.layer, "bytes": r.bytes, "estimated": r.estimated} for r in self.layers]}


def _skip_ans(r: Any, a: int) -> None:
    """Step a Reader over an ANS frequency table and stream without decoding it."""
    r.raw(1)
    r.varints(a)
    r.block()


def _positions_bytes(enc: str, chunk: bytes, dtype: Any) -> int:
    """Bytes of the coded positions inside a sparse encoding's payload (the rest is values)."""
    from torchshrink.codec.entropy_encodings import Reader, read_alphabet

    r = Reader(chunk)
    if enc != "sparse_raw":
        _, a = read_alphabet(r, dtype)
        r.varint(a)  # background symbol
    start = r.pos
    if enc == "sparse_fixed":
        bits = r.raw(1)[0]
        count = r.varint()
        r.raw((count * bits + 7) // 8)
    else:
        cap = r.varint()
        r.varint()  # number of gaps
        _skip_ans(r, cap + 1)
    return r.pos - start


def _entropy_split(values: torch.Tensor) -> float | None:
    """Share of a mostly-background tensor's information in its positions, or None when the
    tensor is not mostly one value (then positions mean nothing)."""
    _, c = torch.unique(values.reshape(-1), return_counts=True)
    counts = c.numpy().astype(np.float64)
    n = int(counts.sum())
    bg = int(counts.max())
    if n == 0 or bg * 2 < n or bg == n:
        return None
    p = bg / n
    pos_bits = n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    kept = np.delete(counts, int(np.argmax(counts)))
    nz = float(kept.sum())
    val_bits = float(-(kept * np.log2(kept / nz)).sum()) if nz else 0.0
    return pos_bits / (pos_bits + val_bits) if pos_bits + val_bits > 0 else None


def file_streams(path: str | os.PathLike[str]) -> FileStreams:
    """Bytes per layer and stream of an artifact (see the module docstring)."""
    from torchshrink.codec import read_info
    from torchshrink.codec.encodings import get_encoding
    from torchshrink.codec.fileformat import read_bytes

    info = read_info(path)
    data, _ = read_bytes(path)
    payload = memoryview(data)
    layers: dict[str, LayerStreams] = {}
    for rec in info.tensors:
        row = layers.setdefault(layer_of(rec.key), LayerStreams(layer_of(rec.key), {s: 0 for s in STREAMS[:4]}))
        role = _role(rec.key)
        chunk = bytes(payload[rec.start: rec.start + rec.nbytes])
        pos = 0
        if rec.nbytes and role == "values":
            if rec.encoding in _SPARSE:
                pos = _positions_bytes(rec.encoding, chunk, rec.dtype)
            elif rec.encoding in _ENTROPY:
                t = get_encoding(rec.encoding).decode(chunk, rec.meta, rec.shape, rec.dtype)
                share = _entropy_split(t) if t.numel() else None
                if share is not None:
                    pos = round(share * rec.nbytes)
                    row.estimated = True
        row.bytes["positions"] += pos
        row.bytes[role] += rec.nbytes - pos
        if rec.key.rpartition(".")[2] == "bias":
            row.bias_bytes += rec.nbytes - pos
    return FileStreams(info.path, info.file_bytes, info.header_bytes, list(layers.values()))

"""Pluggable tensor encodings for the artifact.

The artifact writer (`codec/container.py`) stores every tensor of a model's state_dict with
one *encoding*. For each tensor it asks every registered encoding for a candidate, decodes
each candidate again, keeps only the bit-exact ones and writes the smallest (payload bytes
plus the bytes of its JSON meta). So a new encoding only has to be correct where it claims
to apply; it never has to decide whether it is the best choice. (On tensors of 256 KiB or
more, `codec/screen.py` first drops the built-in encodings its cost estimates say cannot win;
encodings registered by other packages are always tried.)

Writing an encoding
-------------------
An encoding is any object with

    name: str
        Short and stable: it is written into every artifact that uses it ("dense", "zeros").
        Never rename one; add a new name instead.
    encode(tensor: Tensor, hint: TensorHint) -> tuple[bytes, dict] | None
        `tensor` is a contiguous CPU tensor (any dtype, any shape, possibly empty). Return
        (payload, meta), or None when the encoding does not apply (wrong dtype, not sparse
        enough, ...). `meta` must be small JSON data (ints, floats, strings, lists, dicts):
        it goes into the manifest, and its size counts against the candidate. The payload
        is stored verbatim inside one shared byte blob.
    decode(payload: bytes, meta: dict, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor
        Rebuild the tensor exactly. Raise `ValueError` (or `ArtifactError`) on a payload or
        meta that does not fit `shape`/`dtype`; the loader turns that into an ArtifactError.
        Never trust sizes from `meta` without checking them against `len(payload)`.

and is registered once at import time of its module:

    register_encoding(MyEncoding())

An encoding that needs to know more about a tensor (that it holds codebook indices, how
many symbols it uses, its bit width) reads `hint`. The writer fills the generic fields; a
module or parametrization that owns tensors can add its own by defining

    def ts_encoding_hint(self, tensor_name: str) -> dict[str, Any] | None

returning field values for `TensorHint` (unknown keys land in `hint.extra`). A
parametrization's own buffers are named relative to it ("indices", "mask"); the tensor
that the chain parametrizes is named "original", and every parametrization in the chain is
asked about it (later ones override earlier ones).

Encodings must be deterministic (same tensor -> same bytes) so artifacts are reproducible.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from torchshrink.errors import ArtifactError, ConfigError

__all__ = [
    "DTYPE_CODES",
    "Encoding",
    "TensorHint",
    "dtype_code",
    "dtype_from_code",
    "encodings",
    "get_encoding",
    "register_encoding",
    "tensor_bytes",
    "tensor_from_bytes",
    "varint",
]


@dataclasses.dataclass
class TensorHint:
    """What the writer knows about a tensor besides its values.

    module: dotted name of the module owning the tensor ("" for the root).
    tensor: the tensor's name inside that module ("weight", "parametrizations.weight.original",
        "parametrizations.weight.0.indices").
    key: the full state_dict key.
    is_index: the tensor holds small non-negative integer symbols (codebook indices, packed
        quantization levels) rather than measurements; defaults to True for integer dtypes.
    num_symbols: the size of the alphabet when known (e.g. codebook size 2**bits).
    bits: the number of meaningful bits per element when known (int4 stored in int8, say).
    extra: anything else a module's `ts_encoding_hint` reported.
    cache: scratch space shared by all encodings trying the same tensor, so costly analysis
        (the unique values and their counts, say) is done once: `hint.cache.setdefault(...)`.
        Key it by what you computed ("symbols"), not by your encoding's name, so others can reuse it.
    """

    module: str = ""
    tensor: str = ""
    key: str = ""
    is_index: bool = False
    num_symbols: int | None = None
    bits: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    cache: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def updated(self, fields: dict[str, Any] | None) -> TensorHint:
        """A copy with `fields` applied; unknown names go to `extra`."""
        if not fields:
            return self
        known = {f.name for f in dataclasses.fields(self)} - {"extra", "cache"}
        out = dataclasses.replace(self, extra=dict(self.extra))
        for k, v in fields.items():
            if k in known:
                setattr(out, k, v)
            else:
                out.extra[k] = v
        return out


@runtime_checkable
class Encoding(Protocol):
    name: str

    def encode(self, tensor: torch.Tensor, hint: TensorHint) -> tuple[bytes, dict[str, Any]] | None: ...

    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor: ...


_ENCODINGS: dict[str, Encoding] = {}


def register_encoding(encoding: Encoding, *, replace: bool = False) -> Encoding:
    """Make `encoding` available to the artifact writer and reader. Names are unique."""
    name = getattr(encoding, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"an encoding needs a non-empty string `name`, got {name!r}")
    if not (callable(getattr(encoding, "encode", None)) and callable(getattr(encoding, "decode", None))):
        raise ConfigError(f"encoding {name!r} must define encode(tensor, hint) and decode(payload, meta, shape, dtype)")
    if name in _ENCODINGS and not replace and _ENCODINGS[name] is not encoding:
        raise ConfigError(f"encoding name {name!r} is already registered by {type(_ENCODINGS[name]).__name__}")
    _ENCODINGS[name] = encoding
    return encoding


def unregister_encoding(name: str) -> None:
    """Remove an encoding (tests use this to clean up)."""
    _ENCODINGS.pop(name, None)


def encodings() -> list[Encoding]:
    """Registered encodings, in registration order (ties in size go to the earlier one)."""
    return list(_ENCODINGS.values())


def get_encoding(name: str) -> Encoding:
    try:
        return _ENCODINGS[name]
    except KeyError as e:
        raise ArtifactError(
            f"artifact uses tensor encoding {name!r}, which this torchshrink does not know "
            f"(known: {sorted(_ENCODINGS)}); upgrade torchshrink or import the package that registers it"
        ) from e


# Short dtype codes keep the manifest small. Integer "twins" of the same width let us move
# any dtype (bfloat16, bool, float8) through numpy, which fixes the byte order explicitly.
DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float32: "f32",
    torch.float64: "f64",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "b",
}
for _name, _code in (("uint16", "u16"), ("uint32", "u32"), ("uint64", "u64"),
                     ("float8_e4m3fn", "f8e4m3"), ("float8_e5m2", "f8e5m2")):
    if hasattr(torch, _name):
        DTYPE_CODES[getattr(torch, _name)] = _code
_CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
_INT_TWIN = {1: (torch.uint8, "<u1"), 2: (torch.int16, "<i2"), 4: (torch.int32, "<i4"), 8: (torch.int64, "<i8")}


def dtype_code(dtype: torch.dtype) -> str:
    try:
        return DTYPE_CODES[dtype]
    except KeyError as e:
        raise ArtifactError(
            f"cannot store a tensor of dtype {dtype} in an artifact (supported: "
            f"{', '.join(str(d).replace('torch.', '') for d in DTYPE_CODES)}); convert it to a plain "
            "dtype or register the module with a spec that stores plain tensors"
        ) from e


def dtype_from_code(code: str) -> torch.dtype:
    try:
        return _CODE_DTYPES[code]
    except KeyError as e:
        raise ArtifactError(f"artifact names an unknown tensor dtype {code!r}") from e


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw little-endian bytes of a tensor of any supported dtype, in C order."""
    t = t.detach().to("cpu").contiguous()
    twin, np_dtype = _INT_TWIN[t.element_size()]
    arr = t.view(twin).numpy() if t.dtype != twin else t.numpy()
    if sys.byteorder != "little":
        arr = arr.astype(np_dtype)
    return arr.tobytes()


def tensor_from_bytes(payload: bytes | bytearray | memoryview, shape: tuple[int, ...],
                      dtype: torch.dtype) -> torch.Tensor:
    """The inverse of `tensor_bytes`; a fresh, writable tensor. ValueError on a size mismatch."""
    size = _element_size(dtype)
    numel = 1
    for d in shape:
        if not isinstance(d, int) or d < 0:
            raise ValueError(f"bad shape {shape}")
        numel *= d
    if len(payload) != numel * size:
        raise ValueError(f"payload has {len(payload)} bytes, shape {list(shape)} of {dtype} needs {numel * size}")
    twin, np_dtype = _INT_TWIN[size]
    arr = np.frombuffer(payload, dtype=np_dtype).astype(np_dtype.replace("<", "="), copy=True)
    out = torch.from_numpy(arr).view(twin)
    if dtype != twin:
        out = out.view(dtype)
    return out.reshape(shape)


def _as_int_view(t: torch.Tensor) -> torch.Tensor:
    """Same bits as an integer tensor, so equality is bitwise (NaN == NaN, -0.0 != 0.0)."""
    twin, _ = _INT_TWIN[t.element_size()]
    return t.contiguous().view(twin) if t.dtype != twin else t


class Dense:
    """The raw bytes, little-endian, any dtype. Always applies; the fallback."""

    name = "dense"

    def encode(self, tensor: torch.Tensor, hint: TensorHint) -> tuple[bytes, dict[str, Any]] | None:
        return tensor_bytes(tensor), {}

    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        return tensor_from_bytes(payload, shape, dtype)


class Zeros:
    """A tensor whose every bit is zero costs nothing (pruned rows, zeroed originals under a
    codebook, fresh counters)."""

    name = "zeros"

    def encode(self, tensor: torch.Tensor, hint: TensorHint) -> tuple[bytes, dict[str, Any]] | None:
        if tensor.numel() == 0 or bool(_as_int_view(tensor).any()):
            return None
        return b"", {}

    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        if payload:
            raise ValueError("zeros encoding carries no payload")
        return torch.zeros(shape, dtype=dtype)


class Constant:
    """All elements bit-identical: one element's bytes, in hex, in the meta."""

    name = "const"

    def encode(self, tensor: torch.Tensor, hint: TensorHint) -> tuple[bytes, dict[str, Any]] | None:
        if tensor.numel() == 0:
            return None
        bits = _as_int_view(tensor).reshape(-1)
        if not bool((bits == bits[0]).all()):
            return None
        return b"", {"v": tensor_bytes(tensor.reshape(-1)[:1]).hex()}

    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        if payload:
            raise ValueError("const encoding carries no payload")
        one = tensor_from_bytes(bytes.fromhex(str(meta["v"])), (1,), dtype)
        return one.expand(shape).clone() if len(shape) else one.reshape(()).clone()


class BitMask:
    """bool tensors at one bit per element (pruning masks), instead of dense's one byte."""

    name = "bits"

    def encode(self, tensor: torch.Tensor, hint: TensorHint) -> tuple[bytes, dict[str, Any]] | None:
        if tensor.dtype != torch.bool or tensor.numel() == 0:
            return None
        return np.packbits(tensor.reshape(-1).numpy(), bitorder="little").tobytes(), {}

    def decode(self, payload: bytes, meta: dict[str, Any], shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        numel = 1
        for d in shape:
            numel *= d
        if dtype != torch.bool or len(payload) != (numel + 7) // 8:
            raise ValueError(f"bit payload of {len(payload)} bytes does not fit {list(shape)} {dtype}")
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), count=numel, bitorder="little")
        return torch.from_numpy(bits.astype(np.bool_)).reshape(shape)


register_encoding(Dense())
register_encoding(Zeros())
register_encoding(Constant())
register_encoding(BitMask())


def varint(v: int) -> bytes:
    """LEB128: 7 bits per byte, the high bit set on every byte but the last."""
    if v < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)

"""The artifact file format: a safetensors file whose metadata holds a JSON manifest.

Layout (all of it a valid safetensors file, readable by `safetensors.safe_open`):

    u64 header length | JSON header | payload
    header = {"__metadata__": {"ts": <manifest JSON>, "c": <crc32 of the manifest, hex>},
              "b": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}

This module knows bytes, JSON and checksums only; what the manifest says about a model is
read and written by `codec/model_encode.py` and `codec/model_decode.py`.

Manifest keys (short on purpose, since they are in every file):

    f   format version (int). Readers refuse a newer one. Every version keeps "c".
    v   torchshrink version that wrote the file
    m   reference model name (the skeleton registered under that name), when known
    mk  constructor arguments for `m`, when not the default
    hf  {"c": transformers model class, "k": config class, "d": config dict} of a Hugging
        Face model (data only, never code)
    r   class name of the root module (for error messages)
    h   the model's `torchshrink_history`: the configs applied to it, as plain dicts
    u   user metadata given to `save(metadata=...)`
    S   structure spec table: [[module type name, spec], ...] (deduplicated)
    s   {module name: index into S} for every module whose type is registered
    p   {"<module>.<tensor>": [[parametrization type name, spec], ...]} in chain order
    t   [[state_dict key, encoding, shape, dtype code, payload bytes, meta?], ...] in payload order
    a   {state_dict key: earlier key} for tied tensors, stored once under the earlier key
    A   {module name: {dotted attribute: value}}: plain attributes structural surgery set (head counts)
    x   crc32 of the payload, hex
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
import tempfile
import zlib
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import torch

from torchshrink.codec.encodings import dtype_from_code
from torchshrink.errors import ArtifactError

__all__ = ["FORMAT_VERSION", "MAX_DEPTH", "ArtifactInfo", "TensorRecord", "atomic_write", "dumps", "pack",
           "parse", "read_bytes", "records", "version"]

FORMAT_VERSION = 1
_BLOB = "b"
_MANIFEST_KEY = "ts"
_MANIFEST_CRC = "c"
_MAX_HEADER = 100 * 2**20  # a header beyond this is corruption, not a model
# No manifest this library writes nests deeper than a dozen levels; a deeper one is hostile
# and would exhaust the interpreter's recursion in any code that walks it.
MAX_DEPTH = 64
# Zero-cost encodings (all zeros, one constant) decode to any size, so the payload alone
# cannot bound what a file makes us allocate; real models stay far below this ratio.
_MAX_EXPANSION = 2**14
_MIN_DECODED_CAP = 256 * 2**20


def crc(data: bytes) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)


def version() -> str:
    try:
        return _metadata.version("torchshrink")
    except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def pack(manifest: dict[str, Any], payload: bytes) -> bytes:
    """The file's bytes for a manifest and the concatenated coded streams."""
    manifest = dict(manifest)
    manifest["x"] = crc(payload)
    text = dumps(manifest)
    header: dict[str, Any] = {"__metadata__": {_MANIFEST_KEY: text, _MANIFEST_CRC: crc(text.encode())}}
    if payload:
        header[_BLOB] = {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}
    raw = dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + payload


def _umask() -> int:
    # The only portable way to read the umask is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so the file appears complete or not at all; a failure leaves
    any previous file untouched. The new file gets the mode the umask gives (as `open` would),
    not the 0600 of a temporary file."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ArtifactError(f"cannot save to {str(path)!r}: directory {str(directory)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; not every platform lets us open a directory.
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)




@dataclasses.dataclass(frozen=True)
class TensorRecord:
    key: str
    encoding: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    nbytes: int
    meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """What an artifact holds, without building the model."""

    path: str
    file_bytes: int
    header_bytes: int
    payload_bytes: int
    format_version: int
    library_version: str
    model_name: str | None
    model_kwargs: dict[str, Any] | None
    root_type: str | None
    history: list[Any]
    metadata: dict[str, Any] | None
    tensors: list[TensorRecord]
    manifest: dict[str, Any]

    def encoding_bytes(self) -> dict[str, int]:
        """Payload bytes per encoding name."""
        out: dict[str, int] = {}
        for r in self.tensors:
            out[r.encoding] = out.get(r.encoding, 0) + r.nbytes
        return out



def fail(path: str, what: str) -> ArtifactError:
    return ArtifactError(f"{path!r} is not a readable torchshrink artifact: {what}")


def _depth_ok(obj: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return False
            children = value.values() if isinstance(value, dict) else value
            stack.extend((c, depth + 1) for c in children)
    return True


def parse(data: bytes, path: str) -> tuple[dict[str, Any], bytes, int]:
    """(manifest, payload, header bytes) after checking structure and checksums."""
    if len(data) == 0:
        raise fail(path, "the file is empty")
    if len(data) < 8:
        raise fail(path, f"only {len(data)} bytes, too short for a safetensors header (truncated?)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, _MAX_HEADER):
        raise fail(path, f"its header claims {n} bytes but the file has {len(data)} "
                          "(truncated, corrupted, or not a safetensors file)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise fail(path, f"the safetensors header is not valid JSON ({e}); the file is corrupted or foreign") from e
    if not isinstance(header, dict):
        raise fail(path, "the safetensors header is not a JSON object")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or _MANIFEST_KEY not in meta:
        raise fail(path, "it is a safetensors file without a torchshrink manifest (written by another tool?); "
                          "load it with safetensors.torch.load_file instead")
    text = meta[_MANIFEST_KEY]
    if not isinstance(text, str) or meta.get(_MANIFEST_CRC) != crc(text.encode("utf-8", "surrogatepass")):
        raise fail(path, "the manifest checksum does not match (the file is corrupted)")
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise fail(path, f"the manifest is not valid JSON ({type(e).__name__}: {e})") from e
    if not _depth_ok(manifest, MAX_DEPTH):
        raise fail(path, f"the manifest nests deeper than {MAX_DEPTH} levels")
    if not isinstance(manifest, dict) or type(manifest.get("f")) is not int:
        raise fail(path, "the manifest has no format version")
    if manifest["f"] > FORMAT_VERSION:
        raise ArtifactError(
            f"{path!r} uses artifact format version {manifest['f']}, newer than format version "
            f"{FORMAT_VERSION} that this torchshrink ({version()}) reads; it was written by torchshrink "
            f"{manifest.get('v', '?')}. Upgrade torchshrink to load it."
        )
    if manifest["f"] < 1:
        raise fail(path, f"unknown format version {manifest['f']}")
    body = data[8 + n :]
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if entries:
        spec = entries.get(_BLOB)
        if (set(entries) != {_BLOB} or not isinstance(spec, dict) or spec.get("dtype") != "U8"
                or spec.get("shape") != [len(body)] or spec.get("data_offsets") != [0, len(body)]):
            raise fail(path, f"the data section has {len(body)} bytes but the header describes "
                              f"{dumps(entries)[:200]} (truncated or corrupted)")
    elif body:
        raise fail(path, f"{len(body)} unexpected bytes after the header")
    if manifest.get("x") != crc(body):
        raise fail(path, "the payload checksum does not match (the file is truncated or corrupted)")
    return manifest, body, 8 + n


def records(manifest: dict[str, Any], payload_len: int, path: str) -> list[TensorRecord]:
    out: list[TensorRecord] = []
    offset = 0
    rows = manifest.get("t")
    if not isinstance(rows, list):
        raise fail(path, "the manifest has no tensor table")
    decoded = 0
    cap = max(_MIN_DECODED_CAP, _MAX_EXPANSION * payload_len)
    seen: set[str] = set()
    try:
        for row in rows:
            if not isinstance(row, list) or len(row) not in (5, 6):
                raise ValueError(f"bad tensor record {str(row)[:200]}")
            key, enc, shape, code, nbytes = row[:5]
            meta = row[5] if len(row) > 5 else {}
            # bool is an int in Python; a shape of [true] is hostile, not a 1.
            if not (isinstance(key, str) and isinstance(enc, str) and type(nbytes) is int and nbytes >= 0
                    and isinstance(shape, list) and len(shape) <= 32
                    and all(type(d) is int and 0 <= d < 2**48 for d in shape)
                    and isinstance(meta, dict) and isinstance(code, str)):
                raise ValueError(f"bad tensor record {str(row)[:200]}")
            if key in seen:
                raise ValueError(f"tensor {key!r} is listed twice")
            seen.add(key)
            dtype = dtype_from_code(code)
            numel = 1
            for d in shape:
                numel *= d
            decoded += numel * torch.empty((), dtype=dtype).element_size()
            if decoded > cap:
                raise ValueError(f"the tensors would decode to more than {cap} bytes from a {payload_len}-byte "
                                 f"payload (tensor {key!r} declares shape {shape})")
            out.append(TensorRecord(key, enc, tuple(shape), dtype, offset, nbytes, meta))
            offset += nbytes
    except (TypeError, ValueError, IndexError) as e:
        raise fail(path, f"malformed tensor table: {e}") from e
    if offset != payload_len:
        raise fail(path, f"the tensor table covers {offset} bytes but the payload has {payload_len}")
    return out


def read_bytes(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    p = str(path)
    try:
        with open(p, "rb") as f:
            return f.read(), p
    except FileNotFoundError as e:
        raise ArtifactError(f"artifact {p!r} does not exist") from e
    except IsADirectoryError as e:
        raise ArtifactError(f"{p!r} is a directory, not an artifact file") from e
    except OSError as e:
        raise ArtifactError(f"cannot read artifact {p!r}: {e}") from e

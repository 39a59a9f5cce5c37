"""The artifact file format: a safetensors file holding one byte tensor.

Format 2 (written now; all of it a valid safetensors file, readable by `safetensors.safe_open`):

    u64 header length | {"b": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}} | blob
    blob = u32 crc32 of the rest | varint m | m bytes: the JSON manifest, raw deflate with a preset
           dictionary | payload (the coded tensor streams, concatenated)

The manifest sits in the blob, compressed, instead of in the safetensors metadata, where
JSON inside a JSON string pays an escape per quote and no compression: on a LeNet file that
was 1.6-2.0 KB, now under 300 B. One checksum covers manifest and payload.

Format 1 (read, never written): {"__metadata__": {"ts": <manifest JSON>, "c": <crc32, hex>},
"b": <the payload>}, with the payload's crc32 in the manifest's "x".

This module knows bytes, JSON and checksums only; what the manifest says about a model is
read and written by `codec/model_encode.py` and `codec/model_decode.py`.

Manifest keys (short on purpose, since they are in every file):

    f   format version (int). Readers refuse a newer one.
    v   torchshrink version that wrote the file
    m   reference model name (the skeleton registered under that name), when known
    mk  constructor arguments for `m`, when not the default
    hf  {"c": transformers model class, "k": config class, "d": config dict} of a Hugging
        Face model (data only, never code)
    r   class name of the root module (for error messages)
    h   the model's `torchshrink_history` (the configs applied to it, as plain dicts), only
        when saved with history=True
    u   user metadata given to `save(metadata=...)`
    S   structure spec table: [[module type name, spec], ...] (deduplicated)
    s   {module name: index into S} for every module whose type is registered
    p   {"<module>.<tensor>": [[parametrization type name, spec], ...]} in chain order
    t   the tensor table, in payload order: [[state_dict key, encoding, shape, dtype code,
        payload bytes, meta?], ...]; with "K", only [[encoding, payload bytes, meta?], ...]
    K   crc32 (hex) of the tensor layout [[key, shape, dtype code], ...] that rebuilding the
        skeleton gives (its state_dict order, tied aliases left out): names, shapes and dtypes
        are then not stored, and a skeleton with another layout is refused by this checksum
    a   {state_dict key: earlier key} for tied tensors, stored once under the earlier key
    A   {module name: {dotted attribute: value}}: plain attributes structural surgery set (head counts)
    x   crc32 of the payload, hex (format 1 only)
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

from torchshrink.codec.encodings import dtype_from_code, varint
from torchshrink.errors import ArtifactError

__all__ = ["FORMAT_VERSION", "MAX_DEPTH", "ArtifactInfo", "TensorRecord", "atomic_write", "dumps", "layout_crc",
           "explicit_rows", "implicit", "pack", "pack_text", "parse", "read_bytes", "records", "version"]

FORMAT_VERSION = 2
_BLOB = "b"  # format 1's payload tensor
_BLOB2 = "b"  # format 2's single tensor: crc, compressed manifest, payload
# Deflate's preset dictionary for format 2 manifests: the words most manifests repeat, so even
# their first use costs a back-reference. Part of the format: never edit it (a new dictionary
# is a new format version).
_ZDICT = (b'"u":{"data":"mnist5k"}"a":{"A":{"S":[["Linear",{"in":"out":"bias":true}]],"s":{"hf":{"c":"k":"d":'
          b'"mk":{"PruningMask",{"shape":[["Codebook",{"k":16,"shape":["ProductCodebook",{"dim":'
          b'"sparse_raw",["sparse_fixed",["sparse_ans",["huffman",["bits",["const",["dense",["ctx_sparse",'
          b'["ans",["zeros",0],["dense",64],["dense",'
          b'"m":"lenet300","m":"lenet5","m":"gpt_tiny","p":{"fc1.weight":[["conv1.weight":[["fc2.weight":[['
          b'"t":[["K":"{"f":2,"v":"0.1.0",')
_MAX_MANIFEST = 16 * 2**20  # an inflated manifest beyond this is hostile
_MANIFEST_KEY = "ts"  # format 1: the metadata entry holding the manifest
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


def layout_crc(layout: list[list[Any]]) -> str:
    """The "K" checksum of a tensor layout [[key, shape, dtype code], ...]."""
    return crc(dumps(layout).encode())


def pack(manifest: dict[str, Any], payload: bytes) -> bytes:
    """The file's bytes (format 2) for a manifest and the concatenated coded streams."""
    return pack_text(dumps(manifest), payload)


def pack_text(text: str, payload: bytes) -> bytes:
    """`pack` for a manifest already serialized (tests write hostile text through it)."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    packed = z.compress(text.encode("utf-8", "surrogatepass")) + z.flush()
    rest = varint(len(packed)) + packed + payload
    blob = struct.pack("<I", zlib.crc32(rest) & 0xFFFFFFFF) + rest
    header = {_BLOB2: {"dtype": "U8", "shape": [len(blob)], "data_offsets": [0, len(blob)]}}
    raw = dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + blob


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


def _manifest_from(text: str, path: str) -> dict[str, Any]:
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
    return manifest


def _parse_v1(meta: dict[str, Any], entries: dict[str, Any], body: bytes, path: str) -> dict[str, Any]:
    text = meta[_MANIFEST_KEY]
    if not isinstance(text, str) or meta.get(_MANIFEST_CRC) != crc(text.encode("utf-8", "surrogatepass")):
        raise fail(path, "the manifest checksum does not match (the file is corrupted)")
    manifest = _manifest_from(text, path)
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
    return manifest


def _parse_v2(entries: dict[str, Any], blob: bytes, path: str) -> tuple[dict[str, Any], int]:
    """(manifest, offset of the payload in the blob)."""
    spec = entries[_BLOB2]
    if (set(entries) != {_BLOB2} or not isinstance(spec, dict) or spec.get("dtype") != "U8"
            or spec.get("shape") != [len(blob)] or spec.get("data_offsets") != [0, len(blob)]):
        raise fail(path, f"the data section has {len(blob)} bytes but the header describes "
                          f"{dumps(entries)[:200]} (truncated or corrupted)")
    if len(blob) < 5 or struct.unpack("<I", blob[:4])[0] != zlib.crc32(blob[4:]) & 0xFFFFFFFF:
        raise fail(path, "the checksum does not match (the file is truncated or corrupted, or a safetensors "
                          "file of another tool)")
    pos, m, shift = 4, 0, 0
    while True:
        if pos >= len(blob) or shift > 35:
            raise fail(path, "the manifest length is malformed")
        byte = blob[pos]
        pos += 1
        m |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if pos + m > len(blob):
        raise fail(path, f"the manifest claims {m} bytes but the file has {len(blob) - pos} after it")
    z = zlib.decompressobj(-15, _ZDICT)
    try:
        raw = z.decompress(blob[pos : pos + m], _MAX_MANIFEST)
    except zlib.error as e:
        raise fail(path, f"the manifest does not inflate ({e})") from e
    if z.unconsumed_tail:
        raise fail(path, f"the manifest inflates to more than {_MAX_MANIFEST} bytes")
    if not z.eof or z.unused_data:
        raise fail(path, "the compressed manifest is truncated or has trailing bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(path, f"the manifest is not UTF-8 ({e})") from e
    manifest = _manifest_from(text, path)
    if manifest["f"] < 2:
        raise fail(path, f"a format {manifest['f']} manifest in a format 2 file")
    return manifest, pos + m


def parse(data: bytes, path: str) -> tuple[dict[str, Any], bytes, int]:
    """(manifest, payload, bytes before the payload) after checking structure and checksums."""
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
    body = data[8 + n :]
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if isinstance(meta, dict) and _MANIFEST_KEY in meta:
        return _parse_v1(meta, entries, body, path), body, 8 + n
    if _BLOB2 in entries:
        manifest, offset = _parse_v2(entries, body, path)
        return manifest, body[offset:], 8 + n + offset
    raise fail(path, "it is a safetensors file without a torchshrink manifest (written by another tool?); "
                      "load it with safetensors.torch.load_file instead")


def implicit(manifest: dict[str, Any]) -> bool:
    """Whether the tensor table leaves names, shapes and dtypes to the rebuilt skeleton."""
    return "K" in manifest


def explicit_rows(manifest: dict[str, Any], layout: list[list[Any]], path: str) -> dict[str, Any]:
    """The manifest with an implicit tensor table ([encoding, bytes, meta?] rows) spelled out
    from `layout`, the [[key, shape, dtype code], ...] the skeleton rebuilds, after checking
    that layout against the recorded checksum."""
    if manifest.get("K") != layout_crc(layout):
        raise ArtifactError(
            f"{path!r} does not match like=: its tensors were laid out by a different architecture "
            "(tensor layout checksum differs); pass like= the architecture it was saved from"
        )
    rows = manifest.get("t")
    if not isinstance(rows, list) or len(rows) != len(layout):
        raise fail(path, f"malformed tensor table: {len(rows) if isinstance(rows, list) else 'no'} rows for "
                         f"{len(layout)} tensors")
    out = []
    for row, (key, shape, code) in zip(rows, layout):
        if not isinstance(row, list) or len(row) not in (2, 3):
            raise fail(path, f"malformed tensor table: bad tensor record {str(row)[:200]}")
        out.append([key, row[0], list(shape), code, *row[1:]])
    return {**manifest, "t": out}


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

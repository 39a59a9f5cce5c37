"""The artifact file format: a safetensors file holding one byte tensor, plus, in format 3,
the large tensors as entries of their own.

Format 3 (written when some tensor codes to at least `ENTRY_MIN` bytes; a valid safetensors file):

    u64 header length | {"<state_dict key>": {"dtype", "shape", "data_offsets"}, ..., "b": {"dtype": "U8", ...}}
    (space-padded) | the entries' bytes, in tensor-table order | b
    b = format 2's blob: u32 crc32 of the rest | varint m | deflated manifest | the small tensors' streams

A large tensor is its own entry, named by its state_dict key: with its real dtype and shape
when stored raw ("dense"), as U8 bytes when coded. `safetensors.safe_open(path).keys()` lists
them and `get_tensor` reads them, so standard tools see the model's big weights. The manifest
("E") gives each entry's crc32; the small tensors stay packed in "b" as in format 2, which is
why a model without a large tensor (every LeNet file) is still written as format 2, byte for
byte as before. "b" comes last because it holds the manifest, which is known only once every
tensor is coded: the writer streams the entries to the file as it codes them and writes the
header, padded to the space it reserved, at the end. A tied name or a reserved name ("b",
"__metadata__") stays in the blob.

Format 2 (a valid safetensors file):

    u64 header length | {"b": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}} | blob
    blob = u32 crc32 of the rest | varint m | m bytes: the JSON manifest, raw deflate with a preset
           dictionary | payload (the coded tensor streams, concatenated)

The manifest sits in the blob, compressed, instead of in the safetensors metadata, where
JSON inside a JSON string pays an escape per quote and no compression: on a LeNet file that
was 1.6-2.0 KB, now under 300 B. One checksum covers manifest and payload. Format 3 uses the
same preset dictionary.

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
    E   format 3: [[row index into "t", crc32 hex], ...] for the tensors stored as their own
        safetensors entries (named by their key); the other rows' streams follow each other in
        the blob
    A   {module name: {dotted attribute: value}}: plain attributes structural surgery set (head counts)
    x   crc32 of the payload, hex (format 1 only)
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from collections.abc import Callable
from importlib import metadata as _metadata
from typing import Any

import torch

from torchshrink.codec.atomic import atomic_file, atomic_write
from torchshrink.codec.encodings import dtype_from_code, varint
from torchshrink.codec.entries import Entry, entry_record, own_entries, safetensors_dtype, tiled
from torchshrink.errors import ArtifactError

__all__ = ["ENTRY_MIN", "FORMAT_PACKED", "FORMAT_VERSION", "MAX_DEPTH", "ArtifactInfo", "Located", "TensorRecord",
           "atomic_file", "atomic_write", "deflate_manifest", "dumps", "layout_crc", "explicit_rows", "implicit",
           "locate", "pack", "pack_text", "parse", "parse_blob", "read_bytes", "records", "safetensors_dtype",
           "version"]

FORMAT_VERSION = 3  # the newest format this module reads and writes
FORMAT_PACKED = 2  # what a file without entries of its own is written as (every tensor in the blob)
# A tensor whose stream has at least this many bytes is its own safetensors entry. Below it
# an entry's ~100 header bytes would show on small files (a LeNet file is 20-30 KB); above it
# they cost under 0.05%.
ENTRY_MIN = 1 << 18
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


def deflate_manifest(text: str) -> bytes:
    """The manifest as stored in the blob: raw deflate with the preset dictionary."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    return z.compress(text.encode("utf-8", "surrogatepass")) + z.flush()


def pack_text(text: str, payload: bytes) -> bytes:
    """`pack` for a manifest already serialized (tests write hostile text through it)."""
    packed = deflate_manifest(text)
    rest = varint(len(packed)) + packed + payload
    blob = struct.pack("<I", zlib.crc32(rest) & 0xFFFFFFFF) + rest
    header = {_BLOB2: {"dtype": "U8", "shape": [len(blob)], "data_offsets": [0, len(blob)]}}
    raw = dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + blob


@dataclasses.dataclass(frozen=True)
class TensorRecord:
    """One stored tensor. offset: where its stream starts in the payload it belongs to (the
    blob's payload; 0 for a format 3 entry); start: its first byte's position in the file;
    crc: the crc32 (hex) of a format 3 entry, else None (the blob's checksum covers it)."""

    key: str
    encoding: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    nbytes: int
    meta: dict[str, Any]
    start: int = -1
    crc: str | None = None


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """What an artifact holds, without building the model. payload_bytes: the tensors'
    streams; header_bytes: everything else (safetensors header, checksums, manifest)."""

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


Checksum = Callable[[memoryview], int]


def _crc32(data: memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _parse_v1(meta: dict[str, Any], entries: dict[str, Any], body: memoryview, path: str,
              checksum: Checksum = _crc32) -> dict[str, Any]:
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
    if manifest.get("x") != f"{checksum(body):08x}":
        raise fail(path, "the payload checksum does not match (the file is truncated or corrupted)")
    return manifest


def parse_blob(blob: memoryview, path: str, checksum: Checksum = _crc32,
               entries: bool = False) -> tuple[dict[str, Any], int]:
    """(manifest, offset of the payload in the blob) of a format 2 or 3 blob, checksum
    verified; entries: the file has entries besides the blob (then it must be format 3)."""
    if len(blob) < 5 or struct.unpack("<I", blob[:4])[0] != checksum(blob[4:]):
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
    if manifest["f"] < 2 or (manifest["f"] >= 3) != entries:
        raise fail(path, f"a format {manifest['f']} manifest in a file {'with' if entries else 'without'} "
                         "tensor entries of its own")
    return manifest, pos + m


@dataclasses.dataclass(frozen=True)
class Located:
    """Where a file's parts are (positions from the file's start), its checksums verified
    except those of format 3 entries, which are checked as each tensor is read."""

    manifest: dict[str, Any]
    data_start: int  # the first byte after the safetensors header
    payload_start: int  # the blob's tensor streams (format 1: the body)
    payload_len: int
    entries: dict[str, Entry]  # format 3: name -> (dtype, shape, start, end)


def _header(buf: memoryview, path: str) -> tuple[int, dict[str, Any]]:
    if len(buf) == 0:
        raise fail(path, "the file is empty")
    if len(buf) < 8:
        raise fail(path, f"only {len(buf)} bytes, too short for a safetensors header (truncated?)")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > min(len(buf) - 8, _MAX_HEADER):
        raise fail(path, f"its header claims {n} bytes but the file has {len(buf)} "
                          "(truncated, corrupted, or not a safetensors file)")
    try:
        header = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise fail(path, f"the safetensors header is not valid JSON ({e}); the file is corrupted or foreign") from e
    if not isinstance(header, dict):
        raise fail(path, "the safetensors header is not a JSON object")
    return n, header


def locate(buf: memoryview, path: str, checksum: Checksum = _crc32) -> Located:
    """Parse a whole file (in memory or memory-mapped): header, manifest, checksums."""
    n, header = _header(buf, path)
    meta = header.get("__metadata__")
    body = buf[8 + n :]
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if isinstance(meta, dict) and _MANIFEST_KEY in meta:
        return Located(_parse_v1(meta, entries, body, path, checksum), 8 + n, 8 + n, len(body), {})
    if _BLOB2 not in entries:
        raise fail(path, "it is a safetensors file without a torchshrink manifest (written by another tool?); "
                          "load it with safetensors.torch.load_file instead")
    if set(entries) == {_BLOB2}:
        spec = entries[_BLOB2]
        if (not isinstance(spec, dict) or spec.get("dtype") != "U8" or spec.get("shape") != [len(body)]
                or spec.get("data_offsets") != [0, len(body)]):
            raise fail(path, f"the data section has {len(body)} bytes but the header describes "
                              f"{dumps(entries)[:200]} (truncated or corrupted)")
        manifest, offset = parse_blob(body, path, checksum)
        return Located(manifest, 8 + n, 8 + n + offset, len(body) - offset, {})
    try:
        located = tiled(entries, len(body))
    except ValueError as e:
        raise fail(path, str(e)) from e
    dtype, shape, a, b = located.pop(_BLOB2)
    if dtype != "U8" or shape != [b - a]:
        raise fail(path, f"the blob entry is malformed: {dumps(entries[_BLOB2])[:200]}")
    manifest, offset = parse_blob(body[a:b], path, checksum, entries=True)
    moved = {k: (d, s, 8 + n + x, 8 + n + y) for k, (d, s, x, y) in located.items()}
    return Located(manifest, 8 + n, 8 + n + a + offset, b - a - offset, moved)


def parse(data: bytes, path: str) -> tuple[dict[str, Any], bytes, int]:
    """(manifest, payload, bytes before the payload) of a file held in memory, after checking
    structure and checksums; in a format 3 file the payload is the blob's (entries left out)."""
    found = locate(memoryview(data), path)
    return found.manifest, data[found.payload_start : found.payload_start + found.payload_len], found.payload_start


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


def records(manifest: dict[str, Any], payload_len: int, path: str, *, payload_start: int = 0,
            entries: dict[str, Entry] | None = None) -> list[TensorRecord]:
    """The tensor table, checked against the blob's payload (`payload_len` bytes at file
    position `payload_start`) and, in format 3, the file's entries."""
    out: list[TensorRecord] = []
    offset = 0
    rows = manifest.get("t")
    if not isinstance(rows, list):
        raise fail(path, "the manifest has no tensor table")
    entries = entries or {}
    decoded = 0
    stored = payload_len + sum(b - a for _, _, a, b in entries.values())
    cap = max(_MIN_DECODED_CAP, _MAX_EXPANSION * stored)
    seen: set[str] = set()
    try:
        own = own_entries(manifest, len(rows))
        for i, row in enumerate(rows):
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
                raise ValueError(f"the tensors would decode to more than {cap} bytes from {stored} stored "
                                 f"bytes (tensor {key!r} declares shape {shape})")
            r = TensorRecord(key, enc, tuple(shape), dtype, offset, nbytes, meta, payload_start + offset)
            if i in own:
                out.append(entry_record(r, code, entries.get(key), own[i]))
                continue
            out.append(r)
            offset += nbytes
        if {rows[i][0] for i in own} != set(entries):
            raise ValueError(f"the file's entries {sorted(entries)[:8]} are not the tensors the table lists as "
                             "entries")
    except (TypeError, ValueError, IndexError, KeyError) as e:
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

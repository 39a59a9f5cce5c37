"""Format 3's safetensors entries: how they tile the data section and what the tensor table
says about them. Pure checks raising ValueError; `codec/fileformat.py` names the file."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchshrink.codec.fileformat import TensorRecord

__all__ = ["Entry", "entry_record", "own_entries", "safetensors_dtype", "tiled"]

Entry = tuple[str, list[int], int, int]  # (safetensors dtype, shape, start, end)
_DTYPES = {"f32": "F32", "f64": "F64", "f16": "F16", "bf16": "BF16", "i64": "I64", "i32": "I32", "i16": "I16",
           "i8": "I8", "u8": "U8", "b": "BOOL", "u16": "U16", "u32": "U32", "u64": "U64", "f8e4m3": "F8_E4M3",
           "f8e5m2": "F8_E5M2"}


def safetensors_dtype(code: str) -> str:
    """The safetensors dtype name of a manifest dtype code ("f32" -> "F32")."""
    return _DTYPES[code]


def tiled(entries: dict[str, Any], size: int) -> dict[str, Entry]:
    """Format 3's entries as (dtype, shape, start, end) in the data section, checked to tile it
    exactly (the safetensors rule: no gaps, no overlaps)."""
    out: dict[str, Entry] = {}
    for name, spec in entries.items():
        offsets = spec.get("data_offsets") if isinstance(spec, dict) else None
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not (isinstance(spec, dict) and isinstance(spec.get("dtype"), str) and isinstance(shape, list)
                and len(shape) <= 32 and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= size):
            raise ValueError(f"malformed safetensors entry {name[:100]!r}: {str(spec)[:200]}")
        out[name] = (spec["dtype"], shape, offsets[0], offsets[1])
    end = 0
    for _, _, a, b in sorted(out.values(), key=lambda e: (e[2], e[3])):
        if a != end:
            raise ValueError("the safetensors entries overlap or leave gaps (corrupted)")
        end = b
    if end != size:
        raise ValueError(f"the entries cover {end} bytes but the data section has {size} (truncated or corrupted)")
    return out


def own_entries(manifest: dict[str, Any], rows: int) -> dict[int, str]:
    """{row index: crc32 hex} of format 3's "E" list (ValueError when malformed)."""
    listed = manifest.get("E", [])
    out: dict[int, str] = {}
    if not isinstance(listed, list):
        raise ValueError("the entry list is not a list")
    for item in listed:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and 0 <= item[0] < rows
                and isinstance(item[1], str) and len(item[1]) == 8 and item[0] not in out):
            raise ValueError(f"bad entry record {str(item)[:200]}")
        out[item[0]] = item[1]
    return out


def entry_record(r: TensorRecord, code: str, entry: Entry | None,
                  crc_hex: str) -> TensorRecord:
    if entry is None:
        raise ValueError(f"tensor {r.key!r} is listed as an entry of its own, but the file has no such entry")
    dtype, shape, a, b = entry
    want = (safetensors_dtype(code), list(r.shape)) if r.encoding == "dense" else ("U8", [r.nbytes])
    if (dtype, shape) != want or b - a != r.nbytes:
        raise ValueError(f"entry {r.key!r} is {dtype} {shape} of {b - a} bytes, but the table says {want[0]} "
                         f"{want[1]} of {r.nbytes} bytes")
    return dataclasses.replace(r, offset=0, start=a, crc=crc_hex)



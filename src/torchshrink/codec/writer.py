"""Writing an artifact tensor by tensor (the layouts are in `codec/fileformat.py`).

No whole-file bytes object is ever built: a large tensor's stream goes to the file as soon as
it is coded (its own safetensors entry), the small ones wait in a spooled temporary file (in
memory up to 64 MiB), and the blob (checksum, manifest, small streams) and the header are
written last. The header's space is reserved before the first entry from an upper bound that
`begin` computes from the tensors that could become entries, and padded with spaces (which
safetensors allows) to fill it. A file with no entry is written as format 2, byte for byte as
`fileformat.pack` would.
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from torchshrink.codec.encodings import varint
from torchshrink.codec.fileformat import (
    ENTRY_MIN,
    FORMAT_PACKED,
    FORMAT_VERSION,
    deflate_manifest,
    dumps,
    safetensors_dtype,
)

__all__ = ["FileSink"]

_RESERVED = frozenset({"b", "__metadata__"})  # the blob's name, and safetensors' own key
_SPOOL = 64 << 20
_CHUNK = 16 << 20
_LONGEST_DTYPE = len("F8_E4M3")
_DIGITS = 20  # any u64 offset


def _entry_bound(name: str, shape: list[int], raw: int) -> int:
    """The longest header text an entry for this tensor can take (comma included)."""
    empty = dumps({name: {"dtype": "", "shape": [], "data_offsets": [0, 0]}})
    shapes = max(len(dumps(shape)), len(dumps([raw])))
    return len(empty) - 2 - 2 - 2 + _LONGEST_DTYPE + shapes + 2 * _DIGITS + 1


class FileSink:
    """A `model_encode.StreamSink` writing one artifact into `f`, an empty seekable binary file."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.reserve = 0
        self.candidates: set[str] = set()
        self.entries: list[tuple[int, str, dict[str, Any], int]] = []  # (row, key, header entry, crc)
        self.data_len = 0
        self.small: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # noqa: SIM115 (closed in finish)
        self.rows = 0
        self._crc = ThreadPoolExecutor(1, thread_name_prefix="torchshrink-crc")

    def begin(self, tensors: list[tuple[str, list[int], int]]) -> None:
        big = [(k, s, raw) for k, s, raw in tensors if raw >= ENTRY_MIN and k not in _RESERVED]
        self.candidates = {k for k, _, _ in big}
        self.reserve = 2 + _entry_bound("b", [], 2**63) + sum(_entry_bound(k, s, raw) for k, s, raw in big)

    def add(self, row: list[Any], payload: bytes | memoryview) -> None:
        key, enc, shape, code, nbytes = row[:5]
        if nbytes >= ENTRY_MIN and key in self.candidates:
            if not self.entries:
                self.f.seek(8 + self.reserve)
            # zlib and the file write both release the GIL: the checksum runs beside the write.
            crc = self._crc.submit(zlib.crc32, payload)
            self.f.write(payload)
            dtype, eshape = (safetensors_dtype(code), shape) if enc == "dense" else ("U8", [nbytes])
            spec = {"dtype": dtype, "shape": eshape, "data_offsets": [self.data_len, self.data_len + nbytes]}
            self.entries.append((self.rows, key, spec, crc.result() & 0xFFFFFFFF))
            self.data_len += nbytes
        else:
            self.small.write(payload)
        self.rows += 1

    def _blob(self, manifest: dict[str, Any]) -> tuple[bytes, int, int]:
        """(crc | varint | deflated manifest, the crc, blob length); the small streams follow."""
        packed = deflate_manifest(dumps(manifest))
        prefix = varint(len(packed)) + packed
        crc = zlib.crc32(prefix)
        self.small.seek(0)
        while chunk := self.small.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
        size = self.small.tell()
        return struct.pack("<I", crc & 0xFFFFFFFF) + prefix, crc, 4 + len(prefix) + size

    def _copy_small(self) -> None:
        self.small.seek(0)
        while chunk := self.small.read(_CHUNK):
            self.f.write(chunk)

    def finish(self, manifest: dict[str, Any]) -> int:
        """Write the blob and the header; returns the file's size."""
        try:
            if not self.entries:
                head, _, blob_len = self._blob({**manifest, "f": FORMAT_PACKED})
                header = dumps({"b": {"dtype": "U8", "shape": [blob_len], "data_offsets": [0, blob_len]}}).encode()
                header += b" " * (-len(header) % 8)  # safetensors aligns the data section to 8 bytes
                self.f.seek(0)
                self.f.truncate()
                self.f.write(struct.pack("<Q", len(header)) + header + head)
                self._copy_small()
                return 8 + len(header) + blob_len
            own = [[row, f"{crc:08x}"] for row, _, _, crc in self.entries]
            head, _, blob_len = self._blob({**manifest, "f": FORMAT_VERSION, "E": own})
            self.f.seek(8 + self.reserve + self.data_len)
            self.f.write(head)
            self._copy_small()
            table = {key: spec for _, key, spec, _ in self.entries}
            table["b"] = {"dtype": "U8", "shape": [blob_len], "data_offsets": [self.data_len, self.data_len + blob_len]}
            header = dumps(table).encode()
            if len(header) > self.reserve:  # the bound is a bound; this would be a bug here
                raise AssertionError(f"artifact header of {len(header)} bytes exceeds its {self.reserve}-byte reserve")
            self.f.seek(0)
            self.f.write(struct.pack("<Q", self.reserve) + header + b" " * (self.reserve - len(header)))
            return 8 + self.reserve + self.data_len + blob_len
        finally:
            self.small.close()
            self._crc.shutdown()

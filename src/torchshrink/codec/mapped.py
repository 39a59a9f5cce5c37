"""Reading an artifact through a read-only memory map, one tensor at a time.

Nothing reads the whole file into memory: the header and manifest are parsed from the map,
checksums run over it in 16 MiB steps, and each tensor's stream is sliced from it only while
that tensor is decoded. Pages of a file map count in a process's resident memory once touched,
so after each step the pages just read are handed back to the kernel (`madvise(DONTNEED)`;
they stay in the page cache, a later read is cheap): loading peaks at about the decoded model
plus one tensor's stream, instead of model plus file.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import zlib
from collections.abc import Iterator

from torchshrink.codec import pages
from torchshrink.codec.fileformat import Located, TensorRecord, fail, locate
from torchshrink.errors import ArtifactError

__all__ = ["MappedArtifact"]

_STEP = 16 << 20


class MappedArtifact:
    """An open artifact file: `located` says where its parts are; `stream(record)` lends one
    tensor's bytes. Use as a context manager (the map is closed on exit)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = p = str(path)
        try:
            with open(p, "rb") as f:
                self.size = os.fstat(f.fileno()).st_size
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
        except FileNotFoundError as e:
            raise ArtifactError(f"artifact {p!r} does not exist") from e
        except IsADirectoryError as e:
            raise ArtifactError(f"{p!r} is a directory, not an artifact file") from e
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot read artifact {p!r}: {e}") from e
        self._buf = memoryview(self._mm) if self._mm is not None else memoryview(b"")
        self._base = pages.address(self._buf)
        pages.register(id(self), self._base, self.size, self._drop)
        try:
            self.located: Located = locate(self._buf, p, self._checksum)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> MappedArtifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self, start: int, end: int) -> None:
        """Give the pages of [start, end) back to the kernel (resident memory, not the data:
        a page still to be read is read again from the page cache)."""
        if self._mm is None or end <= start or not hasattr(self._mm, "madvise"):
            return
        page = mmap.PAGESIZE
        first = start - start % page
        with contextlib.suppress(OSError, ValueError):
            self._mm.madvise(mmap.MADV_DONTNEED, first, min(end, self.size) - first)

    def _checksum(self, view: memoryview) -> int:
        start = pages.address(view) - self._base
        crc = 0
        for pos in range(0, len(view), _STEP):
            with view[pos : pos + _STEP] as step:
                crc = zlib.crc32(step, crc)
            self._drop(start + pos, start + pos + _STEP)
        return crc & 0xFFFFFFFF

    @contextlib.contextmanager
    def stream(self, r: TensorRecord) -> Iterator[memoryview]:
        """The bytes of one tensor's stream, checked against its entry checksum (format 3),
        valid inside the `with` block."""
        view = self._buf[r.start : r.start + r.nbytes]
        try:
            if len(view) != r.nbytes:
                raise fail(self.path, f"tensor {r.key!r} runs past the end of the file (truncated)")
            if r.crc is not None and f"{self._checksum(view):08x}" != r.crc:
                raise fail(self.path, f"the checksum of tensor {r.key!r} does not match (the file is corrupted)")
            yield view
        finally:
            with contextlib.suppress(BufferError):  # a decoder kept a view: then the map outlives us
                view.release()
            self._drop(r.start, r.start + r.nbytes)

    def close(self) -> None:
        pages.unregister(id(self))
        with contextlib.suppress(BufferError):
            self._buf.release()
        if self._mm is not None:
            with contextlib.suppress(BufferError):
                self._mm.close()

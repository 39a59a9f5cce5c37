"""The artifact: one safetensors file, no pickle, everything needed to rebuild the model.

`codec/fileformat.py` is the file (bytes, manifest, checksums, atomic writes);
`codec/model_encode.py` and `codec/model_decode.py` turn a module tree into a manifest and
back. This module is the public entry: save, load, read_info.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from torch import nn

from torchshrink.codec.fileformat import (
    FORMAT_VERSION,
    ArtifactInfo,
    TensorRecord,
    atomic_file,
    explicit_rows,
    implicit,
    layout_crc,
    records,
)
from torchshrink.codec.mapped import MappedArtifact
from torchshrink.codec.model_decode import decode_model, layout
from torchshrink.codec.model_encode import encode_streams
from torchshrink.codec.writer import FileSink
from torchshrink.errors import ArtifactError

__all__ = ["FORMAT_VERSION", "ArtifactInfo", "TensorRecord", "encode_model", "load", "read_info", "save"]


def _compact(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its tensor table reduced to [encoding, bytes, meta?] rows where loading
    the file without like= rebuilds exactly the same tensor names, shapes and dtypes (checked
    here by rebuilding it, as `load` will); otherwise unchanged."""
    if "m" not in manifest or "hf" in manifest:
        return manifest  # only a registered reference model is rebuilt without like=
    try:
        rebuilt = layout(manifest, "<the artifact being saved>", None)
    except ArtifactError:
        return manifest
    rows = manifest["t"]
    if rebuilt != [[r[0], r[2], r[3]] for r in rows]:
        return manifest
    return {**manifest, "t": [[r[1], r[4], *r[5:]] for r in rows], "K": layout_crc(rebuilt)}


def _spelled_out(manifest: dict[str, Any], path: str, like: nn.Module | str | None,
                 inplace: bool = False) -> dict[str, Any]:
    """The manifest with an implicit tensor table spelled out by the skeleton's layout. When
    like= lays its tensors out otherwise, the saved reference architecture's layout is used, so
    the check against like= names the tensors and shapes that differ."""
    if not implicit(manifest):
        return manifest
    try:
        return explicit_rows(manifest, layout(manifest, path, like, inplace=inplace), path)
    except ArtifactError:
        if like is None:
            raise
        return explicit_rows(manifest, layout(manifest, path, None), path)


def _write(model: nn.Module, f: IO[bytes], metadata: Mapping[str, Any] | None, history: bool) -> int:
    sink = FileSink(f)
    manifest = encode_streams(model, sink, metadata=metadata, history=history)
    return sink.finish(_compact(manifest))


def _records(art: MappedArtifact, like: nn.Module | str | None,
             inplace: bool = False) -> tuple[list[TensorRecord], dict[str, Any]]:
    found = art.located
    manifest = _spelled_out(found.manifest, art.path, like, inplace)
    recs = records(manifest, found.payload_len, art.path, payload_start=found.payload_start, entries=found.entries)
    return recs, manifest


def encode_model(model: nn.Module, *, metadata: Mapping[str, Any] | None = None, history: bool = False) -> bytes:
    """The artifact's bytes for `model` (what `save` writes), in memory."""
    buf = io.BytesIO()
    _write(model, buf, metadata, history)
    return buf.getvalue()


def save(model: nn.Module, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None,
         history: bool = False) -> int:
    """Write `model` to `path` as a torchshrink artifact; returns the bytes written.

    The write is atomic: the file appears complete or not at all, and a failed save leaves
    any previous file at `path` untouched. The file's mode follows the umask. `metadata` is
    optional JSON data kept in the file. history=True also keeps the configs applied to the
    model (`torchshrink_history`); off by default, since on a LeNet file they cost more than
    the rest of the manifest together.

    Tensors are coded and written one at a time (memory: the model plus about one tensor's
    stream); a tensor whose stream has 256 KiB or more becomes a safetensors entry of its own,
    under its state_dict key, which `safetensors.safe_open` lists and reads.
    """
    try:
        with atomic_file(Path(path)) as f:
            return _write(model, f, metadata, history)
    except OSError as e:
        raise ArtifactError(f"cannot save artifact to {str(path)!r}: {e}") from e


def read_info(path: str | os.PathLike[str]) -> ArtifactInfo:
    """The manifest and tensor table of an artifact, without decoding a tensor. Checksums
    verified: the blob's (manifest and small tensors; the whole file before format 3), not
    those of format 3's own entries, which `load` checks as it reads each one."""
    with MappedArtifact(path) as art:
        p, size, recs, manifest = art.path, art.size, *_records(art, None)
    name, kwargs, root, history, meta = (manifest.get(k) for k in ("m", "mk", "r", "h", "u"))
    payload = sum(r.nbytes for r in recs)
    return ArtifactInfo(
        path=p, file_bytes=size, header_bytes=size - payload, payload_bytes=payload,
        format_version=manifest["f"], library_version=str(manifest.get("v", "?")),
        model_name=name if isinstance(name, str) else None,
        model_kwargs=kwargs if isinstance(kwargs, dict) else None,
        root_type=root if isinstance(root, str) else None,
        history=list(history) if isinstance(history, list) else [],
        metadata=meta if isinstance(meta, dict) else None, tensors=recs, manifest=manifest,
    )


def load(path: str | os.PathLike[str], like: nn.Module | str | None = None, *, inplace: bool = False) -> nn.Module:
    """Rebuild a model from an artifact.

    like: the skeleton to load into: a module of the saved architecture (it is copied, not
        modified), or a reference model name; by default the reference model or Hugging Face
        config recorded in the file. Recorded structural changes (thinner layers, factorized
        layers, custom modules) and parametrizations are replayed on it before the tensors
        are loaded strictly; tied tensors come back as one Parameter.
    inplace: load into `like` itself instead of a copy (for modules that refuse deepcopy);
        `like` is then edited and returned.
    Returns the model on the CPU in eval mode. Raises ArtifactError on anything truncated,
    corrupted, foreign, hostile, from a newer format, or not matching `like`.

    The file is memory-mapped and decoded one tensor at a time into a skeleton whose
    parameters are on the meta device until assigned: peak memory is about the loaded model
    plus one tensor's stream and decode work (a 536 MB fp32 file: 645 MB), never model plus file.
    """
    with MappedArtifact(path) as art:
        recs, manifest = _records(art, like, inplace)
        return decode_model(manifest, recs, art, art.path, like, inplace=inplace)

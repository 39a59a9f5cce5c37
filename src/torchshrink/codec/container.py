"""The artifact: one safetensors file, no pickle, everything needed to rebuild the model.

`codec/fileformat.py` is the file (bytes, manifest, checksums, atomic writes);
`codec/model_encode.py` and `codec/model_decode.py` turn a module tree into a manifest and
back. This module is the public entry: save, load, read_info.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from torchshrink.codec.fileformat import (
    FORMAT_VERSION,
    ArtifactInfo,
    TensorRecord,
    atomic_write,
    parse,
    read_bytes,
    records,
)
from torchshrink.codec.model_decode import decode_model
from torchshrink.codec.model_encode import encode_model
from torchshrink.errors import ArtifactError

__all__ = ["FORMAT_VERSION", "ArtifactInfo", "TensorRecord", "encode_model", "load", "read_info", "save"]


def save(model: nn.Module, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None) -> int:
    """Write `model` to `path` as a torchshrink artifact; returns the bytes written.

    The write is atomic: the file appears complete or not at all, and a failed save leaves
    any previous file at `path` untouched. The file's mode follows the umask. `metadata` is
    optional JSON data kept in the file.
    """
    data = encode_model(model, metadata=metadata)
    try:
        atomic_write(Path(path), data)
    except OSError as e:
        raise ArtifactError(f"cannot save artifact to {str(path)!r}: {e}") from e
    return len(data)


def read_info(path: str | os.PathLike[str]) -> ArtifactInfo:
    """The manifest and tensor table of an artifact (checksums verified)."""
    data, p = read_bytes(path)
    manifest, body, header_bytes = parse(data, p)
    recs = records(manifest, len(body), p)
    name, kwargs, root, history, meta = (manifest.get(k) for k in ("m", "mk", "r", "h", "u"))
    return ArtifactInfo(
        path=p, file_bytes=len(data), header_bytes=header_bytes, payload_bytes=len(body),
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
    """
    data, p = read_bytes(path)
    manifest, body, _ = parse(data, p)
    recs = records(manifest, len(body), p)
    return decode_model(manifest, recs, body, p, like, inplace=inplace)

"""Where an export writes: checked before any tracing, one message for every format."""

from __future__ import annotations

import os
from pathlib import Path

from torchshrink.errors import ConfigError

__all__ = ["output_path"]


def output_path(path: str | os.PathLike[str], *, folder: str | None = None) -> Path:
    """`path` as a Path once its directory exists; `folder` names a format that writes a
    directory (`path` must then not be an existing file)."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"output directory {str(parent)!r} does not exist (for {str(out)!r}); "
                          f"create it first (mkdir -p {parent}) or choose another path")
    if folder is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"format={folder!r} writes a folder, but {str(out)!r} is a file; give a directory name")
    return out

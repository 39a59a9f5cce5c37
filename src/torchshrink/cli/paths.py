"""Output paths, checked before any work: a command that trains for minutes and then cannot
write its file has wasted those minutes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torchshrink.errors import ConfigError

__all__ = ["prepare_output", "prepare_output_dir", "write_text"]


def _writable_dir(directory: Path, flag: str, path: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise ConfigError(f"{flag} {str(path)!r}: cannot write in directory {str(directory)!r} "
                          f"({e.strerror or e}); choose a writable location") from e


def _make_dir(directory: Path, flag: str, path: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag} {str(path)!r}: cannot create directory {str(directory)!r} "
                          f"({e.strerror or e}); choose a writable location") from e


def prepare_output(path: str | os.PathLike[str], flag: str) -> Path:
    """Create the parent directories of an output file and check that the file can be written."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{flag} {str(out)!r} is a directory; give a file name inside it")
    parent = out.parent if str(out.parent) else Path(".")
    _make_dir(parent, flag, out)
    _writable_dir(parent, flag, out)
    if out.exists():
        try:  # append mode writes nothing and leaves the old file as it is
            with open(out, "ab"):
                pass
        except OSError as e:
            raise ConfigError(f"{flag} {str(out)!r} exists and cannot be overwritten ({e.strerror or e})") from e
    return out


def prepare_output_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """Create an output directory and check that files can be written in it."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {str(out)!r} is a file; give a directory")
    _make_dir(out, flag, out)
    _writable_dir(out, flag, out)
    return out


def write_text(path: str | os.PathLike[str], text: str, flag: str) -> None:
    """Write a report file (plain open: the umask decides its permissions)."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{flag} {str(path)!r}: cannot write ({e.strerror or e})") from e

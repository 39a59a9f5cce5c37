"""Small C libraries compiled once on this machine and called through ctypes.

Hot loops that NumPy cannot vectorize (an entropy coder's sequential state, a sparse kernel's
gathers) are written as plain C (no Python or torch headers), so a library compiles in about
a second with whatever `cc` the machine has. Each build is cached by its source, flags,
architecture and CPU flags (`-march=native` must not hand one CPU's build to another) under
`~/.cache/torchshrink/kernels`, written to a temporary name and renamed into place, so
concurrent processes see a whole library or none. No compiler, or a failed compile, returns
None: every caller keeps a pure-Python path that computes the same result.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["BASE_FLAGS", "build", "cache_dir", "library_path"]

# No -ffast-math: a shared library built with it sets flush-to-zero for the whole process on
# load, changing every other float computation of the user's program. Reassociation alone is
# what scalar float accumulators need to vectorize.
BASE_FLAGS = ("-O3", "-march=native", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
              "-fno-math-errno", "-fPIC", "-shared", "-pthread")


def cache_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "torchshrink" / "kernels"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def library_path(name: str, source: str, flags: tuple[str, ...]) -> Path:
    key = "\0".join((source, *flags, platform.machine(), _cpu_signature()))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"{name}_{digest}.so"


def build(name: str, source: str, flags: tuple[str, ...] = BASE_FLAGS) -> ctypes.CDLL | None:
    """The library `name` compiled from C `source` with `flags`, or None where that fails."""
    path = library_path(name, source, flags)
    if not path.exists():
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                src, out = Path(tmp) / f"{name}.c", Path(tmp) / f"{name}.so"
                src.write_text(source)
                cmd = [cc, *flags, "-x", "c", str(src), "-o", str(out)]
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                os.replace(out, path)
        except (OSError, subprocess.SubprocessError):
            return None
    try:
        return ctypes.CDLL(str(path))
    except OSError:
        return None

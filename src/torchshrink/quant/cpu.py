"""What this CPU's int8 kernels need, detected once."""

from __future__ import annotations

import functools

__all__ = ["has_vnni"]


@functools.cache
def has_vnni() -> bool:
    """Whether this CPU has 8-bit dot-product instructions (no 16-bit saturation in fbgemm)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))

"""Export rules for the library's own quantized modules: module type -> export form.

Reads only the modules' buffers and attributes; the quantization family needs to know nothing
about export. Rules are registered lazily (on the first export) so importing torchshrink stays
cheap and a family that is absent simply has no rules.
"""

from __future__ import annotations

__all__ = ["load"]

_LOADED = False


def load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True

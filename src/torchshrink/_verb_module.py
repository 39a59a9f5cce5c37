"""A subpackage that is also its verb.

`ts.prune(model, config)` is the verb and `torchshrink.prune` the subpackage of pruning
methods. Python's `import torchshrink.prune as tp` binds the package attribute `prune`, so a
plain function there would hide the subpackage. Instead the subpackage module itself is
callable: its class becomes a `ModuleType` subclass whose `__call__` is the verb.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["make_callable"]


def make_callable(module_name: str, verb: Callable[..., Any]) -> None:
    """Make `sys.modules[module_name]` callable as `verb` (docstring included, for help())."""

    class VerbModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return verb(*args, **kwargs)

    VerbModule.__call__.__doc__ = verb.__doc__
    VerbModule.__name__ = VerbModule.__qualname__ = f"{module_name.rsplit('.', 1)[-1]}_module"
    sys.modules[module_name].__class__ = VerbModule

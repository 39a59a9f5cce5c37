"""Pruning: unstructured masks, structured channel/head removal, N:M, criteria, schedules and
sparse execution.

The package object is also callable: importing `torchshrink.prune.<module>` makes Python bind
the package to the attribute `torchshrink.prune`, which would otherwise hide the `ts.prune(...)`
verb. Calling the package forwards to `torchshrink.api.prune`, so both `ts.prune(model, cfg)`
and `import torchshrink.prune.mask` work whatever the import order.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable
from typing import Any

from torch import nn


class _CallablePackage(types.ModuleType):
    def __call__(self, model: nn.Module, config: Any, example: Any = None,
                 calibration: Iterable[Any] | None = None, **kw: Any) -> nn.Module:
        from torchshrink.api import prune

        return prune(model, config, example=example, calibration=calibration, **kw)


sys.modules[__name__].__class__ = _CallablePackage

from torchshrink.prune.magnitude import MagnitudePruning, prune_unstructured  # noqa: E402
from torchshrink.prune.mask import PruningMask, mask_of, remove_masks, set_mask, sparsity_of  # noqa: E402

__all__ = ["MagnitudePruning", "PruningMask", "mask_of", "prune_unstructured", "remove_masks", "set_mask",
           "sparsity_of"]

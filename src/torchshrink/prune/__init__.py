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

from torchshrink.prune.attention import PrunedMultiheadAttention  # noqa: E402
from torchshrink.prune.channel import ChannelPruning, count_macs, prune_channels  # noqa: E402
from torchshrink.prune.criteria import CRITERIA, weight_scores  # noqa: E402
from torchshrink.prune.magnitude import MagnitudePruning, prune_unstructured  # noqa: E402
from torchshrink.prune.mask import PruningMask, mask_of, remove_masks, set_mask, sparsity_of  # noqa: E402
from torchshrink.prune.nm import NMPruning, accelerate_semi_structured, is_nm  # noqa: E402
from torchshrink.prune.regularization import SparsityRegularization  # noqa: E402
from torchshrink.prune.schedules import GradualPruning, iterative_pruning, polynomial_sparsity  # noqa: E402
from torchshrink.prune.sparse import SparseExecution, SparseLinear  # noqa: E402

__all__ = ["CRITERIA", "ChannelPruning", "GradualPruning", "MagnitudePruning", "NMPruning", "PrunedMultiheadAttention",
           "PruningMask", "SparseExecution", "SparseLinear", "SparsityRegularization", "accelerate_semi_structured",
           "count_macs", "is_nm", "iterative_pruning", "mask_of", "polynomial_sparsity", "prune_channels",
           "prune_unstructured", "remove_masks", "set_mask", "sparsity_of", "weight_scores"]

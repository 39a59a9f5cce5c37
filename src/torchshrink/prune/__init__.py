"""Pruning: unstructured masks, structured channel/head removal, N:M, criteria, schedules and
sparse execution.
"""

from __future__ import annotations

from torchshrink.prune.attention import PrunedMultiheadAttention
from torchshrink.prune.channel import ChannelPruning, count_macs, prune_channels
from torchshrink.prune.criteria import CRITERIA, weight_scores
from torchshrink.prune.heads import HeadPruning, prune_heads_and_mlp
from torchshrink.prune.magnitude import MagnitudePruning, prune_unstructured
from torchshrink.prune.mask import PruningMask, mask_of, remove_masks, set_mask, sparsity_of
from torchshrink.prune.nm import NMPruning, accelerate_semi_structured, is_nm
from torchshrink.prune.regularization import SparsityRegularization
from torchshrink.prune.schedules import GradualPruning, iterative_pruning, polynomial_sparsity
from torchshrink.prune.sparse import SparseExecution, SparseLinear

__all__ = ["CRITERIA", "ChannelPruning", "GradualPruning", "HeadPruning", "MagnitudePruning", "NMPruning", "PrunedMultiheadAttention",
           "PruningMask", "SparseExecution", "SparseLinear", "SparsityRegularization", "accelerate_semi_structured",
           "count_macs", "is_nm", "iterative_pruning", "mask_of", "polynomial_sparsity", "prune_channels", "prune_heads_and_mlp",
           "prune_unstructured", "remove_masks", "set_mask", "sparsity_of", "weight_scores"]

# `ts.prune(model, config)`: this subpackage is also the verb (see torchshrink._verb_module).
from torchshrink._verb_module import make_callable  # noqa: E402
from torchshrink.api import prune as _prune  # noqa: E402

make_callable(__name__, _prune)

"""The only code that walks or edits a model: layer selection, module swaps, parametrizations."""

from torchshrink.nn import coverage, kinds, params
from torchshrink.nn.batchnorm import recalibrate_batchnorm
from torchshrink.nn.select import (
    DEFAULT_TYPES,
    check_per_layer_patterns,
    matches,
    resolve_per_layer,
    select_layers,
)
from torchshrink.nn.surgery import get_module, parent_of, set_module

__all__ = [
    "DEFAULT_TYPES",
    "check_per_layer_patterns",
    "coverage",
    "kinds",
    "get_module",
    "matches",
    "params",
    "parent_of",
    "recalibrate_batchnorm",
    "resolve_per_layer",
    "select_layers",
    "set_module",
]

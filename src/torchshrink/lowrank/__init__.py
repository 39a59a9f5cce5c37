"""Low-rank factorization: truncated SVD of Linear and Conv2d layers, ranks chosen under a budget."""

from torchshrink.lowrank.factorization import (
    SvdFactorization,
    chosen_ranks,
    count_params,
    layer_macs,
)
from torchshrink.lowrank.rank import Candidate, Selection, select_ranks, spectral_loss
from torchshrink.lowrank.svd import (
    FactorizedConv2d,
    FactorizedLinear,
    LayerSpectrum,
    factorize_layer,
    spectrum,
    truncated_factors,
)

__all__ = [
    "Candidate",
    "FactorizedConv2d",
    "FactorizedLinear",
    "LayerSpectrum",
    "Selection",
    "SvdFactorization",
    "chosen_ranks",
    "count_params",
    "factorize_layer",
    "layer_macs",
    "select_ranks",
    "spectral_loss",
    "spectrum",
    "truncated_factors",
]

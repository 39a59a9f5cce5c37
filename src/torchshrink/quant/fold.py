"""BatchNorm folding: `bn(conv(x))` becomes one conv with rescaled weights and a bias, so the
quantizer sees the weights that will really run (Jacob et al. 2018, section 3.2).

Pairs are found on the fx graph (a Conv/Linear whose only user is a BatchNorm), never by
name guessing; a model fx cannot trace is returned unchanged with `folded == []`, and a
warning says why.
"""

from __future__ import annotations

import torch
from torch import nn

from torchshrink.nn import params, set_module
from torchshrink.nn.fxtrace import consumer_pairs

__all__ = ["fold_batchnorm"]

_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Linear, nn.BatchNorm1d))


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every eligible BatchNorm into the preceding layer in place; returns the BN names.

    Layers carrying a codebook or a fake quantizer are left alone (rescaling rows would break
    their shared values or grids); a pruning mask commutes with the per-row rescale.
    """
    folded = []
    for layer_name, bn_name in consumer_pairs(model, _PAIRS, purpose="BatchNorm folding"):
        layer = model.get_submodule(layer_name)
        bn = model.get_submodule(bn_name)
        assert isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d))  # _pairs only yields these
        chain = params.chain(layer)
        if any(hasattr(p, "codebook") or type(p).__name__ == "FakeQuant" for p in chain):
            continue
        if bn.running_mean is None or bn.running_var is None:
            continue
        mean: torch.Tensor = bn.running_mean
        std = (bn.running_var + bn.eps).sqrt()
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        raw = params.original(layer)
        raw.mul_(factor.reshape(-1, *([1] * (raw.dim() - 1))).to(raw.dtype))
        old_bias = layer.bias if isinstance(layer.bias, torch.Tensor) else torch.zeros_like(std)
        new_bias = (old_bias - mean) * factor + beta
        layer.bias = nn.Parameter(new_bias.detach().clone())
        set_module(model, bn_name, nn.Identity())
        folded.append(bn_name)
    return folded

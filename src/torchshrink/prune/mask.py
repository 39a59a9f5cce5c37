"""The pruning mask: a parametrization `weight = original * mask` that keeps pruned entries at
exactly zero through fine-tuning, `state_dict`, saving and later techniques.

The mask is a bool buffer, so it travels in the state_dict and costs one byte per entry before
entropy coding. It always sits first in the parametrization chain (mask -> codebook -> fake
quant): clustering and quantization then see the masked weight, and pruned entries stay zero
whatever the later stages learn, because gradients into masked entries of `original` are
multiplied by zero and the forward multiplies them by zero again.
"""

from __future__ import annotations

import torch
from torch import nn

from torchshrink.codec.structure import register_parametrization
from torchshrink.nn import params

__all__ = ["PruningMask", "mask_of", "set_mask", "remove_masks", "sparsity_of", "pruned_layers", "weight_of"]


def weight_of(module: nn.Module, tensor_name: str = "weight") -> torch.Tensor:
    """`module.<tensor_name>` as a Tensor (the masked value when a mask is attached)."""
    w = getattr(module, tensor_name)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.{tensor_name} is not a tensor")
    return w


class PruningMask(nn.Module):
    """`forward(w) = w * mask`; `mask` is a bool buffer of w's shape (True = kept)."""

    # Measurement convention: how the layer really runs (a mask alone saves nothing at runtime).
    execution = "masked only"
    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # where() reads the bool mask directly (no float copy of the mask per forward); its
        # gradient to `x` is zero at pruned entries, like a multiplication by the mask.
        return torch.where(self.mask, x, x.new_zeros(()))

    def canonical_original(self, original: torch.Tensor) -> torch.Tensor:
        # Storing zeros at pruned entries changes nothing the chain computes but lets the
        # artifact code them as gaps. masked_fill writes +0.0; original*mask would leave -0.0
        # for negative weights, whose bit pattern is not zero to a sparse coder.
        return original.masked_fill(~self.mask, 0.0)

    def extra_repr(self) -> str:
        kept = int(self.mask.sum().item())
        return f"shape={tuple(self.mask.shape)}, sparsity={1 - kept / max(1, self.mask.numel()):.4f}"


register_parametrization(
    PruningMask,
    to_spec=lambda p: {"shape": list(p.mask.shape)},
    from_spec=lambda s: PruningMask(torch.ones(s["shape"], dtype=torch.bool)),
    name="PruningMask",
)


def mask_of(module: nn.Module, tensor_name: str = "weight") -> torch.Tensor | None:
    """The bool keep-mask on `module.<tensor_name>`, or None when it is not pruned."""
    p = params.find(module, PruningMask, tensor_name)
    return None if p is None else p.mask


def set_mask(module: nn.Module, mask: torch.Tensor, tensor_name: str = "weight") -> PruningMask:
    """Attach (or update in place) the pruning mask on `module.<tensor_name>`.

    An existing mask is overwritten in place, so optimizers, hooks and later parametrizations
    keep working. A new mask is put first in the chain even when a codebook or fake quantizer
    is already attached, so the documented order mask -> codebook -> fake quant holds.
    """
    existing = params.find(module, PruningMask, tensor_name)
    mask = mask.to(device=params.original(module, tensor_name).device, dtype=torch.bool)
    if existing is not None:
        existing.mask.copy_(mask)
        return existing
    p = PruningMask(mask)
    later = params.chain(module, tensor_name)
    if later:
        params.remove(module, None, tensor_name)  # keeps the raw tensor
    params.add(module, p, tensor_name)
    for q in later:
        params.add(module, q, tensor_name)
    # The raw tensor holds zeros where masked, so materializing or reading `original` agrees
    # with what the model computes (and sparse formats see real zeros).
    with torch.no_grad():
        raw = params.original(module, tensor_name)
        raw.masked_fill_(~p.mask, 0.0)  # +0.0, not the -0.0 a multiplication leaves
    return p


def remove_masks(model: nn.Module, *, bake: bool = True) -> nn.Module:
    """Drop every PruningMask; with `bake` the zeros are written into the raw tensors first."""
    for m in model.modules():
        for tensor_name in list(getattr(m, "parametrizations", {}).keys()) if params.is_parametrized(m) else []:
            p = params.find(m, PruningMask, tensor_name)
            if p is None:
                continue
            if bake:
                with torch.no_grad():
                    raw = params.original(m, tensor_name)
                    raw.masked_fill_(~p.mask, 0.0)
            params.remove(m, PruningMask, tensor_name)
    return model


def pruned_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module carrying a PruningMask on its weight."""
    return [(n, m) for n, m in model.named_modules() if params.has(m, PruningMask)]


def sparsity_of(model_or_module: nn.Module, *, only_pruned: bool = True) -> float:
    """Fraction of exact zeros in the (effective) weights of the pruned layers (or of every
    Linear/Conv weight when `only_pruned` is False)."""
    from torchshrink.nn import DEFAULT_TYPES

    mods = [m for m in model_or_module.modules()
            if (params.has(m, PruningMask) if only_pruned else isinstance(m, DEFAULT_TYPES))]
    if not mods and isinstance(model_or_module, DEFAULT_TYPES):
        mods = [model_or_module]
    zeros = total = 0
    with torch.no_grad():
        for m in mods:
            w = weight_of(m)
            zeros += int((w == 0).sum().item())
            total += w.numel()
    return zeros / max(1, total)

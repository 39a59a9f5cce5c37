"""KMeansSharing: Deep Compression's trained quantization by weight sharing.

Each selected layer's nonzero weights are clustered into 2**bits shared values; the layer
then computes with `codebook[indices]` (a `Codebook` parametrization), so fine-tuning trains
the centroids. A pruning mask already on the layer is folded into the codebook's reserved
zero index: the zeros stay exact, and the artifact stores the positions once instead of
twice (mask and indices).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch
from torch import nn

from torchshrink.cluster.codebook import Codebook
from torchshrink.cluster.kmeans import kmeans_1d
from torchshrink.config import Config, check, check_range
from torchshrink.errors import UnsupportedModelError
from torchshrink.nn import check_per_layer_patterns, params, resolve_per_layer, select_layers
from torchshrink.nn.kinds import tied_groups
from torchshrink.registry import Context, register

__all__ = ["KMeansSharing", "apply_kmeans_sharing", "share_weights"]


def share_weights(module: nn.Module, *, bits: int, init: Literal["linear", "density", "random"] = "linear",
                  algorithm: Literal["lloyd", "optimal"] = "lloyd", max_iter: int = 100, seed: int = 0,
                  name: str = "", tensor: str = "weight") -> Codebook:
    """Cluster `module.<tensor>`'s nonzeros into 2**bits values and attach a Codebook."""
    chain = params.chain(module, tensor)
    foreign = [type(p).__name__ for p in chain if not _is_mask(p) and not isinstance(p, Codebook)]
    if foreign:
        raise UnsupportedModelError(
            f"layer {name!r} already carries {foreign}; apply KMeansSharing before quantization "
            "(the chain order is mask -> codebook -> fake quant)"
        )
    with torch.no_grad():
        w = _tensor(module, tensor).detach().clone()
    if chain:
        params.remove(module, None, tensor)
        with torch.no_grad():
            params.original(module, tensor).copy_(w)
    flat = w.flatten().double().cpu().numpy()
    nz = flat != 0
    centroids, assign = kmeans_1d(flat[nz], 2**bits, algorithm=algorithm, init=init, max_iter=max_iter,
                                  seed=seed)
    k = max(1, centroids.size)
    if centroids.size == 0:  # an all-zero layer: one unused centroid keeps shapes valid
        centroids = np.zeros(1)
    idx = np.full(flat.size, k, dtype=np.int64)
    idx[nz] = assign
    p = Codebook(torch.from_numpy(centroids).float(), torch.from_numpy(idx).reshape(w.shape))
    params.add(module, p.to(w.device), tensor)
    return p


def _tensor(module: nn.Module, tensor: str) -> torch.Tensor:
    w = getattr(module, tensor)
    assert isinstance(w, torch.Tensor)
    return w


def _is_mask(p: nn.Module) -> bool:
    # Pruning masks are folded into the codebook's zero slot; matched by name so the cluster
    # family does not depend on the prune family's import order.
    return type(p).__name__ == "PruningMask"


@dataclasses.dataclass(frozen=True, kw_only=True)
class KMeansSharing(Config):
    """Share weights by 1-D k-means per layer (Han et al., Deep Compression, section 3).

    bits: index width; each layer gets at most 2**bits shared values (pruned zeros are extra
        and exact). per_layer: layer pattern -> bits, first match wins (e.g. {"conv*": 8}).
    bias_bits: also share each selected layer's bias through its own codebook of 2**bias_bits
        values (None: biases stay fp32). A LeNet's biases are 400-800 fp32 values, 1.6-3 KB:
        beyond 40x compression they are the largest remaining part of the file.
    init: "linear" (the paper's best), "density" or "random".
    algorithm: "lloyd" iterations, or "optimal" for the exact minimum-error 1-D clustering.
    """

    bits: int = 5
    init: Literal["linear", "density", "random"] = "linear"
    algorithm: Literal["lloyd", "optimal"] = "lloyd"
    per_layer: dict[str, int] | None = None
    bias_bits: int | None = None
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    max_iter: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("bits", self.bits, 1, 16)
        for pattern, b in (self.per_layer or {}).items():
            check(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 16,
                  f"per_layer[{pattern!r}] must be bits in [1, 16], got {b!r}")
        check_range("max_iter", self.max_iter, 1)
        if self.bias_bits is not None:
            check_range("bias_bits", self.bias_bits, 1, 16)


def apply_kmeans_sharing(model: nn.Module, config: KMeansSharing, ctx: Context) -> nn.Module:
    check_per_layer_patterns(model, config.per_layer, CLUSTER_TYPES)
    layers = select_layers(model, types=CLUSTER_TYPES, targets=config.targets, ignore=config.ignore)
    # A tied weight (LM head and token embedding) gets one codebook, shared by its layers.
    followers = {g[0]: g[1:] for g in tied_groups(layers)}
    skip = {n for g in followers.values() for n in g}
    by_name = dict(layers)
    for name, module in layers:
        if name in skip:
            continue
        bits = resolve_per_layer(name, config.per_layer, config.bits, layers)
        before = {id(p) for p in params.chain(module)}
        share_weights(module, bits=bits, init=config.init, algorithm=config.algorithm,
                      max_iter=config.max_iter, seed=config.seed, name=name)
        added = [p for p in params.chain(module) if id(p) not in before]
        for other in followers.get(name, []):
            for p in added:
                params.add(by_name[other], p)
        bias = getattr(module, "bias", None)
        if config.bias_bits is not None and isinstance(bias, torch.Tensor) and bias.numel() > 2**config.bias_bits:
            share_weights(module, bits=config.bias_bits, init=config.init, algorithm=config.algorithm,
                          max_iter=config.max_iter, seed=config.seed, name=name, tensor="bias")
    return model


CLUSTER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)


register(family="cluster", handler=apply_kmeans_sharing)(KMeansSharing)

"""ProductQuantization: k-means over weight sub-vectors instead of scalars.

Gong et al. (2014) and Stock et al. ("And the Bit Goes Down", ICLR 2020) share *vectors* of
`dim` consecutive weights of a row: one `bits`-bit index then stands for `dim` weights, so
the index cost is bits/dim per weight, and the codebook captures how neighbouring weights
co-vary, which scalar sharing at the same bits per weight cannot. The layer computes with a
`ProductCodebook` parametrization, so fine-tuning trains the centroids as KMeansSharing does.
A pruning mask on the layer is respected: k-means measures distance on the kept
coordinates only, the mask is kept, and the pruned weights stay exact zeros.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from torchshrink.cluster.product_codebook import ProductCodebook
from torchshrink.config import Config, check, check_range
from torchshrink.errors import ConfigError, UnsupportedModelError
from torchshrink.nn import (
    check_per_layer_patterns,
    coverage,
    params,
    resolve_per_layer,
    select_layers,
)
from torchshrink.nn.kinds import tied_groups
from torchshrink.registry import Context, register

__all__ = ["ProductQuantization", "masked_kmeans", "product_quantize"]


def masked_kmeans(x: torch.Tensor, m: torch.Tensor, k: int, *, iters: int = 25,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of the rows of `x` (n, d) where only coordinates with m (n, d) = 1 count.

    Distance of row i to centroid c: sum_j m_ij (x_ij - c_j)^2; a centroid coordinate is the
    mean of the kept values assigned to it. Returns (centroids (k', d), assignment (n,)),
    k' = min(k, n). Rows with no kept coordinate get assignment 0 (the caller masks them).
    """
    x = x.double()
    m = m.double()
    n = x.shape[0]
    k = max(1, min(k, n))
    g = torch.Generator().manual_seed(seed)
    # Forgy init from the most complete rows: a centroid seeded from a mostly pruned vector
    # would carry zeros that are not weights.
    weight = m.sum(1) + 1e-3
    first = torch.multinomial(weight, k, replacement=False, generator=g)
    c = torch.where(m[first] > 0, x[first], (x * m).sum(0) / m.sum(0).clamp_min(1))
    mx = x * m
    xx = (mx * x).sum(1, keepdim=True)
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        # ||m*(x - c)||^2 = sum m x^2 - 2 (m x) c + m c^2, for all pairs at once, in chunks
        new = torch.empty(n, dtype=torch.long)
        for s in range(0, n, 8192):
            e = slice(s, s + 8192)
            d = xx[e] - 2 * mx[e] @ c.T + m[e] @ (c * c).T
            new[e] = d.argmin(1)
        if torch.equal(new, assign) and _ > 0:
            break
        assign = new
        num = torch.zeros_like(c).index_add_(0, assign, mx)
        den = torch.zeros_like(c).index_add_(0, assign, m)
        c = torch.where(den > 0, num / den.clamp_min(1e-12), c)
    return c.float(), assign


def product_quantize(module: nn.Module, *, dim: int, bits: int, iters: int = 25, seed: int = 0,
                     name: str = "") -> ProductCodebook:
    """Cut `module.weight`'s rows into `dim`-element sub-vectors, cluster them into 2**bits
    vectors, and attach a ProductCodebook (folding in a pruning mask already there)."""
    chain = params.chain(module, "weight")
    foreign = [type(p).__name__ for p in chain if type(p).__name__ != "PruningMask"]
    if foreign:
        raise UnsupportedModelError(
            f"layer {name!r} already carries {foreign}; ProductQuantization replaces the weight's values, so "
            "apply it to a float (optionally pruned) layer, before any other sharing or quantization"
        )
    with torch.no_grad():
        w = _weight(module).detach().clone()
    rows = w.shape[0]
    cols = w[0].numel() if rows else 0
    if cols % dim:
        raise ConfigError(
            f"ProductQuantization(dim={dim}) cannot cut layer {name!r}: its weight rows have {cols} elements "
            f"(weight shape {list(w.shape)}), not a multiple of {dim}; choose a dim dividing {cols} or ignore the layer"
        )
    pruned = bool(chain)
    keep = (w != 0) if pruned else torch.ones_like(w, dtype=torch.bool)
    x = w.reshape(-1, dim).cpu()
    mk = keep.reshape(-1, dim).cpu()
    alive = mk.any(1)
    c, a = masked_kmeans(x[alive], mk[alive].float(), 2**bits, iters=iters, seed=seed)
    idx = torch.full((x.shape[0],), c.shape[0], dtype=torch.long)
    idx[alive] = a
    if chain:
        params.remove(module, None, "weight")
    p = ProductCodebook(c, idx.reshape(rows, cols // dim), tuple(w.shape), keep if pruned else None)
    params.add(module, p.to(w.device), "weight")
    return p


def _weight(module: nn.Module) -> torch.Tensor:
    w = module.weight
    assert isinstance(w, torch.Tensor)
    return w


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProductQuantization(Config):
    """Share weight sub-vectors by k-means per layer (product quantization).

    dim: sub-vector length, consecutive weights of a row (a Linear's output unit; a conv's
        output channel over in_channels x kernel). It must divide the row length.
    bits: index width; each layer gets a codebook of 2**bits vectors. Index cost is
        bits/dim per weight (dim=4, bits=8: 2 bits per weight) plus 2**bits * dim fp32 values.
    per_layer: layer pattern -> [dim, bits], first match wins.
    iters: Lloyd iterations. seed: the codebook initialization.
    """

    dim: int = 4
    bits: int = 8
    per_layer: dict[str, tuple[int, int]] | None = None
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    iters: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("dim", self.dim, 1, 64)
        check_range("bits", self.bits, 1, 12)
        check_range("iters", self.iters, 1)
        for pattern, pair in (self.per_layer or {}).items():
            ok = (isinstance(pair, (list, tuple)) and len(pair) == 2
                  and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                  and 1 <= pair[0] <= 64 and 1 <= pair[1] <= 12)
            check(ok, f"per_layer[{pattern!r}] must be [dim, bits] with dim in [1, 64] and bits in [1, 12], "
                      f"got {pair!r}")


PQ_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)


def apply_product_quantization(model: nn.Module, config: ProductQuantization, ctx: Context) -> nn.Module:
    check_per_layer_patterns(model, config.per_layer, PQ_TYPES)
    layers = select_layers(model, types=PQ_TYPES, targets=config.targets, ignore=config.ignore)
    tied = [n for g in tied_groups(layers) for n in g]
    if tied:
        raise UnsupportedModelError(
            f"ProductQuantization does not share tied weights yet (layers {tied} share one weight); add them to "
            "ignore=, or use KMeansSharing, which gives tied layers one codebook"
        )
    # Check every layer before clustering any: a bad dim is a config error, not a half-done model.
    plan = []
    named = set() if config.targets is None and not config.per_layer else {
        n for n, _ in select_layers(model, types=PQ_TYPES, targets=[*(config.targets or ()), *(config.per_layer or {})],
                                    ignore=config.ignore)}
    for name, module in layers:
        dim, bits = resolve_per_layer(name, config.per_layer, (config.dim, config.bits), layers)
        weight = _weight(module)
        cols = weight[0].numel() if weight.shape[0] else 0
        if cols % dim and name not in named:
            # Selected by default, not by name (a 3-channel stem's 27-element rows): leave it
            # float, and say so in the coverage record (the user sees the warning).
            coverage.skip(model, name, f"its weight rows have {cols} elements, not a multiple of dim={dim}")
            continue
        if cols % dim:
            raise ConfigError(
                f"ProductQuantization(dim={dim}) cannot cut layer {name!r}: its weight rows have {cols} elements, "
                f"not a multiple of {dim}; choose a dim dividing {cols}, set per_layer for it, or ignore it"
            )
        plan.append((name, module, dim, bits))
    for name, module, dim, bits in plan:
        product_quantize(module, dim=dim, bits=bits, iters=config.iters, seed=config.seed, name=name)
    return model


register(family="cluster", handler=apply_product_quantization)(ProductQuantization)

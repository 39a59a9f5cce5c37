"""`NMPruning`: semi-structured N:M sparsity (keep n of every m consecutive weights of a row).

2:4 is what NVIDIA Ampere+ sparse tensor cores execute. On CPU the pattern is kept as a
`PruningMask` (it saves nothing at run time there); on CUDA with fp16/bf16 weights,
`accelerate_semi_structured` (run by the handler when the model is on a GPU) swaps the weight
for `torch.sparse.to_sparse_semi_structured`, which runs on the sparse kernels.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from torchshrink.config import Config, check, check_choice
from torchshrink.errors import ConfigError
from torchshrink.nn import params, select_layers
from torchshrink.nn.calib import InputStats, calibrate_sequentially
from torchshrink.prune.criteria import (
    CRITERIA,
    INPUT_CRITERIA,
    Criterion,
    require_data,
    scores_from_stats,
    weight_scores,
)
from torchshrink.prune.mask import PruningMask, mask_of, set_mask, weight_of
from torchshrink.prune.obs import obs_prune
from torchshrink.registry import Context, register

__all__ = ["NMPruning", "nm_mask", "accelerate_semi_structured", "is_nm"]

def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask keeping the n highest scores of every m consecutive entries along the last
    dim of the 2-D view (rows, columns)."""
    rows = scores.shape[0]
    s = scores.detach().float().reshape(rows, -1, m)
    keep = torch.zeros_like(s, dtype=torch.bool)
    keep.scatter_(2, torch.topk(s, n, dim=2).indices, True)
    return keep.reshape(scores.shape)

def is_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether at most n of every m consecutive entries of each row are non-zero."""
    w = weight.detach().reshape(weight.shape[0], -1)
    if w.shape[1] % m:
        return False
    return bool(((w.reshape(w.shape[0], -1, m) != 0).sum(2) <= n).all())

def accelerate_semi_structured(model: nn.Module) -> list[str]:
    """On CUDA: replace 2:4-masked fp16/bf16 Linear weights by semi-structured sparse tensors
    (`torch.sparse.to_sparse_semi_structured`). Returns the converted layer names; a CPU model
    or a layer the kernels do not accept is left as it is (masked)."""
    if not torch.cuda.is_available():
        return []
    from torch.sparse import to_sparse_semi_structured

    done = []
    for name, lin in model.named_modules():
        if not isinstance(lin, nn.Linear) or mask_of(lin) is None:
            continue
        w = weight_of(lin).detach()
        if not w.is_cuda or w.dtype not in (torch.float16, torch.bfloat16) or not is_nm(w, 2, 4):
            continue
        if len(params.chain(lin)) != 1:
            continue  # a codebook or quantizer follows the mask; keep the chain
        try:
            sparse = to_sparse_semi_structured(w)
        except (RuntimeError, ValueError, NotImplementedError) as e:  # shape or GPU the kernels refuse
            warnings.warn(f"{name} stays a masked dense layer: the 2:4 sparse kernel refused it "
                          f"({type(e).__name__}: {str(e)[:200]})", UserWarning, stacklevel=2)
            continue
        params.remove(lin, PruningMask)
        lin.weight = nn.Parameter(sparse, requires_grad=False)
        object.__setattr__(lin, "execution", "2:4 sparse kernel (semi-structured)")
        done.append(name)
    return done

def _apply(model: nn.Module, config: NMPruning, ctx: Context) -> nn.Module:
    require_data(config.criterion, ctx.calibration)
    layers = select_layers(model, targets=config.targets, ignore=config.ignore)
    ok = [(n, mod) for n, mod in layers if weight_of(mod)[0].numel() % config.m == 0
          and getattr(mod, "groups", 1) == 1]
    if not ok:
        raise ConfigError(
            f"NMPruning({config.n}:{config.m}) found no layer whose input width is a multiple of {config.m}; "
            f"layers: {[n for n, _ in layers]}"
        )
    skipped = [n for n, _ in layers if n not in {k for k, _ in ok}]
    def put(name: str, mod: nn.Module, scores: torch.Tensor) -> None:
        w = weight_of(mod)
        keep = nm_mask(scores.reshape(w.shape[0], -1), config.n, config.m).reshape(w.shape)
        old = mask_of(mod)
        set_mask(mod, keep if old is None else keep & old)

    by_name = dict(ok)

    def compress(stats: dict[str, InputStats]) -> None:  # one block (or layer group) at a time
        for name, s in stats.items():
            mod = by_name[name]
            w = weight_of(mod).detach()
            if config.criterion != "obs":
                put(name, mod, scores_from_stats(config.criterion, w.float(), s))
                continue
            assert s.hessian is not None
            new_w, keep = obs_prune(w.reshape(w.shape[0], -1), s.hessian / s.rows, 0.0, nm=(config.n, config.m))
            with torch.no_grad():
                params.original(mod).copy_(new_w.reshape(w.shape))
            set_mask(mod, keep.reshape(w.shape))

    if config.criterion in INPUT_CRITERIA:
        assert ctx.calibration is not None
        calibrate_sequentially(model, ok, ctx.calibration, compress, limit=config.calibration_batches,
                               hessian=config.criterion == "obs", blocks=config.blocks)
    else:
        scores = weight_scores(model, ok, config.criterion, ctx.calibration, limit=config.calibration_batches)
        for name, mod in ok:
            put(name, mod, scores[name])
    object.__setattr__(model, "torchshrink_nm_skipped", skipped)
    if config.accelerate:
        accelerate_semi_structured(model)
    return model

@register(family="prune", handler=_apply, name="nm_pruning")
@dataclasses.dataclass(frozen=True, kw_only=True)
class NMPruning(Config):
    """Semi-structured sparsity: keep n of every m consecutive input weights of each row.

    Layers whose input width is not a multiple of m (and grouped convolutions) are skipped and
    listed in `model.torchshrink_nm_skipped`. accelerate: on CUDA with fp16/bf16 weights, run
    2:4 layers on the semi-structured sparse kernels. blocks: module names of the model's
    blocks for the input-driven criteria (obs = SparseGPT 2:4, wanda, ...), which prune block
    by block on the outputs of the pruned blocks before; None finds them.
    """

    n: int = 2
    m: int = 4
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    criterion: Criterion = "l1"
    calibration_batches: int = 8
    accelerate: bool = True
    blocks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.m >= 2, f"m must be >= 2, got {self.m}")
        check(1 <= self.n < self.m, f"n must be in [1, m) = [1, {self.m}), got {self.n}")
        check_choice("criterion", self.criterion, CRITERIA)
        check(self.calibration_batches >= 1, f"calibration_batches must be >= 1, got {self.calibration_batches}")

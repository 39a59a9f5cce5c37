"""Layer-wise Optimal Brain Surgeon (Hassibi & Stork 1993) in the column-blocked form of
SparseGPT (Frantar & Alistarh 2023): choose the weights to remove with the OBS saliency
w^2 / [H^-1]_jj and update the surviving weights of the row to compensate, where
H = X^T X over calibration inputs of the layer.

Exact sparsity: each column block removes its share of the layer's target count (cumulative
rounding), so the layer ends at exactly round(sparsity * numel) zeros.
"""

from __future__ import annotations

import torch

from torchshrink.nn.obs import inverse_hessian_factor, obs_sweep

__all__ = ["obs_prune"]


def obs_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, *,
              keep: torch.Tensor | None = None, blocksize: int = 128, damping: float = 0.01,
              nm: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(new weight, keep mask) for a 2-D view `weight` (rows, columns) given the input Hessian
    (columns, columns). `keep`: entries already pruned (False) stay pruned. `nm=(n, m)` keeps
    n of every m consecutive columns of a row instead of an unstructured count."""
    w = weight.detach().float().clone()
    rows, cols = w.shape
    hinv = inverse_hessian_factor(hessian, w, damping)
    prune = torch.zeros_like(w, dtype=torch.bool)
    forced = torch.zeros_like(prune) if keep is None else ~keep.reshape(rows, cols).to(torch.bool)
    total = round(sparsity * w.numel())

    def choose_block(i1: int, i2: int, w1: torch.Tensor, hinv1: torch.Tensor) -> None:
        """Unstructured: the block removes its share of the layer's count, least salient first."""
        if nm is not None:
            return
        sal = w1.pow(2) / hinv1.diagonal().reshape(1, -1).pow(2)
        sal[forced[:, i1:i2]] = -1.0
        k = round(total * i2 / cols) - round(total * i1 / cols)
        if k > 0:
            chosen = torch.argsort(sal.reshape(-1), stable=True)[:k]
            block = torch.zeros(sal.numel(), dtype=torch.bool, device=w.device)
            block[chosen] = True
            prune[:, i1:i2] = block.reshape(sal.shape)

    def fix(col: int, i: int, w1: torch.Tensor, hinv1: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        if nm is not None and i % nm[1] == 0:
            n, m = nm
            sal = w1[:, i:i + m].pow(2) / hinv1.diagonal()[i:i + m].reshape(1, -1).pow(2)
            prune.scatter_(1, col + torch.topk(sal, m - n, dim=1, largest=False)[1], True)
        q = w1[:, i].clone()
        q[prune[:, col]] = 0.0
        return q

    w = obs_sweep(w, hinv, fix, blocksize=blocksize, before_block=choose_block)
    w[prune] = 0.0
    return w.to(weight.dtype), ~prune

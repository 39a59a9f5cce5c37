"""Layer-wise Optimal Brain Surgeon (Hassibi & Stork 1993) in the column-blocked form of
SparseGPT (Frantar & Alistarh 2023): choose the weights to remove with the OBS saliency
w^2 / [H^-1]_jj and update the surviving weights of the row to compensate, where
H = X^T X over calibration inputs of the layer.

Exact sparsity: each column block removes its share of the layer's target count (cumulative
rounding), so the layer ends at exactly round(sparsity * numel) zeros.
"""

from __future__ import annotations

import torch

__all__ = ["obs_prune"]


def obs_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, *,
              keep: torch.Tensor | None = None, blocksize: int = 128, damping: float = 0.01,
              nm: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(new weight, keep mask) for a 2-D view `weight` (rows, columns) given the input Hessian
    (columns, columns). `keep`: entries already pruned (False) stay pruned. `nm=(n, m)` keeps
    n of every m consecutive columns of a row instead of an unstructured count."""
    w = weight.detach().float().clone()
    rows, cols = w.shape
    h = hessian.detach().float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damping * h.diagonal().mean().clamp_min(1e-8) * torch.eye(cols, device=h.device)
    # Upper Cholesky factor of H^-1: row i holds the OBS update of the columns after i when
    # column i is fixed (the SparseGPT trick that makes sequential updates cheap).
    # H^-1 = L^-T L^-1 through a triangular solve: torch.cholesky_inverse is orders of magnitude
    # slower on some CPU builds.
    l_inv = torch.linalg.solve_triangular(torch.linalg.cholesky(h), torch.eye(cols, device=h.device), upper=False)
    hinv = torch.linalg.cholesky(l_inv.T @ l_inv, upper=True)
    prune = torch.zeros_like(w, dtype=torch.bool)
    forced = torch.zeros_like(prune) if keep is None else ~keep.reshape(rows, cols).to(torch.bool)
    total = round(sparsity * w.numel())
    done_cols = 0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        if nm is None:
            sal = w1.pow(2) / hinv1.diagonal().reshape(1, -1).pow(2)
            sal[forced[:, i1:i2]] = -1.0
            k = round(total * (done_cols + count) / cols) - round(total * done_cols / cols)
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
            if k > 0:
                mask1.view(-1)[torch.argsort(sal.reshape(-1), stable=True)[:k]] = True
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(count):
            col = w1[:, i]
            d = hinv1[i, i]
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                sal = w1[:, i:i + m].pow(2) / hinv1.diagonal()[i:i + m].reshape(1, -1).pow(2)
                mask1.scatter_(1, i + torch.topk(sal, m - n, dim=1, largest=False)[1], True)
            q = col.clone()
            q[mask1[:, i]] = 0.0
            q1[:, i] = q
            e = (col - q) / d
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        prune[:, i1:i2] = mask1
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        done_cols += count
    w[prune] = 0.0
    return w.to(weight.dtype), ~prune

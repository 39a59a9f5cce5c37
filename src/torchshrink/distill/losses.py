"""Distillation losses: soft targets with temperature, hard/soft mix, feature hints, attention maps.

Soft targets follow Hinton et al. (2015), "Distilling the Knowledge in a Neural Network":
both logit vectors are divided by a temperature T, and the KL divergence of the softened
distributions is multiplied by T**2 so its gradient keeps the same magnitude as T changes
(the gradient of the soft term scales as 1/T**2 otherwise). Hints follow FitNets (Romero et
al., 2015): a small learned adapter maps the student's feature to the teacher's width before
an MSE. Attention transfer compares attention maps: spatial maps for CNN features (Zagoruyko
& Komodakis, 2017) and per-row attention distributions for transformer self-attention
(MiniLM, Wang et al., 2020), averaged over heads so teacher and student head counts may differ.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from torchshrink.errors import ConfigError

__all__ = [
    "kd_loss",
    "soft_hard_loss",
    "hint_loss",
    "make_adapter",
    "spatial_attention_map",
    "spatial_attention_loss",
    "attention_probs",
    "attention_map_loss",
]


def _check_temperature(temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ConfigError(
            f"temperature must be a positive number (Hinton et al. use 1 to 20), got {temperature!r}; "
            "pass e.g. temperature=4.0"
        )


def _check_same_shape(student: torch.Tensor, teacher: torch.Tensor, what: str = "outputs") -> None:
    if student.shape != teacher.shape:
        raise ConfigError(
            f"teacher and student {what} have different shapes: student {tuple(student.shape)}, "
            f"teacher {tuple(teacher.shape)}. Both models must predict the same classes (and sequence "
            "length) for the same batch; check the teacher's head and num_classes"
        )


def _flatten_classes(logits: torch.Tensor) -> torch.Tensor:
    """(N, C) stays; (N, T, C) sequence logits become (N*T, C) so every position is a sample."""
    if logits.dim() < 2:
        raise ConfigError(f"logits need a class dimension, shape (N, C) or (N, T, C); got {tuple(logits.shape)}")
    return logits.reshape(-1, logits.shape[-1])


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 4.0) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) * T**2, averaged over samples (and positions
    for (N, T, C) sequence logits). The teacher side carries no gradient."""
    _check_temperature(temperature)
    _check_same_shape(student_logits, teacher_logits)
    s = _flatten_classes(student_logits).float()
    t = _flatten_classes(teacher_logits).detach().float()
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * (temperature * temperature)


def soft_hard_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None, *,
                   temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """alpha * kd_loss + (1 - alpha) * cross-entropy on the hard labels (Hinton's weighted
    average; the T**2 inside kd_loss keeps the two terms on comparable scales)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1] (the weight of the soft-target term), got {alpha!r}")
    soft = kd_loss(student_logits, teacher_logits, temperature=temperature)
    if alpha >= 1.0:
        return soft
    if targets is None:
        raise ConfigError(f"alpha={alpha} mixes in the hard-label loss, but the batch has no labels; use alpha=1.0")
    s = _flatten_classes(student_logits)
    hard = F.cross_entropy(s.float(), targets.reshape(-1))
    return alpha * soft + (1.0 - alpha) * hard


def _channels(feature: torch.Tensor, kind: Literal["linear", "conv"]) -> int:
    return feature.shape[1] if kind == "conv" else feature.shape[-1]


def make_adapter(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> nn.Module:
    """Identity when widths match; else a learned 1x1 Conv2d for (N, C, H, W) features or a
    Linear on the last dimension for (N, ..., C) features (FitNets' regressor)."""
    if student_feature.dim() != teacher_feature.dim():
        raise ConfigError(
            f"feature hint needs tensors of the same rank: student {tuple(student_feature.shape)}, "
            f"teacher {tuple(teacher_feature.shape)}; pick layers at matching depths"
        )
    kind: Literal["linear", "conv"] = "conv" if student_feature.dim() == 4 else "linear"
    cs, ct = _channels(student_feature, kind), _channels(teacher_feature, kind)
    if kind == "conv" and student_feature.shape[2:] != teacher_feature.shape[2:]:
        raise ConfigError(
            f"feature hint needs the same spatial size: student {tuple(student_feature.shape)}, teacher "
            f"{tuple(teacher_feature.shape)}; pick layers with the same resolution"
        )
    if kind == "linear" and student_feature.shape[:-1] != teacher_feature.shape[:-1]:
        raise ConfigError(
            f"feature hint needs the same leading dimensions: student {tuple(student_feature.shape)}, teacher "
            f"{tuple(teacher_feature.shape)}"
        )
    if cs == ct:
        return nn.Identity()
    adapter: nn.Module = nn.Conv2d(cs, ct, 1, bias=False) if kind == "conv" else nn.Linear(cs, ct, bias=False)
    return adapter.to(device=student_feature.device)


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor,
              adapter: nn.Module | None = None) -> torch.Tensor:
    """MSE between the adapted student feature and the (detached) teacher feature."""
    s = adapter(student_feature) if adapter is not None else student_feature
    _check_same_shape(s, teacher_feature, "features (after the adapter)")
    return F.mse_loss(s.float(), teacher_feature.detach().float())


def spatial_attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis: mean over channels of the squared activation, flattened and
    L2-normalized per sample; independent of the channel count."""
    if feature.dim() != 4:
        raise ConfigError(f"spatial attention needs (N, C, H, W) features, got {tuple(feature.shape)}")
    return F.normalize(feature.float().pow(2).mean(1).flatten(1), dim=1)


def spatial_attention_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    s, t = spatial_attention_map(student_feature), spatial_attention_map(teacher_feature.detach())
    _check_same_shape(s, t, "attention maps")
    return (s - t).pow(2).sum(1).mean()


def attention_probs(q: torch.Tensor, k: torch.Tensor, head_dim: int, *, causal: bool = True) -> torch.Tensor:
    """Head-averaged attention distributions (N, T, T) from query/key projections (N, T, H*D)."""
    n, t, _ = q.shape
    qh = q.view(n, t, -1, head_dim).transpose(1, 2)
    kh = k.view(n, t, -1, head_dim).transpose(1, 2)
    scores = (qh.float() @ kh.float().transpose(-2, -1)) / math.sqrt(head_dim)
    if causal:
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(-1).mean(1)


def attention_map_loss(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher row || student row) of attention distributions, averaged over rows (MiniLM)."""
    _check_same_shape(student_probs, teacher_probs, "attention maps")
    eps = 1e-8
    t = teacher_probs.detach()
    kl = t * ((t + eps).log() - (student_probs + eps).log())
    return kl.sum(-1).mean()

"""Knowledge distillation: soft targets with temperature, feature hints, attention maps,
teacher output caching and student builders. `ts.Distillation` is the training stage;
`make_distill_loss` turns any fine-tuning loop into a distilling one."""

from torchshrink.distill.distillation import (
    Distillation,
    DistillLoss,
    apply_distillation,
    cache_teacher_outputs,
    distill_loss,
    make_distill_loss,
    with_teacher_cache,
)
from torchshrink.distill.losses import (
    attention_map_loss,
    attention_probs,
    hint_loss,
    kd_loss,
    make_adapter,
    soft_hard_loss,
    spatial_attention_loss,
    spatial_attention_map,
)
from torchshrink.distill.students import fewer_blocks, mlp, thin_copy

__all__ = [
    "DistillLoss",
    "Distillation",
    "apply_distillation",
    "attention_map_loss",
    "attention_probs",
    "cache_teacher_outputs",
    "distill_loss",
    "fewer_blocks",
    "hint_loss",
    "kd_loss",
    "make_adapter",
    "make_distill_loss",
    "mlp",
    "soft_hard_loss",
    "spatial_attention_loss",
    "spatial_attention_map",
    "thin_copy",
    "with_teacher_cache",
]

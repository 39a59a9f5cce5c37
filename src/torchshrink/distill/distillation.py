"""`Distillation`: a training stage whose loss is a teacher's soft targets (and optionally hints).

Three ways in, one loss object underneath (`DistillLoss`):

- on its own: `ts.apply(student, ts.Distillation(teacher=big), train=..., val=...)` trains the
  student with `train.fit` and returns it;
- as the loss of any fine-tuning loop: `loss = make_distill_loss(teacher, cfg)` then
  `fit(model, train, loss=loss, callbacks=[loss])` (the recipe's `finetune: {distill: true}`
  uses this with the uncompressed model as teacher);
- as a recipe stage (`method: distillation`), where the teacher is not data: it comes from
  the config object, else `apply(..., teacher=...)`, else a frozen copy of the incoming model.

Teacher logits are computed on the fly, or once up front and stored next to each sample
(`teacher_outputs="cached"`), which pays off for small data sets trained for many epochs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from torchshrink.batches import unwrap_batch
from torchshrink.config import Config, check, check_choice, check_range
from torchshrink.distill.losses import (
    attention_map_loss,
    attention_probs,
    hint_loss,
    make_adapter,
    soft_hard_loss,
    spatial_attention_loss,
)
from torchshrink.errors import ConfigError, DataError
from torchshrink.nn import get_module, select_layers
from torchshrink.registry import Context, register
from torchshrink.train import Callback, FitState, fit

__all__ = [
    "Distillation",
    "DistillLoss",
    "make_distill_loss",
    "distill_loss",
    "cache_teacher_outputs",
    "with_teacher_cache",
    "apply_distillation",
]


def _logits(out: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, the first item of a tuple, or `.logits` (HF)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise DataError(f"cannot find logits in a model output of type {type(out).__name__}; return a tensor")


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _check_layer(model: nn.Module, name: str, role: str, what: str) -> nn.Module:
    """The module called `name` exactly; an unknown name is a ConfigError listing the layers."""
    names = {n for n, _ in model.named_modules() if n}
    if name not in names:
        try:
            select_layers(model, types=(nn.Module,), targets=[name], what=f"{role} {what} layer")
        except ConfigError as e:
            raise ConfigError(f"{e}. Give {role} layer names exactly as model.named_modules() spells them") from e
        # A glob that matched something is still not one layer.
        raise ConfigError(
            f"{role} {what} layer {name!r} is a pattern, not a layer name of {type(model).__name__}; "
            f"name one layer exactly. Layers: {', '.join(sorted(names)[:40])}"
        )
    return get_module(model, name)


def _is_self_attention(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("q_proj", "k_proj", "head_dim"))


@contextlib.contextmanager
def _capture(model: nn.Module, features: Iterable[str], attention: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Forward hooks that record layer outputs (features, CNN attention) and query/key
    projections (transformer attention) for one forward pass; always removed afterwards so a
    trained student carries no hooks."""
    store: dict[str, Any] = {}
    handles = []

    def keep(key: str) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            store[key] = out

        return hook

    try:
        for name in features:
            handles.append(get_module(model, name).register_forward_hook(keep(f"f:{name}")))
        for name in attention:
            m = get_module(model, name)
            if _is_self_attention(m):
                handles.append(m.q_proj.register_forward_hook(keep(f"q:{name}")))  # type: ignore[union-attr]
                handles.append(m.k_proj.register_forward_hook(keep(f"k:{name}")))  # type: ignore[union-attr]
            else:
                handles.append(m.register_forward_hook(keep(f"a:{name}")))
        yield store
    finally:
        for h in handles:
            h.remove()


def _attention_of(model: nn.Module, name: str, store: dict[str, Any]) -> tuple[str, torch.Tensor]:
    m = get_module(model, name)
    if _is_self_attention(m):
        return "probs", attention_probs(store[f"q:{name}"], store[f"k:{name}"], int(m.head_dim),  # type: ignore[arg-type]
                                        causal=bool(getattr(m, "is_causal", True)))
    out = store[f"a:{name}"]
    if not (isinstance(out, torch.Tensor) and out.dim() == 4):
        raise ConfigError(
            f"attention layer {name!r} ({type(m).__name__}) is neither a self-attention module (with q_proj, "
            "k_proj and head_dim) nor a layer with (N, C, H, W) output; list it under features= instead"
        )
    return "spatial", out


class DistillLoss(Callback):
    """`(model, batch) -> loss` for `fit(loss=...)`, and a Callback that steps the hint adapters.

    Batches are (x, y) or (x, y, teacher_logits) when the teacher's outputs are cached. The
    feature adapters are created on the first batch (their widths come from real activations)
    and have their own Adam optimizer, stepped after each backward: at `on_step_end` when this
    object is also passed in `callbacks=` (then they also take fit's learning rate), else at
    the start of the next call, so `fit(loss=make_distill_loss(...))` alone still trains them.
    """

    def __init__(self, teacher: nn.Module, *, temperature: float = 4.0, alpha: float = 0.9,
                 features: Mapping[str, str] | None = None, feature_weight: float = 1.0,
                 attention: Mapping[str, str] | None = None, attention_weight: float = 1.0,
                 adapter_lr: float | None = None, student: nn.Module | None = None) -> None:
        if not isinstance(teacher, nn.Module):
            raise ConfigError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        Distillation(temperature=temperature, alpha=alpha, features=dict(features or {}) or None,
                     feature_weight=feature_weight, attention=dict(attention or {}) or None,
                     attention_weight=attention_weight)  # same validation as the config
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.features = dict(features or {})
        self.feature_weight = float(feature_weight)
        self.attention = dict(attention or {})
        self.attention_weight = float(attention_weight)
        self.adapter_lr = adapter_lr
        self._lr = adapter_lr if adapter_lr is not None else 1e-3
        self.adapters = nn.ModuleDict()
        self._adapter_opt: torch.optim.Optimizer | None = None
        self._checked: set[int] = set()
        for t_name in self.features.values():
            _check_layer(teacher, t_name, "teacher", "feature")
        for t_name in self.attention.values():
            _check_layer(teacher, t_name, "teacher", "attention")
        if student is not None:
            self.check_student(student)

    def check_student(self, student: nn.Module) -> None:
        if id(student) in self._checked:
            return
        for s_name in self.features:
            _check_layer(student, s_name, "student", "feature")
        for s_name in self.attention:
            _check_layer(student, s_name, "student", "attention")
        self._checked.add(id(student))

    # ---- adapters -------------------------------------------------------------------------
    def _adapter(self, key: str, s: torch.Tensor, t: torch.Tensor) -> nn.Module:
        if key not in self.adapters:
            self.adapters[key] = make_adapter(s, t)
            params = list(self.adapters[key].parameters())
            if params:
                if self._adapter_opt is None:
                    self._adapter_opt = torch.optim.Adam(params, lr=self._lr)
                else:
                    self._adapter_opt.add_param_group({"params": params})
        return self.adapters[key]

    def _step_adapters(self) -> None:
        opt = self._adapter_opt
        if opt is None:
            return
        if any(p.grad is not None for g in opt.param_groups for p in g["params"]):
            opt.step()
            opt.zero_grad(set_to_none=True)

    def on_fit_start(self, model: nn.Module, state: FitState) -> None:
        # Adapters learn at the student's learning rate unless one was given.
        if self.adapter_lr is None and state.optimizer is not None:
            self._lr = float(state.optimizer.param_groups[0]["lr"])
            if self._adapter_opt is not None:
                for g in self._adapter_opt.param_groups:
                    g["lr"] = self._lr

    def on_step_end(self, model: nn.Module, state: FitState) -> None:
        self._step_adapters()

    # ---- the loss -------------------------------------------------------------------------
    def teacher_logits(self, x: Any) -> torch.Tensor:
        with torch.no_grad():
            return _logits(self.teacher(x))

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        self._step_adapters()
        self.check_student(model)
        cached: torch.Tensor | None = None
        if isinstance(batch, (tuple, list)) and len(batch) == 3:
            x, y, cached = batch
        else:
            x, y = unwrap_batch(batch)
        dev = _device_of(model)
        if _device_of(self.teacher) != dev:
            self.teacher.to(dev)
        need_teacher_forward = cached is None or bool(self.features) or bool(self.attention)
        with _capture(model, self.features, self.attention) as s_store:
            s_logits = _logits(model(x))
        t_logits = cached
        t_store: dict[str, Any] = {}
        if need_teacher_forward:
            was_training = self.teacher.training
            self.teacher.eval()
            try:
                with torch.no_grad(), _capture(self.teacher, self.features.values(), self.attention.values()) as t_store:
                    out = _logits(self.teacher(x))
            finally:
                self.teacher.train(was_training)
            if t_logits is None:
                t_logits = out
        assert t_logits is not None
        t_logits = t_logits.to(s_logits.device)
        y_for_loss = y if (y is not None and y.dtype in (torch.int64, torch.int32)) else None
        loss = soft_hard_loss(s_logits, t_logits, y_for_loss, temperature=self.temperature, alpha=self.alpha)
        for s_name, t_name in self.features.items():
            s_f, t_f = _logits(s_store[f"f:{s_name}"]), _logits(t_store[f"f:{t_name}"])
            loss = loss + self.feature_weight * hint_loss(s_f, t_f, self._adapter(f"{s_name}->{t_name}", s_f, t_f))
        for s_name, t_name in self.attention.items():
            kind_s, a_s = _attention_of(model, s_name, s_store)
            kind_t, a_t = _attention_of(self.teacher, t_name, t_store)
            if kind_s != kind_t:
                raise ConfigError(
                    f"attention pair {s_name!r} -> {t_name!r} mixes a {kind_s} map with a {kind_t} map; "
                    "pair self-attention with self-attention, conv with conv"
                )
            term = attention_map_loss(a_s, a_t) if kind_s == "probs" else spatial_attention_loss(a_s, a_t)
            loss = loss + self.attention_weight * term
        return loss


def _validate_pairs(name: str, pairs: Mapping[str, str] | None) -> None:
    if pairs is None:
        return
    check(len(pairs) > 0, f"{name} must map student layer names to teacher layer names, got an empty dict; "
                          "use None to turn it off")
    for k, v in pairs.items():
        check(bool(k) and bool(v), f"{name} layer names must be non-empty, got {k!r}: {v!r}")


def _apply_distillation(model: nn.Module, config: Distillation, ctx: Context) -> nn.Module:
    return apply_distillation(model, config, ctx)


@register(family="distill", handler=_apply_distillation)
@dataclasses.dataclass(frozen=True, kw_only=True)
class Distillation(Config):
    """Train the model (the student) to match a teacher (Hinton et al. 2015; FitNets hints).

    teacher: the trained model to imitate. A live object, so it is left out of `to_dict`; when
        None the stage uses `apply(..., teacher=...)`, else a frozen copy of the incoming model
        (self-distillation; in a recipe, the model as the previous stages left it).
    temperature: softens both distributions; the soft term is scaled by T**2.
    alpha: weight of the soft-target term; 1 - alpha goes to the hard-label cross-entropy.
    features: {student_layer: teacher_layer} hint pairs (MSE through a learned adapter when
        widths differ), weighted by feature_weight.
    attention: {student_layer: teacher_layer} attention-map pairs: self-attention modules with
        q_proj/k_proj/head_dim (row-wise KL of head-averaged attention), or conv layers
        (spatial attention maps), weighted by attention_weight.
    teacher_outputs: "on_the_fly" runs the teacher every batch; "cached" runs it once over the
        training set (a DataLoader over a TensorDataset) and stores logits with each sample.
    epochs, max_steps, lr, optimizer, weight_decay, schedule, seed: passed to `train.fit`.
    """

    _runtime_fields = ("teacher",)

    teacher: nn.Module | None = dataclasses.field(default=None, compare=False, repr=False)
    temperature: float = 4.0
    alpha: float = 0.9
    features: dict[str, str] | None = None
    feature_weight: float = 1.0
    attention: dict[str, str] | None = None
    attention_weight: float = 1.0
    teacher_outputs: Literal["on_the_fly", "cached"] = "on_the_fly"
    epochs: int = 5
    max_steps: int | None = None
    lr: float = 1e-3
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = 0.0
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    seed: int | None = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher is not None and not isinstance(self.teacher, nn.Module):
            raise ConfigError(f"teacher must be an nn.Module (the trained model), got {type(self.teacher).__name__}")
        check(self.temperature > 0,
              f"temperature must be a positive number (Hinton et al. use 1 to 20), got {self.temperature!r}; "
              "pass e.g. temperature=4.0")
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("feature_weight", self.feature_weight, 0.0, None)
        check_range("attention_weight", self.attention_weight, 0.0, None)
        _validate_pairs("features", self.features)
        _validate_pairs("attention", self.attention)
        check_choice("teacher_outputs", self.teacher_outputs, ("on_the_fly", "cached"))
        check(not (self.teacher_outputs == "cached" and (self.features or self.attention)),
              "teacher_outputs='cached' stores the teacher's logits only, but features/attention need the "
              "teacher's activations every step; use teacher_outputs='on_the_fly'")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 or None, got {self.max_steps}")
        check_range("lr", self.lr, 0.0, None, low_inclusive=False)
        check_range("weight_decay", self.weight_decay, 0.0, None)


def make_distill_loss(teacher: nn.Module, config: Distillation | Mapping[str, Any] | None = None, *,
                      student: nn.Module | None = None) -> DistillLoss:
    """A loss for `fit(model, train, loss=..., callbacks=[...])` that distills `teacher` into
    whatever model `fit` trains. `config` is a Distillation (its teacher field is ignored in
    favour of `teacher`) or a dict of its loss options; pass `student` to check layer names now.
    """
    if config is None:
        cfg = Distillation()
    elif isinstance(config, Distillation):
        cfg = config
    elif isinstance(config, Mapping):
        data = {k: v for k, v in config.items() if k not in ("method", "teacher")}
        cfg = Distillation.from_dict(data)
    else:
        raise ConfigError(f"config must be a Distillation, a dict of its options or None, got {type(config).__name__}")
    return DistillLoss(teacher, temperature=cfg.temperature, alpha=cfg.alpha, features=cfg.features,
                       feature_weight=cfg.feature_weight, attention=cfg.attention,
                       attention_weight=cfg.attention_weight, student=student)


distill_loss = make_distill_loss  # short alias, part of the public interface


@torch.no_grad()
def cache_teacher_outputs(teacher: nn.Module, dataset: TensorDataset, *, batch_size: int = 512,
                          max_bytes: int = 2 << 30) -> TensorDataset:
    """A TensorDataset with the teacher's logits appended to every sample, computed once.

    Indexing by sample (not batch position) keeps the cache right under any shuffling. The
    inputs must be fixed tensors (no random augmentation), which a TensorDataset guarantees.
    """
    if not isinstance(dataset, TensorDataset):
        raise ConfigError(
            f"teacher output caching needs a TensorDataset (fixed tensors per sample), got "
            f"{type(dataset).__name__}; use teacher_outputs='on_the_fly'"
        )
    n = len(dataset)
    if n == 0:
        raise DataError("cannot cache teacher outputs for an empty data set")
    was_training = teacher.training
    teacher.eval()
    dev = _device_of(teacher)
    chunks: list[torch.Tensor] = []
    try:
        x_all = dataset.tensors[0]
        for i in range(0, n, batch_size):
            out = _logits(teacher(x_all[i:i + batch_size].to(dev))).float().cpu()
            if i == 0 and out[0].numel() * 4 * n > max_bytes:
                raise ConfigError(
                    f"caching the teacher's outputs would take {out[0].numel() * 4 * n / 2**30:.1f} GiB "
                    f"({n} samples x {tuple(out.shape[1:])} logits), over max_bytes={max_bytes}; use "
                    "teacher_outputs='on_the_fly'"
                )
            chunks.append(out)
    finally:
        teacher.train(was_training)
    return TensorDataset(*dataset.tensors, torch.cat(chunks))


def with_teacher_cache(teacher: nn.Module, loader: Iterable[Any], *, batch_size: int = 512) -> DataLoader:
    """The same loader (batch size, shuffling, seeded generator) over the cached data set."""
    if not isinstance(loader, DataLoader) or not isinstance(loader.dataset, TensorDataset):
        raise ConfigError(
            "teacher_outputs='cached' needs the train loader to be a torch DataLoader over a TensorDataset "
            f"(got {type(loader).__name__}); use teacher_outputs='on_the_fly'"
        )
    cached = cache_teacher_outputs(teacher, loader.dataset, batch_size=batch_size)
    shuffle = isinstance(loader.sampler, RandomSampler)
    generator = loader.sampler.generator if isinstance(loader.sampler, RandomSampler) else None
    return DataLoader(cached, batch_size=loader.batch_size, shuffle=shuffle, generator=generator,
                      drop_last=loader.drop_last, num_workers=loader.num_workers)


def apply_distillation(model: nn.Module, config: Distillation, ctx: Context) -> nn.Module:
    """The registered handler: train `model` against the teacher with `train.fit`; returns it."""
    if ctx.train is None:
        raise ConfigError("Distillation trains the student and needs data: pass train=loader (and val=) to ts.apply")
    teacher = config.teacher if config.teacher is not None else ctx.extras.get("teacher")
    if teacher is None or teacher is model:
        # Self-distillation needs a snapshot: the student's own updates must not move its targets.
        teacher = copy.deepcopy(model)
    loss = make_distill_loss(teacher, config, student=model)
    train = ctx.train if config.teacher_outputs == "on_the_fly" else with_teacher_cache(teacher, ctx.train)
    fit(model, train, val=ctx.val, epochs=config.epochs, max_steps=config.max_steps, lr=config.lr,
        optimizer=config.optimizer, weight_decay=config.weight_decay, schedule=config.schedule,
        loss=loss, callbacks=[loss], seed=config.seed, progress=ctx.progress, desc="distill")
    return model

"""One `fit()` for every stage that trains: baseline training, fine-tuning after pruning or
quantization, QAT, distillation. Later techniques hook in through callbacks and `loss=`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from torchshrink.errors import ConfigError, DataError

__all__ = ["Callback", "FitState", "FitResult", "fit", "evaluate", "accuracy", "mean_loss",
           "default_loss", "seed_everything", "unwrap_batch"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """(inputs, targets) from a batch: a (x, y) pair, a dict with input/label keys, or a bare x."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        return batch[0], batch[1]
    if isinstance(batch, dict):
        x = batch.get("input", batch.get("x", batch.get("input_ids")))
        return x, batch.get("label", batch.get("y", batch.get("labels")))
    return batch, None


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for (N, C) logits, or per position for (N, T, C) sequence logits."""
    if logits.dim() == 3:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(logits, targets)


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = unwrap_batch(batch)
    if y is None:
        raise DataError("the default loss needs (input, target) batches; pass loss= for unlabeled data")
    return classification_loss(model(x), y)


@dataclasses.dataclass
class FitState:
    """What callbacks see. They may set `stop = True` to end training early."""

    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float = math.nan
    val_loss: float | None = None
    val_metric: float | None = None
    optimizer: torch.optim.Optimizer | None = None
    stop: bool = False


class Callback:
    """Hooks into `fit()`. Every method is optional; `extra_loss` adds a term to the loss
    (sparsity regularization uses it)."""

    def on_fit_start(self, model: nn.Module, state: FitState) -> None: ...
    def on_step_start(self, model: nn.Module, state: FitState) -> None: ...
    def on_step_end(self, model: nn.Module, state: FitState) -> None: ...
    def on_epoch_end(self, model: nn.Module, state: FitState) -> None: ...
    def on_fit_end(self, model: nn.Module, state: FitState) -> None: ...

    def extra_loss(self, model: nn.Module, state: FitState) -> torch.Tensor | None:
        return None


@dataclasses.dataclass
class FitResult:
    epochs: int
    steps: int
    history: list[dict[str, float]]
    best_val_metric: float | None
    seconds: float


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], *, device: torch.device | str | None = None,
             amp: bool = False) -> dict[str, float]:
    """Mean loss and top-1 accuracy (percent) over a labeled loader."""
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    try:
        for batch in loader:
            x, y = unwrap_batch(_to(batch, dev))
            if y is None:
                raise DataError("evaluate() needs (input, target) batches")
            with _autocast(dev, amp):
                logits = model(x)
            logits = logits.float()
            loss_sum += float(classification_loss(logits, y)) * y.numel()
            correct += int((logits.argmax(-1) == y).sum())
            total += y.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise DataError("evaluate() got an empty loader")
    return {"loss": loss_sum / total, "accuracy": 100.0 * correct / total}


def accuracy(model: nn.Module, loader: Iterable[Any], **kw: Any) -> float:
    """Top-1 accuracy in percent."""
    return evaluate(model, loader, **kw)["accuracy"]


def mean_loss(model: nn.Module, loader: Iterable[Any], **kw: Any) -> float:
    return evaluate(model, loader, **kw)["loss"]


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _autocast(device: torch.device, amp: bool | str) -> contextlib.AbstractContextManager[Any]:
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if (device.type == "cuda" and amp != "bf16") else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _make_optimizer(params: Sequence[nn.Parameter], name: str, lr: float, weight_decay: float,
                    momentum: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    raise ConfigError(f"optimizer must be 'adamw', 'adam' or 'sgd', got {name!r}")


def _lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":  # x0.1 at 50% and 75% of training, as in the ResNet papers
        return 0.1 ** (int(progress >= 0.5) + int(progress >= 0.75))
    raise ConfigError(f"schedule must be 'cosine', 'step' or 'constant', got {schedule!r}")


def fit(
    model: nn.Module,
    train: Iterable[Any],
    *,
    val: Iterable[Any] | None = None,
    epochs: int = 1,
    max_steps: int | None = None,
    lr: float = 1e-3,
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    schedule: Literal["cosine", "step", "constant"] = "cosine",
    warmup_steps: int = 0,
    loss: LossFn | None = None,
    callbacks: Sequence[Callback] = (),
    amp: bool | Literal["bf16", "fp16"] = False,
    grad_clip: float | None = None,
    early_stopping: int | None = None,
    restore_best: bool = True,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Train `model` in place.

    loss: `(model, batch) -> scalar`; default cross-entropy on (x, y) batches.
    amp: automatic mixed precision: bf16 autocast on CPU; fp16 with a GradScaler on CUDA
        (pass "bf16" to use bf16 on CUDA too).
    early_stopping: stop after this many epochs without a better validation metric (accuracy
        for labeled data, else negative loss); with restore_best the best weights are put back.
    """
    import time

    if epochs < 1 and not max_steps:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if seed is not None:
        seed_everything(seed)
    dev = torch.device(device) if device is not None else _model_device(model)
    model.to(dev)
    loss_fn = loss or default_loss
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{type(model).__name__} has no trainable parameters")
    opt = _make_optimizer(params, optimizer, lr, weight_decay, momentum)
    try:
        steps_per_epoch = len(train)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = max_steps or 1
    total = max_steps if max_steps else epochs * steps_per_epoch
    if max_steps:
        epochs = math.ceil(max_steps / max(1, steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(schedule, s, total, warmup_steps))
    use_scaler = bool(amp) and dev.type == "cuda" and amp != "bf16"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    state = FitState(total_steps=total, optimizer=opt)
    history: list[dict[str, float]] = []
    best: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0
    t0 = time.perf_counter()
    for cb in callbacks:
        cb.on_fit_start(model, state)
    bar = _progress(total, desc, progress)
    try:
        for epoch in range(epochs):
            state.epoch = epoch
            model.train()
            running, count = 0.0, 0
            for batch in train:
                if state.step >= total or state.stop:
                    break
                batch = _to(batch, dev)
                for cb in callbacks:
                    cb.on_step_start(model, state)
                with _autocast(dev, amp):
                    value = loss_fn(model, batch)
                    for cb in callbacks:
                        extra = cb.extra_loss(model, state)
                        if extra is not None:
                            value = value + extra
                if not torch.isfinite(value):
                    raise FloatingPointError(
                        f"loss became {float(value)} at step {state.step}; lower lr (now {lr}) or disable amp"
                    )
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(value).backward()
                    if grad_clip:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(params, grad_clip)
                    scaler.step(opt)
                    scaler.update()
                else:
                    value.backward()
                    if grad_clip:
                        nn.utils.clip_grad_norm_(params, grad_clip)
                    opt.step()
                scheduler.step()
                state.step += 1
                state.loss = float(value.detach())
                running += state.loss
                count += 1
                for cb in callbacks:
                    cb.on_step_end(model, state)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{state.loss:.4f}")
            record = {"epoch": float(epoch + 1), "train_loss": running / max(1, count)}
            if val is not None:
                metrics = evaluate(model, val, device=dev, amp=amp) if _labeled(val) else {"loss": _unlabeled_loss(model, val, loss_fn, dev)}
                state.val_loss = metrics["loss"]
                state.val_metric = metrics.get("accuracy", -metrics["loss"])
                record.update({f"val_{k}": v for k, v in metrics.items()})
                if best is None or state.val_metric > best:
                    best, bad_epochs = state.val_metric, 0
                    if early_stopping is not None and restore_best:
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad_epochs += 1
                if bar is not None:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{record['train_loss']:.4f}",
                                    val=f"{state.val_metric:.3f}")
            history.append(record)
            for cb in callbacks:
                cb.on_epoch_end(model, state)
            if early_stopping is not None and bad_epochs >= early_stopping:
                break
            if state.stop or state.step >= total:
                break
    finally:
        if bar is not None:
            bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    for cb in callbacks:
        cb.on_fit_end(model, state)
    model.eval()
    return FitResult(len(history), state.step, history, best, time.perf_counter() - t0)


def _labeled(loader: Iterable[Any]) -> bool:
    for batch in loader:
        _, y = unwrap_batch(batch)
        return y is not None and y.dtype in (torch.int64, torch.int32)
    return False


@torch.no_grad()
def _unlabeled_loss(model: nn.Module, loader: Iterable[Any], loss_fn: LossFn, dev: torch.device) -> float:
    model.eval()
    vals = [float(loss_fn(model, _to(b, dev))) for b in loader]
    model.train()
    return sum(vals) / max(1, len(vals))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

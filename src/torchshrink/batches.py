"""Batches as models take them: one place that turns a loader's batch into the call a model
expects, for calibration, evaluation, fine-tuning and every data-aware method.

A batch may be a tensor `x`; a pair `(inputs, targets)` (or a 1-tuple `(inputs,)`); a dict
such as `{"input_ids": ..., "attention_mask": ..., "labels": ...}`; or `(args, kwargs)`,
a tuple of positional inputs next to a dict of keyword inputs. Dict batches are passed as
keyword arguments, so `attention_mask` and the like reach the model; the target keys are
held back (a Hugging Face model given `labels` would compute its own loss instead of
returning logits).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["TARGET_KEYS", "split_batch", "call_model", "unwrap_batch", "output_tensors", "to_device", "iter_calibration",
           "logits_of"]

# Keys that hold targets, not inputs; our own dict convention is {"input"/"x": ..., "label"/"y": ...}.
TARGET_KEYS = ("labels", "label", "y", "targets", "target")
_POSITIONAL_KEYS = ("input", "x")


def _is_args_kwargs(batch: Any) -> bool:
    return (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], (tuple, list))
            and isinstance(batch[1], dict))


def _inputs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    if isinstance(inputs, dict):
        target = next((inputs[k] for k in TARGET_KEYS if k in inputs), None)
        kwargs = {k: v for k, v in inputs.items() if k not in TARGET_KEYS}
        for k in _POSITIONAL_KEYS:
            if k in kwargs:
                return (kwargs.pop(k),), kwargs, target
        return (), kwargs, target
    return (inputs,), {}, None


def split_batch(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any], torch.Tensor | None]:
    """`(args, kwargs, target)` for `model(*args, **kwargs)`; target is None for unlabeled batches."""
    if _is_args_kwargs(batch):
        return tuple(batch[0]), dict(batch[1]), None
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            return (), {}, None
        args, kwargs, target = _inputs(batch[0])
        if len(batch) >= 2:
            target = batch[1]
        return args, kwargs, target
    return _inputs(batch)


def call_model(model: nn.Module, batch: Any) -> Any:
    """The model's output on `batch`, called as the model takes it (see `split_batch`)."""
    args, kwargs, _ = split_batch(batch)
    return model(*args, **kwargs)


def unwrap_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """(primary input, target): the first positional input, or for keyword-only batches the
    `input_ids`/first value, for code that needs one tensor (shapes, example inputs)."""
    args, kwargs, target = split_batch(batch)
    if args:
        return args[0], target
    if "input_ids" in kwargs:
        return kwargs["input_ids"], target
    return next(iter(kwargs.values()), None), target


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model output: a tensor, an object with `.logits` (Hugging Face
    outputs), or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def output_tensors(y: Any, *, strict: bool = True) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or tuples, lists and dicts of them, Hugging
    Face's ModelOutput included), in order. A leaf that is no tensor raises TypeError, or with
    strict=False is skipped."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, (tuple, list)):
        return [t for v in y for t in output_tensors(v, strict=strict)]
    if isinstance(y, dict):
        return [t for v in y.values() for t in output_tensors(v, strict=strict)]
    if strict:
        raise TypeError(f"model output must be tensors (or tuples/dicts of them), got {type(y).__name__}")
    return []


def to_device(x: Any, dev: torch.device, *, non_blocking: bool = False) -> Any:
    """A batch (tensor, or nested tuple/list/dict of them) moved to `dev`; other values as they are."""
    if isinstance(x, torch.Tensor):
        return x.to(dev, non_blocking=non_blocking)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, dev, non_blocking=non_blocking) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, dev, non_blocking=non_blocking) for k, v in x.items()}
    return x


def iter_calibration(calibration: Iterable[Any], limit: int | None) -> Iterator[Any]:
    """The first `limit` batches of `calibration` (all of them when limit is None)."""
    for i, batch in enumerate(calibration):
        if limit is not None and i >= limit:
            return
        yield batch

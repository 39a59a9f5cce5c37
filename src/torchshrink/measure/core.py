"""`ts.measure`: one call that takes every number a compression result is judged by."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from torchshrink.errors import ArtifactError, ConfigError, DataError
from torchshrink.measure.latency import LatencyStats, time_forward
from torchshrink.measure.macs import count_macs, slice_batch
from torchshrink.measure.report import Report
from torchshrink.measure.resident import resident_bytes
from torchshrink.measure.weights import LayerRow, layer_rows
from torchshrink.nn.coverage import coverage

__all__ = ["measure"]

Evaluate = Callable[[nn.Module], "float | Mapping[str, float]"]


def _shape(example: Any) -> list[int] | None:
    if isinstance(example, torch.Tensor):
        return list(example.shape)
    if isinstance(example, (tuple, list)) and example and isinstance(example[0], torch.Tensor):
        return list(example[0].shape)
    return None


def _default_example(model: nn.Module) -> Any:
    from torchshrink import models

    try:
        return models.example_input(model, 1)
    except ConfigError as e:
        raise ConfigError(
            f"ts.measure needs example= (one input batch) for {type(model).__name__}; "
            "for reference models ts.models.example_input(model) makes one"
        ) from e


def measure(
    model: nn.Module,
    *,
    example: Any = None,
    evaluate: Evaluate | None = None,
    batch_sizes: Sequence[int] = (1,),
    threads: int | Sequence[int] | None = None,
    latency: bool = True,
    runs: int = 50,
    warmup: int = 10,
    artifact: str | os.PathLike[str] | None = None,
    metric_name: str | None = None,
) -> Report:
    """Measure `model`: weights, nonzeros, bytes, MACs, latency and the task metric.

    example: one input batch (a tensor, a tuple of positional inputs or a dict of keyword
        inputs). MACs are counted on its first sample; latency runs resize it to each batch
        size. Defaults to `ts.models.example_input(model)` for reference models.
    evaluate: `model -> float` (or a dict with an "accuracy" key, as `ts.evaluate` returns).
    metric_name: what the metric is called in tables and JSON; default the evaluate function's
        name (`accuracy`), or "metric" for a lambda.
    threads: intra-op thread count(s) for timing; None keeps torch's current setting. The
        previous setting is restored afterwards.
    artifact: path of the saved file, whose size is reported as `artifact_bytes`.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"ts.measure expects an nn.Module, got {type(model).__name__}")
    if example is None:
        example = _default_example(model)
    bad = [b for b in batch_sizes if not isinstance(b, int) or b < 1]
    if bad:
        raise ConfigError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
    thread_list: list[int | None] = (
        [None] if threads is None else [threads] if isinstance(threads, int) else list(threads)
    )

    rows = layer_rows(model)
    try:
        macs, per_module = count_macs(model, slice_batch(example, 1))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise DataError(
            f"{type(model).__name__} failed on the example input of shape {_shape(example)}: {e}. "
            "Pass example= a batch the model accepts (ts.models.example_input(model) for reference models)."
        ) from e
    rows = [LayerRow(r.name, r.type, r.params, r.nonzeros, r.execution, per_module.get(r.name)) for r in rows]
    params = sum(r.params for r in rows)

    artifact_bytes = None
    if artifact is not None:
        try:
            artifact_bytes = os.path.getsize(artifact)
        except OSError as e:
            raise ArtifactError(f"cannot read the size of artifact {str(artifact)!r}: {e}") from e

    runs_out: list[LatencyStats] = []
    if latency:
        for t in thread_list:
            for b in batch_sizes:
                runs_out.append(time_forward(model, slice_batch(example, b), runs=runs, warmup=warmup,
                                             threads=t, batch=b))
    first_threads = runs_out[0].threads if runs_out else None
    by_batch = {s.batch: s for s in runs_out if s.threads == first_threads}

    metric: float | None = None
    # A named function says what it measures (`def accuracy(m)`); a lambda does not.
    fn_name = getattr(evaluate, "__name__", "")
    name = metric_name or (fn_name if fn_name.isidentifier() and fn_name not in ("evaluate", "<lambda>") else "metric")
    if evaluate is not None:
        value = evaluate(model)
        if isinstance(value, Mapping):
            key = "accuracy" if "accuracy" in value else next(iter(value))
            metric, name = float(value[key]), metric_name or key
        else:
            metric = float(value)

    return Report(
        model=type(model).__name__,
        params=params,
        nonzero_params=sum(r.nonzeros for r in rows),
        dense_bytes=4 * params,
        macs=macs,
        example_shape=_shape(example),
        artifact_bytes=artifact_bytes,
        artifact=None if artifact is None else os.fspath(artifact),
        latency=by_batch,
        latency_runs=runs_out,
        metric=metric,
        metric_name=name,
        layers=rows,
        coverage=[c.to_dict() for c in coverage(model)],
        resident_bytes=resident_bytes(model),
    )

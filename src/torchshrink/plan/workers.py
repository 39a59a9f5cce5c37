"""Where the option database is measured: in this process, in worker processes, or on Ray.

Each job is one layer and some of its options (`options.measure_options`). The model and the
calibration batches every job needs are sent once per worker (the pool's initializer, or one
`ray.put`), the jobs carry only their layer's recorded inputs. Each worker runs torch with its
own thread budget (`threads_per_worker`), so N workers on a machine with N x T cores do not
oversubscribe it; results come back in job order, so the database does not depend on which
worker was fastest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from torchshrink.errors import ConfigError

__all__ = ["Job", "Shared", "check_workers", "run_jobs"]


@dataclasses.dataclass
class Shared:
    """What every job reads: the model (left unchanged) and, for model errors, the batches and
    the fp32 log-probabilities on them."""

    model: nn.Module
    batches: list[Any]
    ref_logp: list[torch.Tensor]
    model_error: bool
    latency: bool
    latency_runs: int
    threads: int | None
    recalibrate_bn: bool = True


@dataclasses.dataclass
class Job:
    layer: str
    options: list[Any]
    inputs: torch.Tensor
    latency_inputs: torch.Tensor | None = None


def check_workers(workers: int, threads_per_worker: int, ray_address: str | None) -> None:
    for name, v in (("workers", workers), ("threads_per_worker", threads_per_worker)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {v!r}")
    if ray_address is not None:
        if not isinstance(ray_address, str) or not ray_address:
            raise ConfigError(f"ray_address must be a Ray address such as 'auto' or 'ray://host:10001', "
                              f"got {ray_address!r}")
        _ray()


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ConfigError("ray_address= runs the option database on a Ray cluster, which needs ray: "
                          "pip install 'torchshrink[ray]'") from e
    return ray


_STATE: Shared | None = None


def _init_worker(state: Shared, threads: int) -> None:
    global _STATE
    torch.set_num_threads(threads)
    _STATE = state


def _run_in_worker(job: Job) -> tuple[str, list[Any], list[str]]:
    from torchshrink.plan.options import measure_options

    assert _STATE is not None, "the worker was started without its state"
    return measure_options(_STATE, job)


def _ray_task(state: Shared, job: Job, threads: int) -> tuple[str, list[Any], list[str]]:
    from torchshrink.plan.options import measure_options

    torch.set_num_threads(threads)
    return measure_options(state, job)


def run_jobs(state: Shared, jobs: Sequence[Job], *, workers: int = 1, threads_per_worker: int = 1,
             ray_address: str | None = None) -> Iterator[tuple[str, list[Any], list[str]]]:
    """Measure every job; yields (layer, rows, skipped) per job, in job order."""
    from torchshrink.plan.options import measure_options

    if ray_address is not None:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=ray_address, ignore_reinit_error=True, log_to_driver=False)
        task = ray.remote(num_cpus=threads_per_worker)(_ray_task)
        ref = ray.put(state)
        pending = [task.remote(ref, j, threads_per_worker) for j in jobs]
        for p in pending:
            yield ray.get(p)
        return
    if workers <= 1:
        for j in jobs:
            yield measure_options(state, j)
        return
    import concurrent.futures
    import multiprocessing

    # spawn, not fork: a forked copy of a process that has run torch's thread pools can hang
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                                initargs=(state, threads_per_worker)) as pool:
        yield from pool.map(_run_in_worker, jobs)

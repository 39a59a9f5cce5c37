"""Data-parallel training under torchrun: detect the launcher, set up the process group,
shard loaders so each process sees its own share of the data. `fit()` is the only user."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import torch

from torchshrink.errors import ConfigError

__all__ = ["Distributed", "is_main_process", "setup_distributed", "shard_loader"]


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 inside one."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@dataclasses.dataclass
class Distributed:
    rank: int
    local_rank: int
    world_size: int
    created_group: bool


def _torchrun_env() -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) when this process was started by torchrun (which sets
    these variables as its launch protocol) with more than one process."""
    world = os.environ.get("WORLD_SIZE")
    local = os.environ.get("LOCAL_RANK")
    if world is None or local is None or int(world) <= 1:
        return None
    return int(os.environ.get("RANK", local)), int(local), int(world)


def setup_distributed(dev: torch.device, distributed: bool | None) -> tuple[Distributed | None, torch.device]:
    import torch.distributed as dist

    env = _torchrun_env()
    if distributed is False or (distributed is None and env is None and not dist.is_initialized()):
        return None, dev
    if not dist.is_available():
        raise ConfigError("distributed training needs a torch build with torch.distributed")
    created = False
    if not dist.is_initialized():
        if env is None:
            raise ConfigError(
                "fit(distributed=True) needs a launcher: start the script with "
                "`torchrun --nproc_per_node=N script.py` (or initialize torch.distributed yourself)"
            )
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        created = True
    rank, world = dist.get_rank(), dist.get_world_size()
    local = env[1] if env is not None else rank
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    return Distributed(rank, local, world, created), dev


def shard_loader(loader: Iterable[Any], dd: Distributed, seed: int | None) -> tuple[Iterable[Any], Any]:
    """The same loader with a DistributedSampler, so each process sees its own share of the
    data (padded to equal length: unequal step counts would deadlock the gradient all-reduce)."""
    from torch.utils.data import DataLoader, RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    if not isinstance(loader, DataLoader):
        return loader, None  # the caller shards a custom iterable itself
    if isinstance(loader.sampler, DistributedSampler):
        return loader, loader.sampler
    if loader.batch_size is None:  # a custom batch_sampler: we cannot re-shard it faithfully
        raise ConfigError("distributed fit() needs a DataLoader built with batch_size=, not batch_sampler=")
    sampler: DistributedSampler[Any] = DistributedSampler(loader.dataset, num_replicas=dd.world_size, rank=dd.rank,
                                 shuffle=isinstance(loader.sampler, RandomSampler), seed=seed or 0,
                                 drop_last=loader.drop_last)
    sharded = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                         collate_fn=loader.collate_fn, drop_last=loader.drop_last,
                         num_workers=loader.num_workers, pin_memory=loader.pin_memory)
    return sharded, sampler

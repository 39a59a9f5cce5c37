"""The option database measured in worker processes or on Ray equals the one measured here."""

from __future__ import annotations

import pytest
import torch

from torchshrink.errors import ConfigError
from torchshrink.plan.options import LayerOption, build_database

MENU = [LayerOption(sparsity=0.9), LayerOption(bits=4, group_size=None), LayerOption(kmeans_bits=3),
        LayerOption(rank=4), LayerOption(sparsity=0.8, kmeans_bits=4)]


def _setup() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 48),
                                torch.nn.ReLU(), torch.nn.Linear(48, 10)).eval()
    return model, [torch.rand(16, 32) for _ in range(2)]


def _menu(name: str, m: torch.nn.Module) -> list[LayerOption]:
    return MENU


def _table(db) -> list[tuple]:
    return [(n, r.option, r.bytes, round(r.error, 9), round(r.model_error, 9), r.macs)
            for n in db.layers for r in db.rows[n]]


def test_bad_worker_settings_are_named() -> None:
    model, calib = _setup()
    with pytest.raises(ConfigError, match=r"workers must be a whole number >= 1, got 0"):
        build_database(model, calib, options=_menu, workers=0, progress=False)
    with pytest.raises(ConfigError, match=r"threads_per_worker must be a whole number >= 1, got 1.5"):
        build_database(model, calib, options=_menu, threads_per_worker=1.5, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"ray_address must be a Ray address"):
        build_database(model, calib, options=_menu, ray_address="", progress=False)


@pytest.mark.slow
def test_worker_processes_measure_the_same_database() -> None:
    model, calib = _setup()
    here = build_database(model, calib, options=_menu, model_error=True, progress=False)
    pool = build_database(model, calib, options=_menu, model_error=True, workers=2, threads_per_worker=1,
                          progress=False)
    assert _table(pool) == _table(here)
    assert pool.fixed_bytes == here.fixed_bytes and pool.skipped == here.skipped


@pytest.mark.slow
def test_ray_tasks_measure_the_same_database() -> None:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    model, calib = _setup()
    here = build_database(model, calib, options=_menu, model_error=True, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = build_database(model, calib, options=_menu, model_error=True, ray_address="auto",
                                threads_per_worker=1, progress=False)
    finally:
        ray.shutdown()
    assert _table(remote) == _table(here)

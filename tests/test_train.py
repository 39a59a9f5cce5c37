"""fit(): DDP under torchrun, bf16 autocast, early stopping, reproducibility, shape errors,
checkpoints, and the default recipes that reach the accuracy targets."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink import data, models, train
from torchshrink.errors import ConfigError, DataError


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    # The machine's 2 cores are shared; oversubscribed intra-op threads spin and run several
    # times slower than one thread would.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synthetic() -> data.Splits:
    return data.load("synthetic")


def _mlp(hidden: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- DDP

_DDP_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    from torch import nn
    import torchshrink as ts
    from torchshrink import data, train

    out = sys.argv[1]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    splits = data.load("synthetic")
    torch.manual_seed(100 + rank)  # different inits per rank: DDP must broadcast rank 0's
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    ts.save(model, os.path.join(out, f"init{rank}.tsz"))
    tr, va, _ = data.loaders(splits, batch_size=64, shift=1)
    result = train.fit(model, tr, val=va, epochs=2, lr=3e-3, progress=True,
                       checkpoint=os.path.join(out, "ckpt.tsz"))
    acc = train.evaluate(model, va)["accuracy"]
    ts.save(model, os.path.join(out, f"rank{rank}.tsz"),
            metadata={"steps": result.steps, "world": world, "acc": acc})
""")


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path)],
        capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    like = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    r0, r1 = ts.load(tmp_path / "rank0.tsz", like=like), ts.load(tmp_path / "rank1.tsz", like=like)
    assert _states_equal(r0, r1)
    assert not _states_equal(ts.load(tmp_path / "init0.tsz", like=like), ts.load(tmp_path / "init1.tsz", like=like))
    info0, info1 = ts.read_info(tmp_path / "rank0.tsz"), ts.read_info(tmp_path / "rank1.tsz")
    assert info0.metadata is not None and info1.metadata is not None
    # 1,400 training images, 64 per batch: each process takes half, so ceil(700/64) = 11 steps an epoch.
    assert info0.metadata["world"] == 2 and info0.metadata["steps"] == info1.metadata["steps"] == 22
    assert info0.metadata["acc"] > 30.0  # it learned (chance is 10%)
    # Only rank 0 writes checkpoints; the file holds the final weights.
    assert _states_equal(ts.load(tmp_path / "ckpt.tsz", like=like), r0)


def test_distributed_true_without_launcher_is_a_clear_error(synthetic: data.Splits) -> None:
    tr, _, _ = data.loaders(synthetic, batch_size=64)
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        train.fit(_mlp(), tr, epochs=1, distributed=True, progress=False)


# ----------------------------------------------------------------------------- AMP


def test_bf16_autocast_trains_to_float_accuracy(synthetic: data.Splits) -> None:
    tr, va, te = data.loaders(synthetic, batch_size=64)
    accs = {}
    for amp in (False, True):
        m = _mlp()
        train.fit(m, tr, epochs=2, lr=3e-3, amp=amp, progress=False)
        accs[amp] = train.evaluate(m, te)["accuracy"]
    assert accs[False] > 80.0
    assert abs(accs[True] - accs[False]) <= 3.0, accs
    # The forward really ran in bf16 under amp.
    seen: list[torch.dtype] = []
    m = _mlp()
    m[1].register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    train.evaluate(m, te, amp=True)
    assert seen and seen[0] == torch.bfloat16


# ----------------------------------------------------------------------------- early stopping


class _Sabotage(train.Callback):
    """After the first epoch, scramble the weights and freeze the learning rate at zero, so
    validation accuracy collapses and stays down."""

    def on_epoch_end(self, model: nn.Module, state: train.FitState) -> None:
        if state.epoch == 0:
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(torch.randn_like(p) * 3)
            assert state.optimizer is not None
            for group in state.optimizer.param_groups:
                group["initial_lr"] = group["lr"] = 0.0


def test_early_stopping_stops_and_restores_best(synthetic: data.Splits) -> None:
    tr, va, _ = data.loaders(synthetic, batch_size=64)
    m = _mlp()
    result = train.fit(m, tr, val=va, epochs=10, lr=3e-3, early_stopping=2, callbacks=[_Sabotage()],
                       schedule="constant", progress=False)
    assert result.epochs == 3  # the best epoch, then two without improvement
    first = result.history[0]["val_accuracy"]
    assert first > 60.0 and result.history[1]["val_accuracy"] < first
    assert result.best_val_metric == first
    assert train.evaluate(m, va)["accuracy"] == pytest.approx(first)


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_gives_identical_weights(synthetic: data.Splits) -> None:
    runs = []
    for seed in (0, 0, 1):
        m = _mlp()
        tr, va, _ = data.loaders(synthetic, batch_size=64, shift=2, seed=seed)
        train.fit(m, tr, val=va, epochs=2, lr=3e-3, seed=seed, progress=False)
        runs.append(m)
    assert _states_equal(runs[0], runs[1])
    assert not _states_equal(runs[0], runs[2])


# ----------------------------------------------------------------------------- shape errors


def test_wrong_input_shape_names_expected_and_given() -> None:
    digits = data.load("digits")
    tr, va, _ = data.loaders(digits, batch_size=32)
    for name in ("lenet300", "lenet5"):
        with pytest.raises(DataError, match=r"expects input batches of shape \(N, 1, 28, 28\), got \(32, 1, 8, 8\)"):
            train.fit(models.create(name), tr, epochs=1, progress=False)
        with pytest.raises(DataError, match=r"LeNet.* expects input batches of shape \(N, 1, 28, 28\), got \(\d+, 1, 8, 8\)"):
            train.evaluate(models.create(name), va)


def test_model_without_input_shape_keeps_the_original_error() -> None:
    x = torch.randn(8, 5)
    loader = [(x, torch.zeros(8, dtype=torch.long))]
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        train.fit(nn.Linear(3, 2), loader, epochs=1, progress=False)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_writes_artifacts_during_and_after_fit(synthetic: data.Splits, tmp_path: Path) -> None:
    tr, va, _ = data.loaders(synthetic, batch_size=128)
    m = models.create("lenet300")
    ck = train.Checkpoint(tmp_path / "every2.tsz", every=2, metadata={"run": "t"})
    train.fit(m, tr, val=va, epochs=3, callbacks=[ck], checkpoint=tmp_path / "last.tsz", progress=False)
    assert ck.writes == 2  # after epoch 2, and at the end
    for name in ("every2.tsz", "last.tsz"):
        back = ts.load(tmp_path / name)
        assert _states_equal(back, m)
        info = ts.read_info(tmp_path / name)
        assert info.metadata is not None and info.metadata["epoch"] == 3 and info.metadata["step"] == 33
    assert ts.read_info(tmp_path / "every2.tsz").metadata["run"] == "t"  # type: ignore[index]
    with pytest.raises(ConfigError, match="checkpoint_every must be >= 1"):
        train.fit(m, tr, epochs=1, checkpoint=tmp_path / "x.tsz", checkpoint_every=0, progress=False)


# ----------------------------------------------------------------------------- recipes


def test_default_recipes() -> None:
    for name in models.names():
        r = train.default_recipe(name)
        assert {"epochs", "lr", "batch_size", "shift", "optimizer", "weight_decay", "label_smoothing"} <= set(r)
    r = train.default_recipe("lenet300")
    r["epochs"] = 1
    assert train.default_recipe("lenet300")["epochs"] != 1  # a fresh dict every call
    with pytest.raises(ConfigError, match="Did you mean 'lenet5'"):
        train.default_recipe("lenet6")


def test_label_smoothing_is_validated(synthetic: data.Splits) -> None:
    tr, _, _ = data.loaders(synthetic, batch_size=128)
    with pytest.raises(ConfigError, match=r"label_smoothing must be in \[0, 1\)"):
        train.fit(_mlp(), tr, epochs=1, label_smoothing=1.5, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "target"), [("lenet300", 95.0), ("lenet5", 97.0)])
def test_default_recipe_reaches_target_on_mnist5k(name: str, target: float) -> None:
    splits = data.load("mnist5k")
    m = models.create(name)
    train.fit_recipe(m, splits, train.default_recipe(name), progress=False)
    _, _, te = data.loaders(splits)
    assert train.evaluate(m, te)["accuracy"] >= target


@pytest.mark.slow
def test_lenet5_on_full_fashion_mnist() -> None:
    try:
        splits = data.load("fashion_mnist", val_fraction=0.05)
    except DataError as e:
        pytest.skip(str(e))
    m = models.create("lenet5")
    train.fit_recipe(m, splits, train.default_recipe("lenet5"), epochs=4, shift=0, batch_size=128,
                     progress=False)
    _, _, te = data.loaders(splits)
    assert train.evaluate(m, te)["accuracy"] >= 89.0

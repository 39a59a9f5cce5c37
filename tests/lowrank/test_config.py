"""SvdFactorization config: defaults, round trips and bad input, asserted by the error words."""

from __future__ import annotations

import pytest

import torchshrink as ts
from torchshrink.config import Config
from torchshrink.errors import ConfigError


def test_default_is_energy_095_and_round_trips() -> None:
    cfg = ts.SvdFactorization()
    assert cfg.energy == 0.95
    assert Config.from_dict(cfg.to_dict()) == cfg
    full = ts.SvdFactorization(budget_macs=0.5, mode="spatial", solver="lagrangian", score="loss",
                               per_layer={"fc1": 8, "conv*": {"energy": 0.9}}, ignore=["fc3"])
    d = full.to_dict()
    assert d["method"] == "svd_factorization"
    assert Config.from_dict(d) == full
    assert ts.get_method("svd_factorization").family == "lowrank"


def test_rank_larger_than_min_m_n_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"rank 11 for layer 'fc3' is larger than min\(m, n\) = 10 "
                                          r"\(its weight matrix is 10 x 100\); use rank <= 10"):
        ts.factorize(ts.models.create("lenet300"), ts.SvdFactorization(rank=11))
    with pytest.raises(ConfigError, match=r"rank 500 for layer 'fc2' is larger than min\(m, n\) = 100"):
        ts.factorize(ts.models.create("lenet300"), ts.SvdFactorization(per_layer={"fc2": 500}))


@pytest.mark.parametrize("energy", [0.0, -0.1, 1.5])
def test_energy_outside_0_1_is_an_error(energy: float) -> None:
    with pytest.raises(ConfigError, match=r"energy must be in \(0, 1\], got " + str(energy)):
        ts.SvdFactorization(energy=energy)
    with pytest.raises(ConfigError, match=r"per_layer\['fc1'\] energy must be in \(0, 1\]"):
        ts.SvdFactorization(per_layer={"fc1": {"energy": energy}})


def test_energy_one_keeps_full_rank_so_nothing_is_replaced() -> None:
    model = ts.factorize(ts.models.create("lenet300"), ts.SvdFactorization(energy=1.0))
    assert type(model.fc1).__name__ == "Linear"


def test_unreachable_budget_says_the_smallest_reachable_size() -> None:
    # rank 1 everywhere: fc1 1084 + fc2 400 + fc3 110 weights, plus 410 biases = 2,004
    with pytest.raises(ConfigError, match=r"budget_params=1000 cannot be met: the smallest reachable size is "
                                          r"2,004 parameters .* Raise the budget to at least 2,004"):
        ts.factorize(ts.models.create("lenet300"), ts.SvdFactorization(budget_params=1000))
    with pytest.raises(ConfigError, match=r"budget_macs=0.001 \(.* multiply-adds per sample\) cannot be met: "
                                          r"the smallest reachable size is"):
        ts.factorize(ts.models.create("resnet_small"), ts.SvdFactorization(budget_macs=0.001))


def test_other_bad_input_words() -> None:
    with pytest.raises(ConfigError, match=r"give one of rank=, energy=, ratio=, got rank=4 and energy=0.9"):
        ts.SvdFactorization(rank=4, energy=0.9)
    with pytest.raises(ConfigError, match=r"rank must be an integer >= 1, got 0"):
        ts.SvdFactorization(rank=0)
    with pytest.raises(ConfigError, match=r"ratio must be in \(0, 1\), got 1.0"):
        ts.SvdFactorization(ratio=1.0)
    with pytest.raises(ConfigError, match=r"give either a per-layer rule \(rank=8\) or a budget"):
        ts.SvdFactorization(rank=8, budget_params=1000)
    with pytest.raises(ConfigError, match=r"budget_params as a float is a fraction .* got 2.5"):
        ts.SvdFactorization(budget_params=2.5)
    with pytest.raises(ConfigError, match=r"score='loss' .* needs budget_params=, budget_macs= or budget_latency="):
        ts.SvdFactorization(score="loss")
    with pytest.raises(ConfigError, match=r"solver='lagrangian' takes one budget, got budget_params, budget_macs"):
        ts.SvdFactorization(budget_params=0.5, budget_macs=0.5, solver="lagrangian")
    for bad in (0.0, 1.0, 2, 1.5):
        with pytest.raises(ConfigError, match=r"budget_latency is a fraction of the model's measured time in \(0, 1\)"):
            ts.SvdFactorization(budget_latency=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"latency_rounds must be >= 1, got 0"):
        ts.SvdFactorization(budget_latency=0.5, latency_rounds=0)
    with pytest.raises(ConfigError, match=r"SvdFactorization.mode must be .*got .tucker."):
        ts.SvdFactorization(mode="tucker")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"score='loss' measures each layer with evaluate"):
        ts.factorize(ts.models.create("lenet300"), ts.SvdFactorization(budget_params=0.5, score="loss"))
    with pytest.raises(ConfigError, match=r"per_layer pattern 'fc9' matches no"):
        ts.factorize(ts.models.create("lenet300"), ts.SvdFactorization(per_layer={"fc9": 4}))
    with pytest.raises(ConfigError, match=r"is a lowrank method; use ts.factorize\(\)"):
        ts.prune(ts.models.create("lenet300"), ts.SvdFactorization())

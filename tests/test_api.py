"""The verbs in api.py: type checks, family checks, history."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

import torchshrink as ts
from torchshrink.config import Config, check_range
from torchshrink.errors import ConfigError
from torchshrink.registry import Context, register


def _scale_handler(model: nn.Module, config: _ScaleForTest, ctx: Context) -> nn.Module:
    for p in model.parameters():
        p.data.mul_(config.factor)
    return model


@register(family="other", handler=_scale_handler, name="scale_for_test")
@dataclasses.dataclass(frozen=True, kw_only=True)
class _ScaleForTest(Config):
    factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("factor", self.factor, 0.0, None, low_inclusive=False)


def test_apply_runs_handler_and_records_history() -> None:
    m = nn.Linear(2, 2)
    w = m.weight.detach().clone()
    out = ts.apply(m, _ScaleForTest(factor=2.0))
    assert out is m
    assert (m.weight == 2 * w).all()
    assert out.torchshrink_history == [{"method": "scale_for_test", "factor": 2.0}]


def test_family_mismatch_names_the_right_verb() -> None:
    with pytest.raises(ConfigError, match=r"_ScaleForTest is a other method"):
        ts.prune(nn.Linear(2, 2), _ScaleForTest())


def test_non_config_and_non_module_rejected() -> None:
    with pytest.raises(ConfigError, match="expected a torchshrink method config"):
        ts.apply(nn.Linear(2, 2), {"sparsity": 0.5})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected an nn.Module"):
        ts.apply("model", _ScaleForTest())  # type: ignore[arg-type]


def test_config_validation_and_round_trip() -> None:
    with pytest.raises(ConfigError, match=r"factor must be in \(0, inf\], got -1"):
        _ScaleForTest(factor=-1)
    with pytest.raises(ConfigError, match=r"_ScaleForTest.factor must be float, got 'x'"):
        _ScaleForTest(factor="x")  # type: ignore[arg-type]
    cfg = _ScaleForTest(factor=3)
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['factr'\].*Did you mean 'factor'"):
        Config.from_dict({"method": "scale_for_test", "factr": 2})
    with pytest.raises(ConfigError, match="unknown method 'scale_for_tset'. Did you mean 'scale_for_test'"):
        Config.from_dict({"method": "scale_for_tset"})


def test_verbs_are_their_subpackages() -> None:
    import inspect

    import torchshrink.cluster as tc
    import torchshrink.export as te
    import torchshrink.plan as tpl
    import torchshrink.prune as tp
    import torchshrink.report as tr

    for module, verb in ((tp, ts.prune), (tc, ts.cluster), (te, ts.export), (tpl, ts.plan), (tr, ts.report)):
        assert inspect.ismodule(module) and module is verb and callable(verb)
    assert tp.MagnitudePruning is ts.MagnitudePruning
    model = ts.models.create("lenet300")
    out = ts.prune(model, ts.MagnitudePruning(sparsity=0.5))
    w = out.fc1.weight
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.01

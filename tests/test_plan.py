"""ts.plan: every candidate measured for real; the best metric within budget wins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.errors import ConfigError


@pytest.fixture()
def setup() -> Iterator[tuple[nn.Module, torch.Tensor, object]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ts.models.create("lenet300").eval()
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)

    def fidelity(m: nn.Module) -> float:  # higher is better: minus the output error
        with torch.no_grad():
            return -float((m.eval()(x) - ref).pow(2).mean())

    yield model, x, fidelity
    torch.set_num_threads(before)  # later test files run at the default again


def test_best_is_the_highest_metric_within_the_byte_budget(setup: tuple) -> None:
    model, x, fidelity = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cands = [ts.DynamicInt8(), ts.WeightOnly(bits=4, group_size=None), ts.WeightOnly(bits=2, group_size=None),
             [ts.MagnitudePruning(sparsity=0.5), ts.KMeansSharing(bits=4)]]
    res = ts.plan(model, cands, evaluate=fidelity, max_bytes=0.2, example=x[:8], latency_runs=3, progress=False)
    limit = 0.2 * res.baseline.file_bytes
    assert res.budget["max_bytes"] == pytest.approx(limit)
    fits = [c for c in res.candidates if c.meets_budget]
    assert fits and all(c.file_bytes <= limit for c in fits)
    assert all(c.file_bytes > limit for c in res.candidates if not c.meets_budget and c.skipped is None)
    assert res.best is max(fits, key=lambda c: c.metric)
    assert res.model is not None and fidelity(res.model) == pytest.approx(res.best.metric)
    assert all(c.latency_ms is not None and c.latency_ms > 0 for c in res.candidates)
    for k, v in model.state_dict().items():  # the given model is left as it was
        assert torch.equal(v, before[k])
    text = res.table()
    assert "baseline (as given)" in text and "*" in text
    assert res.to_dict()["best"] == res.best.name


def test_a_recipe_the_model_cannot_take_is_skipped_with_the_reason(setup: tuple) -> None:
    model, x, fidelity = setup
    # strict: a group size that does not divide a layer is an error, not a per-layer fallback
    res = ts.plan(model, [ts.WeightOnly(bits=4, group_size=128, strict=True), ts.WeightOnly(bits=8, group_size=None)],
                  evaluate=fidelity, max_bytes=0.5, example=x[:8], latency_runs=3, progress=False)
    skipped, ok = res.candidates
    assert skipped.skipped is not None and "group_size=128" in skipped.skipped
    assert ok.skipped is None and res.best is ok
    assert "skipped: " in res.table()


def test_no_candidate_within_budget_gives_no_best(setup: tuple) -> None:
    model, x, fidelity = setup
    res = ts.plan(model, [ts.DynamicInt8()], evaluate=fidelity, max_bytes=1000, example=x[:8], latency_runs=3,
                  progress=False)
    assert res.best is None and res.model is None
    assert res.candidates[0].meets_budget is False


def test_plan_bad_input_words(setup: tuple) -> None:
    model, _, fidelity = setup
    with pytest.raises(ConfigError, match=r"plan\(\) needs a budget: max_bytes= and/or max_latency="):
        ts.plan(model, [ts.DynamicInt8()], evaluate=fidelity)
    with pytest.raises(ConfigError, match=r"max_latency must be a positive number .* got -1"):
        ts.plan(model, [ts.DynamicInt8()], evaluate=fidelity, max_latency=-1)
    with pytest.raises(ConfigError, match=r"plan\(\) got no candidates"):
        ts.plan(model, [], evaluate=fidelity, max_bytes=0.5)
    with pytest.raises(ConfigError, match=r"a plan candidate must be a Recipe, a method config"):
        ts.plan(model, [42], evaluate=fidelity, max_bytes=0.5)  # type: ignore[list-item]


def test_default_menu_is_valid_recipes() -> None:
    menu = ts.default_candidates()
    assert len(menu) >= 5
    for r in menu:
        assert ts.Recipe.from_dict(r.to_dict()) == r  # each round-trips as YAML-able data


def test_plot_writes_a_png(setup: tuple, tmp_path: object) -> None:
    pytest.importorskip("matplotlib")
    model, x, fidelity = setup
    res = ts.plan(model, [ts.DynamicInt8(), ts.WeightOnly(bits=4, group_size=None)], evaluate=fidelity,
                  max_bytes=0.2, example=x[:8], latency_runs=3, progress=False)
    path = f"{tmp_path}/plan.png"
    res.plot(path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

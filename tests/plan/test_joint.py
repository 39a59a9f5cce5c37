"""ts.plan(search="joint"): the option database, the per-layer plan, its file and its recipe."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.codec.container import encode_model
from torchshrink.errors import ConfigError
from torchshrink.plan.options import LayerOption, build_database

MENU = [LayerOption(sparsity=0.5), LayerOption(sparsity=0.9), LayerOption(bits=8, group_size=None),
        LayerOption(bits=4, group_size=None), LayerOption(kmeans_bits=4), LayerOption(rank=8),
        LayerOption(sparsity=0.9, kmeans_bits=4)]


def _menu(name: str, m: nn.Module) -> list[LayerOption]:
    return MENU


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[nn.Module, list[torch.Tensor], object]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ts.models.create("lenet300").eval()
    calib = [torch.rand(32, 1, 28, 28) for _ in range(2)]
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)

    def fidelity(m: nn.Module) -> float:  # higher is better: minus the output error
        with torch.no_grad():
            return -float((m.eval()(x) - ref).pow(2).mean())

    # one database for the tests that only solve on it (measuring it is most of their time)
    db = build_database(model, calib, options=_menu, model_error=True, progress=False)
    yield model, calib, fidelity, db
    torch.set_num_threads(before)  # later test files run at the default again


def test_database_rows_are_measured(setup: tuple) -> None:
    model, calib, _, db = setup
    assert db.layers == ["fc1", "fc2", "fc3"]
    for n in db.layers:
        rows = {r.option.name: r for r in db.rows[n]}
        assert db.rows[n][0].option == LayerOption() and db.rows[n][0].error == 0.0
        assert rows["prune 0.5"].error < rows["prune 0.9"].error
        assert rows["int8"].error < rows["int4"].error and rows["int4"].bytes < rows["int8"].bytes
        assert rows["prune 0.9 + kmeans 4b"].bytes < rows["prune 0.9"].bytes
        assert rows["svd r=8"].macs < rows["as is"].macs
        assert all(r.model_error is not None and r.model_error >= -1e-9 for r in db.rows[n])
    # the file of the model as given is the fixed part plus each layer's bytes, exactly
    assert db.fixed_bytes + sum(db.rows[n][0].bytes for n in db.layers) == len(encode_model(model))


def test_database_round_trips_through_plain_json(setup: tuple) -> None:
    import json

    from torchshrink.plan.options import OptionDatabase

    db = setup[3]
    again = OptionDatabase.from_dict(json.loads(json.dumps(db.to_dict())))
    assert again == db


def test_layer_bytes_predict_the_file(setup: tuple) -> None:
    model, calib, _, db = setup
    rows = {r.option.name: r for r in db.rows["fc1"]}
    for name, opt in (("prune 0.9 + kmeans 4b", MENU[-1]), ("int4", MENU[3])):
        m = copy.deepcopy(model)
        for cfg in opt.configs("fc1"):
            m = ts.apply(m, cfg)
        predicted = db.fixed_bytes + rows[name].bytes + sum(db.rows[n][0].bytes for n in ("fc2", "fc3"))
        real = len(encode_model(m))
        assert abs(real - predicted) < 0.01 * real + 600, (name, real, predicted)


def test_joint_plan_meets_the_budget_on_the_file_and_its_recipe_reproduces_it(setup: tuple, tmp_path) -> None:
    model, calib, fidelity, db = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = ts.plan(model, evaluate=fidelity, max_bytes=0.05, calibration=calib, search="joint", database=db,
                  pareto_points=4, verify_points=2, retries=1, progress=False)  # re-solves: test_calibrate
    limit = 0.05 * res.baseline.file_bytes
    assert res.search == "joint" and res.budget["max_bytes"] == pytest.approx(limit)
    assert res.best is not None and res.best.meets_budget and res.best.file_bytes <= limit
    assert res.model is not None
    # per-layer table: every layer once, shares add up
    assert [r["layer"] for r in res.per_layer] == ["fc1", "fc2", "fc3"]
    assert sum(r["bytes_share"] for r in res.per_layer) == pytest.approx(1.0)
    assert sum(r["error_share"] for r in res.per_layer) == pytest.approx(1.0)
    assert any(r["option"] != "as is" for r in res.per_layer)
    # the recipe YAML reproduces the file
    recipe = ts.load_recipe(res.recipe.to_yaml())
    again = ts.compress(copy.deepcopy(model), recipe, calibration=calib, progress=False).model
    path = str(tmp_path / "again.tsz")
    ts.save(again, path)
    assert os.path.getsize(path) == res.best.file_bytes
    assert fidelity(ts.load(path)) == pytest.approx(res.best.metric)
    # the Pareto sweep: more bytes never predicts more error
    errs = [p["predicted_error"] for p in res.pareto if p["feasible"]]
    assert len(errs) >= 3 and all(a >= b - 1e-12 for a, b in zip(errs, errs[1:]))
    assert any(p["file_bytes"] is not None and p["metric"] is not None for p in res.pareto)
    for k, v in model.state_dict().items():  # the given model is left as it was
        assert torch.equal(v, before[k])
    # the database is reusable for another budget, without measuring again
    res2 = ts.plan(model, evaluate=fidelity, max_bytes=0.2, calibration=calib, search="joint",
                   database=res.database, pareto_points=0, progress=False)
    assert res2.seconds["database"] == 0.0 and res2.best is not None
    assert res2.best.metric >= res.best.metric and res2.best.file_bytes <= 0.2 * res.baseline.file_bytes


def test_an_impossible_budget_gives_no_best(setup: tuple) -> None:
    model, calib, fidelity, db = setup
    res = ts.plan(model, evaluate=fidelity, max_bytes=500, calibration=calib, search="joint", database=db,
                  pareto_points=0, progress=False)
    assert res.best is None and res.model is None
    assert res.candidates and not res.candidates[0].meets_budget


def test_joint_bad_input_words(setup: tuple) -> None:
    model, calib, fidelity, _ = setup
    with pytest.raises(ConfigError, match=r"needs a budget: max_bytes=, max_macs= and/or max_latency="):
        ts.plan(model, evaluate=fidelity, calibration=calib, search="joint")
    with pytest.raises(ConfigError, match=r"finetune=2 needs train="):
        ts.plan(model, evaluate=fidelity, calibration=calib, search="joint", max_bytes=0.1, finetune=2)
    with pytest.raises(ConfigError, match=r"needs calibration= batches"):
        ts.plan(model, evaluate=fidelity, search="joint", max_bytes=0.1)
    with pytest.raises(ConfigError, match=r"got options of the joint search: \['finetune'\]"):
        ts.plan(model, evaluate=fidelity, max_bytes=0.1, finetune=2)
    with pytest.raises(ConfigError, match=r"search=\.\.\.\) must be 'menu' or 'joint', got 'greedy'"):
        ts.plan(model, evaluate=fidelity, max_bytes=0.1, search="greedy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"a latency budget needs example="):
        ts.plan(model, evaluate=fidelity, calibration=calib, search="joint", max_latency=0.5)


def test_two_budgets_bytes_and_macs(setup: tuple) -> None:
    model, calib, fidelity, db = setup
    res = ts.plan(model, evaluate=fidelity, max_bytes=0.3, max_macs=0.5, calibration=calib, search="joint",
                  database=db, pareto_points=0, progress=False)
    assert res.best is not None and res.best.file_bytes <= 0.3 * res.baseline.file_bytes
    macs = sum(r["macs"] for r in res.per_layer)
    assert macs <= res.budget["max_macs"]
    assert any(r["option"].startswith("svd") for r in res.per_layer)  # only a rank cuts MACs


def test_latency_budget_is_measured_on_the_inference_form(setup: tuple) -> None:
    model, calib, fidelity, _ = setup
    small = [LayerOption(rank=8), LayerOption(bits=8, group_size=None)]
    res = ts.plan(model, evaluate=fidelity, max_latency=0.9, calibration=calib, example=calib[0], search="joint",
                  options=lambda n, m: small, latency_runs=5, pareto_points=0, progress=False)
    assert all(r["latency_ms"] is not None for r in res.per_layer)
    assert res.database.fixed_latency_ms is not None
    tried = res.candidates[0]
    assert tried.latency_ms is not None and tried.latency_ms > 0
    if res.best is not None:  # measured, not predicted: a noisy machine may miss, then best is None
        assert res.best.latency_ms <= res.budget["max_latency_ms"]


def test_a_verified_front_point_with_a_better_metric_replaces_the_pick(setup: tuple, tmp_path) -> None:
    # A metric the summed layer errors cannot predict (here: smaller files score higher): the
    # front's smallest verified plan beats the DP's pick, which spends the budget on accuracy.
    model, calib, _, db = setup

    def smaller_is_better(m: nn.Module) -> float:
        return -float(len(encode_model(m)))

    res = ts.plan(model, evaluate=smaller_is_better, max_bytes=0.1, calibration=calib, search="joint", database=db,
                  pareto_points=4, verify_points=4, retries=0, progress=False)
    dp = [c for c in res.candidates if c.name.startswith("joint plan, try")]
    assert res.best is not None and res.best.name == "joint plan (a verified front point)"
    assert res.best.meets_budget and res.best.file_bytes <= 0.1 * res.baseline.file_bytes
    assert dp and res.best.metric > max(c.metric for c in dp)
    # what is returned is that plan: its recipe reproduces the file, per_layer describes it
    again = ts.compress(copy.deepcopy(model), ts.load_recipe(res.recipe.to_yaml()), calibration=calib,
                        progress=False).model
    path = str(tmp_path / "front.tsz")
    ts.save(again, path)
    assert os.path.getsize(path) == res.best.file_bytes
    ts.save(res.model, str(tmp_path / "model.tsz"))
    assert os.path.getsize(tmp_path / "model.tsz") == res.best.file_bytes


def test_fractional_latency_budget_times_plans_in_turns_with_the_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    # a machine that gets slower with every call: priced relative to the baseline timed in the
    # same rounds, a plan at half the baseline's time is half the baseline's first time
    import types

    from torchshrink.measure import latency
    from torchshrink.plan import joint

    base, plan = nn.Linear(2, 2), nn.Linear(2, 2)
    calls = {"n": 0}

    def fake_time(m: nn.Module, x: object, **kw: object) -> object:
        calls["n"] += 1
        drift = 1.1 ** calls["n"]
        return types.SimpleNamespace(median_ms=drift * (10.0 if m is base else 5.0))

    monkeypatch.setattr(latency, "time_forward", fake_time)
    monkeypatch.setattr("torchshrink.infer.for_inference", lambda m, example=None: m)
    v = joint._Verifier(base, lambda m: 0.0, torch.zeros(1, 2), None, None, None, True, 9, 1)
    absolute = v.time(plan)
    v.relative_to = (base, 10.0)
    relative = v.time(plan)
    assert absolute == pytest.approx(5.0 * 1.1)
    # each round: baseline then plan, one call apart; the ratio is 0.5 x 1.1 in every round
    assert relative == pytest.approx(10.0 * 0.5 * 1.1)
    assert calls["n"] == 1 + 2 * joint._Verifier.ROUNDS

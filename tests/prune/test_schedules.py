from __future__ import annotations

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.prune import (
    GradualPruning,
    SparsityRegularization,
    iterative_pruning,
    polynomial_sparsity,
)
from torchshrink.prune.regularization import group_lasso_penalty


def test_polynomial_schedule_values() -> None:
    kw = dict(initial=0.0, final=0.8, begin=10, end=110)
    assert polynomial_sparsity(0, **kw) == 0.0
    assert polynomial_sparsity(110, **kw) == 0.8 and polynomial_sparsity(500, **kw) == 0.8
    assert polynomial_sparsity(60, **kw) == pytest.approx(0.8 - 0.8 * 0.5**3)


def test_gradual_pruning_callback_reaches_exact_sparsity(lenet300: nn.Module, img_loader) -> None:
    cb = GradualPruning(ts.MagnitudePruning(sparsity=0.9, scope="global"), frequency=2)
    ts.fit(lenet300, img_loader, epochs=2, lr=1e-3, callbacks=[cb], progress=False)
    sparsities = [s for _, s in cb.history]
    assert sparsities == sorted(sparsities) and len(sparsities) > 3
    zeros = sum(int((m.weight == 0).sum()) for m in (lenet300.fc1, lenet300.fc2, lenet300.fc3))
    total = sum(m.weight.numel() for m in (lenet300.fc1, lenet300.fc2, lenet300.fc3))
    assert abs(zeros / total - 0.9) <= 0.001


def test_iterative_pruning(lenet300: nn.Module, img_loader) -> None:
    recs = iterative_pruning(lenet300, ts.MagnitudePruning(per_layer={"fc1": 0.9, "fc2": 0.8, "fc3": 0.5}),
                             img_loader, rounds=3, val=img_loader)
    assert [r["round"] for r in recs] == [1, 2, 3] and "accuracy" in recs[-1]
    assert abs(float((lenet300.fc1.weight == 0).float().mean()) - 0.9) <= 0.001
    assert abs(float((lenet300.fc3.weight == 0).float().mean()) - 0.5) <= 0.001


def test_regularization_terms_and_effect(img_loader) -> None:
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]]))
    assert float(group_lasso_penalty([lin]).detach()) == pytest.approx(3**0.5 * (5 + 1), rel=1e-5)
    reg = SparsityRegularization("l1", strength=2.0)
    assert float(reg.extra_loss(nn.Sequential(lin), ts.train.FitState()).detach()) == pytest.approx(2.0 * 8.0)

    def l1(model: nn.Module) -> float:
        return sum(float(m.weight.abs().sum()) for m in (model.fc1, model.fc2, model.fc3))

    plain, reg_model = ts.models.create("lenet300"), ts.models.create("lenet300")
    reg_model.load_state_dict(plain.state_dict())
    ts.fit(plain, img_loader, epochs=1, progress=False)
    ts.fit(reg_model, img_loader, epochs=1, progress=False,
           callbacks=[SparsityRegularization("group_lasso", strength=1e-3)])
    assert l1(reg_model) < l1(plain)
    with pytest.raises(ts.ConfigError, match="kind must be 'l1' or 'group_lasso'"):
        SparsityRegularization("l0")  # type: ignore[arg-type]

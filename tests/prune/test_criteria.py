from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchshrink as ts
from torchshrink.prune import weight_scores
from torchshrink.prune.obs import obs_prune


@pytest.mark.parametrize("criterion", ["l1", "l2", "activation", "wanda", "apoz", "taylor", "fisher", "obs"])
def test_every_criterion_hits_exact_sparsity(criterion: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    loader = DataLoader(TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))), batch_size=16)
    ts.prune(model, ts.MagnitudePruning(sparsity=0.75, criterion=criterion), calibration=loader)
    for m in (model[1], model[3]):
        assert abs(float((m.weight == 0).float().mean()) - 0.75) <= 0.001


def test_activation_scores_follow_input_scale() -> None:
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    x = torch.tensor([[10.0, 1.0, 0.0, 3.0]]).repeat(8, 1)
    s = weight_scores(lin, [("", lin)], "wanda", [x])[""]
    assert torch.equal(s.argsort(1)[0], torch.tensor([2, 1, 3, 0]))
    apoz = weight_scores(lin, [("", lin)], "apoz", [x])[""]
    assert apoz[0, 2] == 0 and apoz[0, 0] == 1


def test_taylor_needs_labels(lenet300: nn.Module) -> None:
    unlabeled = [torch.randn(4, 1, 28, 28)]
    with pytest.raises(ts.ConfigError, match="needs labeled calibration batches"):
        ts.prune(lenet300, ts.MagnitudePruning(criterion="taylor"), calibration=unlabeled)


def test_obs_update_beats_magnitude_on_layer_output() -> None:
    torch.manual_seed(0)
    # correlated inputs: where OBS's compensation matters
    base = torch.randn(512, 16)
    x = base @ torch.randn(16, 64)
    lin = nn.Linear(64, 32, bias=False)
    w = lin.weight.detach()
    h = x.T @ x / x.shape[0]
    new_w, keep = obs_prune(w, h, 0.5)
    assert int((~keep).sum()) == w.numel() // 2 and torch.all(new_w[~keep] == 0)
    mag = w * (w.abs() > w.abs().flatten().kthvalue(w.numel() // 2).values)
    ref = x @ w.T
    err_obs = (x @ new_w.T - ref).pow(2).mean()
    err_mag = (x @ mag.T - ref).pow(2).mean()
    assert err_obs < 0.5 * err_mag


def test_obs_with_global_scope_is_refused(lenet300: nn.Module, img_loader) -> None:
    with pytest.raises(ts.ConfigError, match="use scope='layer'"):
        ts.prune(lenet300, ts.MagnitudePruning(criterion="obs", scope="global"), calibration=img_loader)


def test_obs_on_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    calib = [torch.randn(4, 3, 10, 10) for _ in range(2)]
    ts.prune(model, ts.MagnitudePruning(sparsity=0.5, criterion="obs", targets=["2"]), calibration=calib)
    assert abs(float((model[2].weight == 0).float().mean()) - 0.5) <= 0.001
    assert torch.isfinite(model(torch.randn(2, 3, 10, 10))).all()


def test_calibration_loader_of_pairs_is_read(lenet300: nn.Module) -> None:
    loader = DataLoader(TensorDataset(torch.randn(8, 784), torch.randint(0, 10, (8,))), batch_size=4)
    ts.prune(lenet300, ts.MagnitudePruning(sparsity=0.5, criterion="fisher"), calibration=loader)
    assert abs(float((lenet300.fc2.weight == 0).float().mean()) - 0.5) <= 0.001

"""BatchNorm statistics re-estimated after a compression stage (compress, the joint planner)."""

import copy
import warnings

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.nn.batchnorm import batchnorm_stats_restored, recalibrate_or_warn
from torchshrink.plan.options import LayerOption, build_database
from torchshrink.recipe import Recipe, Stage, compress


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 10, 10, generator=g) * 2 + 1, torch.randint(0, 4, (16,), generator=g))
            for _ in range(n)]


def _trained_stats(model: nn.Module, batches: list) -> nn.Module:
    # running statistics of the model as it is (what a trained model carries)
    model.train()
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = None
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = 0.1
    return model.eval()


def _first_bn_input_mean(model: nn.Module, batches: list) -> torch.Tensor:
    with torch.no_grad():
        outs = [model[0](x) for x, _ in batches]
    return torch.cat([o.transpose(0, 1).reshape(8, -1) for o in outs], 1).mean(1)


def test_compress_reestimates_batchnorm_after_a_stage() -> None:
    batches = _batches()
    model = _trained_stats(_convnet(), batches)
    stale = model[1].running_mean.clone()
    rec = Recipe((Stage(ts.MagnitudePruning(sparsity=0.8)),))
    off = compress(copy.deepcopy(model), rec, calibration=batches, progress=False, measure_file=False,
                   recalibrate_bn=False).model
    assert torch.equal(off[1].running_mean, stale)  # the statistics of the unpruned conv
    on = compress(copy.deepcopy(model), rec, calibration=batches, progress=False, measure_file=False).model
    # the pruned conv's own output statistics (the plain average over the batches; equal-size batches)
    assert torch.allclose(on[1].running_mean, _first_bn_input_mean(on, batches), atol=1e-5)
    assert not torch.allclose(on[1].running_mean, stale, atol=1e-3)
    assert not on.training and not on[1].training


def test_model_without_batchnorm_reads_no_batch() -> None:
    class Counting(list):
        reads = 0

        def __iter__(self):  # type: ignore[override]
            Counting.reads += 1
            return super().__iter__()

    model = nn.Sequential(nn.Linear(4, 4))
    assert recalibrate_or_warn(model, Counting([torch.randn(2, 4)])) == 0
    assert Counting.reads == 0


def test_a_batch_batchnorm_cannot_take_warns_and_keeps_the_statistics() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    model[1].running_mean.fill_(3.0)
    with pytest.warns(UserWarning, match="BatchNorm statistics were not re-estimated"):
        assert recalibrate_or_warn(model, [torch.randn(1, 4)], where="stage 1 (magnitude_pruning)") == 0
    assert torch.equal(model[1].running_mean, torch.full((4,), 3.0))


def test_stats_restored_after_the_block() -> None:
    model = _trained_stats(_convnet(), _batches())
    before = copy.deepcopy(model.state_dict())
    with batchnorm_stats_restored(model):
        recalibrate_or_warn(model, [(torch.randn(8, 1, 10, 10) * 5, None)])
        assert not torch.equal(model[1].running_mean, before["1.running_mean"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_option_database_prices_errors_with_matched_batchnorm() -> None:
    batches = _batches()
    model = _trained_stats(_convnet(), batches)
    before = copy.deepcopy(model.state_dict())

    def opts(name: str, m: nn.Module) -> list[LayerOption]:
        return [LayerOption(sparsity=0.9)]

    kw = dict(options=opts, targets=["0"], calibration_batches=3, model_error=True, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = build_database(model, batches, recalibrate_bn=False, **kw)
        matched = build_database(model, batches, **kw)
    for k, v in model.state_dict().items():  # the shared model is left as it was
        assert torch.equal(v, before[k]), k
    e_plain, e_matched = plain.rows["0"][1].model_error, matched.rows["0"][1].model_error
    assert e_plain is not None and e_matched is not None
    # the same pruned conv, judged with its BatchNorm re-estimated: a smaller divergence
    assert e_matched < e_plain
    assert plain.rows["0"][0].model_error == pytest.approx(0.0, abs=1e-6)

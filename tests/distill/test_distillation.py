"""The Distillation stage, the reusable loss, hints, attention transfer and teacher caching."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchshrink as ts
from torchshrink.config import Config
from torchshrink.distill import (
    DistillLoss,
    cache_teacher_outputs,
    fewer_blocks,
    kd_loss,
    make_distill_loss,
    mlp,
    with_teacher_cache,
)
from torchshrink.errors import ConfigError


def _data(n: int = 256, d: int = 20, c: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, c, generator=g)
    return TensorDataset(x, (x @ w).argmax(1))


def _teacher(d: int = 20, c: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    t = mlp(d, [64], c)
    ts.fit(t, DataLoader(_data(), batch_size=32, shuffle=True), epochs=8, lr=1e-2, progress=False)
    return t


def test_config_round_trip_excludes_teacher() -> None:
    teacher = nn.Linear(3, 2)
    cfg = ts.Distillation(teacher=teacher, temperature=2.0, alpha=0.5, features={"0": "1"})
    d = cfg.to_dict()
    assert "teacher" not in d
    assert d["method"] == "distillation" and d["temperature"] == 2.0 and d["features"] == {"0": "1"}
    back = Config.from_dict(d)
    assert isinstance(back, ts.Distillation) and back.teacher is None and back == cfg
    assert ts.get_method("distillation").family == "distill"
    assert "teacher=" not in repr(cfg)


def test_config_validation_words() -> None:
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\], got 1.5"):
        ts.Distillation(alpha=1.5)
    with pytest.raises(ConfigError, match="teacher must be an nn.Module"):
        ts.Distillation(teacher="resnet")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="teacher_outputs='cached' stores the teacher's logits only"):
        ts.Distillation(teacher_outputs="cached", features={"a": "b"})
    with pytest.raises(ConfigError, match="features must map student layer names"):
        ts.Distillation(features={})


def test_distillation_stage_trains_student_towards_teacher() -> None:
    teacher = _teacher()
    torch.manual_seed(1)
    student = mlp(20, [32], 4)
    loader = DataLoader(_data(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    x = _data().tensors[0]
    with torch.no_grad():
        before = float(kd_loss(student(x), teacher(x), temperature=2.0))
    out = ts.apply(student, ts.Distillation(teacher=teacher, temperature=2.0, alpha=0.9, epochs=6, lr=1e-2),
                   train=loader, val=DataLoader(_data(seed=1), batch_size=128), progress=False)
    assert out is student
    with torch.no_grad():
        after = float(kd_loss(student(x), teacher(x), temperature=2.0))
    assert after < 0.5 * before
    assert out.torchshrink_history[-1]["method"] == "distillation"
    # No forward hooks are left behind on either model.
    for m in (*student.modules(), *teacher.modules()):
        assert not m._forward_hooks


def test_stage_without_teacher_self_distills_from_a_snapshot() -> None:
    torch.manual_seed(0)
    model = mlp(20, [16], 4)
    ref = copy.deepcopy(model)
    loader = DataLoader(_data(), batch_size=64)
    ts.apply(model, ts.Distillation(epochs=1, alpha=1.0, lr=1e-3), train=loader, progress=False)
    x = _data().tensors[0]
    # Matching a frozen copy of itself: the model barely moves, and nothing blows up.
    with torch.no_grad():
        assert float(kd_loss(model(x), ref(x), temperature=4.0)) < 1e-2
    with pytest.raises(ConfigError, match="needs data: pass train=loader"):
        ts.apply(model, ts.Distillation())


def test_shape_mismatch_and_unknown_layer_errors() -> None:
    teacher = mlp(20, [16], 5)  # 5 classes
    student = mlp(20, [8], 4)  # 4 classes
    loader = DataLoader(_data(), batch_size=32)
    with pytest.raises(ConfigError, match=r"teacher and student outputs have different shapes: student \(32, 4\), teacher \(32, 5\)"):
        ts.apply(student, ts.Distillation(teacher=teacher, epochs=1), train=loader, progress=False)
    teacher = mlp(20, [16], 4)
    # The error lists the model's layer names so a typo is easy to fix.
    with pytest.raises(ConfigError, match=r"student feature layer pattern 'fc1' matches no Module layer in Sequential\. Layers: 0, 1, 2, 3"):
        ts.apply(student, ts.Distillation(teacher=teacher, features={"fc1": "1"}), train=loader, progress=False)
    with pytest.raises(ConfigError, match=r"teacher feature layer pattern 'blocks.9' matches no Module layer.*Layers: 0, 1, 2, 3"):
        make_distill_loss(teacher, {"features": {"1": "blocks.9"}})
    with pytest.raises(ConfigError, match=r"is a pattern, not a layer name"):
        make_distill_loss(teacher, {"features": {"1": "*"}})


def test_feature_hints_train_an_adapter_when_widths_differ() -> None:
    teacher = _teacher()
    torch.manual_seed(1)
    student = mlp(20, [32], 4)
    # Hint on the first Linear's output (pre-activation): 32 student features -> 64 teacher ones.
    loss = make_distill_loss(teacher, ts.Distillation(features={"1": "1"}, feature_weight=10.0), student=student)
    loader = DataLoader(_data(), batch_size=32, shuffle=True)
    x = _data().tensors[0]
    loss(student, (x, _data().tensors[1]))  # first call builds the 32 -> 64 adapter
    adapter = loss.adapters["1->1"]
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (32, 64)
    w0 = adapter.weight.detach().clone()

    def hint() -> float:
        with torch.no_grad():
            return float(nn.functional.mse_loss(adapter(student[1](student[0](x))), teacher[1](teacher[0](x))))

    before = hint()
    # Passing the loss alone (no callbacks) still trains the adapter: it steps lazily.
    ts.fit(student, loader, epochs=1, lr=1e-2, loss=loss, progress=False)
    assert not torch.equal(adapter.weight, w0)
    # As a callback too, the adapter follows fit's learning rate.
    ts.fit(student, loader, epochs=10, lr=1e-2, loss=loss, callbacks=[loss], progress=False)
    assert loss._adapter_opt is not None and loss._adapter_opt.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert hint() < 0.3 * before


def test_attention_transfer_between_transformers() -> None:
    torch.manual_seed(0)
    teacher = ts.models.create("gpt_tiny", n_layer=2, n_embd=32, n_head=4, block_size=16)
    student = ts.models.create("gpt_tiny", n_layer=1, n_embd=16, n_head=2, block_size=16)
    x = torch.randint(0, 256, (4, 16))
    loss = make_distill_loss(teacher, {"attention": {"blocks.0.attn": "blocks.1.attn"}, "alpha": 1.0,
                                       "attention_weight": 1.0}, student=student)
    plain = make_distill_loss(teacher, {"alpha": 1.0})
    batch = (x, torch.randint(0, 256, (4, 16)))
    with torch.no_grad():
        with_att = float(loss(student, batch))
        without = float(plain(student, batch))
    assert with_att > without  # the attention term is positive for unrelated random models
    # Attention pairs with something that is neither attention nor a conv map are refused.
    bad = make_distill_loss(teacher, {"attention": {"blocks.0.mlp": "blocks.1.mlp"}})
    with pytest.raises(ConfigError, match="neither a self-attention module"):
        bad(student, batch)


def test_cached_teacher_outputs_match_on_the_fly() -> None:
    teacher = _teacher()
    ds = _data()
    cached = cache_teacher_outputs(teacher, ds, batch_size=100)
    assert len(cached.tensors) == 3
    torch.testing.assert_close(cached.tensors[2], teacher(ds.tensors[0]).detach())
    loader = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(3))
    cl = with_teacher_cache(teacher, loader)
    assert cl.batch_size == 32 and isinstance(cl.sampler, torch.utils.data.RandomSampler)
    torch.manual_seed(1)
    student = mlp(20, [8], 4)
    loss = make_distill_loss(teacher, {"alpha": 0.5, "temperature": 2.0})
    for x, y, t in cl:
        torch.testing.assert_close(t, teacher(x).detach())  # sample-indexed: right under shuffling
        torch.testing.assert_close(loss(student, (x, y, t)), loss(student, (x, y)))
        break
    # The stage with caching trains as well as the on-the-fly stage on identical settings.
    s1, s2 = copy.deepcopy(student), copy.deepcopy(student)
    for s, mode in ((s1, "on_the_fly"), (s2, "cached")):
        ld = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(3))
        ts.apply(s, ts.Distillation(teacher=teacher, epochs=2, teacher_outputs=mode), train=ld, progress=False)
    torch.testing.assert_close(s1(ds.tensors[0]), s2(ds.tensors[0]), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="needs the train loader to be a torch DataLoader over a TensorDataset"):
        with_teacher_cache(teacher, [(ds.tensors[0], ds.tensors[1])])


def test_sequence_distillation_with_fewer_blocks() -> None:
    torch.manual_seed(0)
    teacher = ts.models.create("gpt_tiny", n_layer=4, n_embd=32, n_head=2, block_size=16)
    student = fewer_blocks(teacher)
    assert len(student.blocks) == 2 and student.config.n_layer == 2
    x = torch.randint(0, 256, (8, 16))
    y = torch.randint(0, 256, (8, 16))
    loss = make_distill_loss(teacher, {"alpha": 0.5, "temperature": 2.0})
    value = loss(student, (x, y))
    assert value.shape == () and float(value.detach()) > 0
    value.backward()
    assert student.head.weight.grad is not None
    assert isinstance(loss, DistillLoss)

"""Student builders: thinner copies, fewer transformer blocks, MLPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.distill import fewer_blocks, mlp, thin_copy
from torchshrink.distill.students import _thin_by_construction, _thin_chain
from torchshrink.errors import ConfigError, UnsupportedModelError


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_mlp_shapes() -> None:
    m = mlp(784, [1200, 1200], 10, dropout=0.5, input_dropout=0.2)
    assert [mod.out_features for mod in m if isinstance(mod, nn.Linear)] == [1200, 1200, 10]
    assert sum(isinstance(mod, nn.Dropout) for mod in m) == 3
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match="hidden must list positive layer widths"):
        mlp(784, [], 10)


def test_fewer_blocks_copies_teacher_blocks() -> None:
    torch.manual_seed(0)
    teacher = ts.models.create("gpt_tiny", n_layer=4, n_embd=32, n_head=2, block_size=16)
    student = fewer_blocks(teacher)
    assert student.config.n_layer == 2 and len(student.blocks) == 2
    for s_idx, t_idx in ((0, 0), (1, 2)):  # every other block
        for a, b in zip(student.blocks[s_idx].parameters(), teacher.blocks[t_idx].parameters()):
            assert torch.equal(a, b) and a is not b
    assert torch.equal(student.tok_emb.weight, teacher.tok_emb.weight)
    first = fewer_blocks(teacher, 3, keep="first")
    assert torch.equal(first.blocks[2].ln1.weight, teacher.blocks[2].ln1.weight) and len(first.blocks) == 3
    picked = fewer_blocks(teacher, keep=[1, 3])
    assert torch.equal(picked.blocks[1].attn.q_proj.weight, teacher.blocks[3].attn.q_proj.weight)
    x = torch.randint(0, 256, (2, 16))
    assert student(x).shape == teacher(x).shape
    with pytest.raises(ConfigError, match=r"n_blocks must be in \[1, 4\]"):
        fewer_blocks(teacher, 5)
    with pytest.raises(UnsupportedModelError, match="has no nn.ModuleList attribute 'blocks'"):
        fewer_blocks(ts.models.create("lenet300"))


def test_thin_copy_lenet300_keeps_largest_channels() -> None:
    torch.manual_seed(0)
    model = ts.models.create("lenet300")
    x = ts.models.example_input(model, 4)
    thin = thin_copy(model, 0.5, example=x)
    assert (thin.fc1.out_features, thin.fc2.in_features, thin.fc2.out_features, thin.fc3.out_features) == (150, 150, 50, 10)
    assert thin(x).shape == (4, 10)
    # Structured pruning's surgery copies 150 of the teacher's fc1 rows exactly.
    with torch.no_grad():
        assert float(torch.cdist(thin.fc1.weight, model.fc1.weight).min(1).values.max()) < 1e-2  # others ~0.8
    norms = model.fc1.weight.abs().sum(1)
    kept = norms.topk(150).indices.sort().values
    # The fallback chain surgery (used where tracing fails) keeps the largest-L1 fc1 rows.
    chain = _thin_chain(model, 0.5, x)
    assert torch.equal(chain.fc1.weight, model.fc1.weight[kept]) and chain.fc2.weight.shape == (50, 150)
    torch.testing.assert_close(chain(x).shape, thin(x).shape)
    assert model.fc1.out_features == 300  # the teacher is untouched


def test_thin_copy_other_reference_models() -> None:
    lenet5 = ts.models.create("lenet5")
    x = ts.models.example_input(lenet5, 2)
    thin5 = thin_copy(lenet5, 0.5, example=x)
    assert (thin5.conv1.out_channels, thin5.conv2.out_channels, thin5.fc1.in_features, thin5.fc1.out_features) == (10, 25, 400, 250)
    assert thin5(x).shape == (2, 10)
    for name in ("resnet_small", "mobilenet_small", "gpt_tiny"):
        model = ts.models.create(name)
        x = ts.models.example_input(model, 2)
        for thin in (thin_copy(model, 0.5), _thin_by_construction(model, 0.5)):
            assert thin is not None and thin(x).shape == model(x).shape
            ratio = _params(thin) / _params(model)
            assert 0.15 < ratio < 0.6, (name, ratio)
    seq = mlp(20, [40, 40], 3)
    assert [m.out_features for m in thin_copy(seq, 0.25) if isinstance(m, nn.Linear)] == [10, 10, 3]
    with pytest.raises(ConfigError, match=r"width must be in \(0, 1\]"):
        thin_copy(seq, 0.0)

    class WithNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.n = nn.LayerNorm(8)
            self.b = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.n(self.a(x)))

    with pytest.raises(UnsupportedModelError, match="other layers with parameters: n"):
        _thin_chain(WithNorm(), 0.5, None)
    # Without an example input (WithNorm has no input_shape) there is nothing to trace.
    with pytest.raises(UnsupportedModelError, match="thin_copy cannot thin WithNorm"):
        thin_copy(WithNorm(), 0.5)
    # With one, structured pruning's surgery handles the LayerNorm.
    assert thin_copy(WithNorm(), 0.5, example=torch.randn(2, 4)).a.out_features == 4

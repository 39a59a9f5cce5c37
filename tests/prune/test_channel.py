from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.nn.graph import trace_dependencies
from torchshrink.prune import PrunedMultiheadAttention, count_macs, mask_of
from torchshrink.prune.channel import _slices


@pytest.mark.parametrize("name", ["resnet_small", "mobilenet_small", "gpt_tiny"])
def test_ratio_half_shapes_and_macs(name: str) -> None:
    torch.manual_seed(0)
    model = ts.models.create(name).eval()
    x = ts.models.example_input(model, 2)
    y0, macs0 = model(x), count_macs(model, x)
    params0 = sum(p.numel() for p in model.parameters())
    out = ts.prune(model, ts.ChannelPruning(ratio=0.5))
    assert out is model
    y1 = model(x)
    assert y1.shape == y0.shape and torch.isfinite(y1).all()
    assert count_macs(model, x) <= 0.55 * macs0
    assert sum(p.numel() for p in model.parameters()) <= 0.55 * params0
    rebuilt = [m for m in model.modules() if getattr(m, "execution", None) == "physically smaller"]
    assert rebuilt


def test_gpt_heads_removed_and_n_head_updated() -> None:
    model = ts.models.create("gpt_tiny")
    ts.prune(model, ts.ChannelPruning(ratio=0.5))
    for block in model.blocks:
        assert block.attn.n_head == 2
        assert block.attn.q_proj.out_features == 2 * block.attn.head_dim
        assert block.attn.out_proj.in_features == 2 * block.attn.head_dim
        assert block.mlp.fc.out_features == 256


def _kill_channels(model: nn.Module, example: torch.Tensor, ignore: list[str] = ()) -> None:
    """Zero every tensor slice of half the channels of each prunable group (chosen at random),
    so those channels carry nothing and removing them must leave the output unchanged."""
    g, _ = trace_dependencies(model, example, ignore=ignore)
    gen = torch.Generator().manual_seed(1)
    dead = {}
    for r in g.prunable():
        size = g.groups[r].size
        dead[r] = torch.randperm(size, generator=gen)[: size // 2]
    with torch.no_grad():
        for table, side in ((g.module_in, "in"), (g.module_out, "out")):
            for name, cmap in table.items():
                positions = g.kept_indices(cmap, dead)  # positions of the dead channels
                full = sum(s.size * s.expand for s in cmap)
                if len(positions) == full and not any(g.find(s.group) in dead for s in cmap):
                    continue
                for t, dim in _slices(model, name, side):
                    t.index_fill_(dim, positions, 0.0)
        for name, hg in g.heads.items():
            m = model.get_submodule(name)
            r = g.find(hg)
            if r in dead and hasattr(m, "q_proj"):
                pos = g.kept_indices(g.module_out[f"{name}.q_proj"], {r: dead[r]})
                for proj in (m.q_proj, m.k_proj, m.v_proj):
                    proj.weight.index_fill_(0, pos, 0.0)
                    proj.bias.index_fill_(0, pos, 0.0)
                m.out_proj.weight.index_fill_(1, pos, 0.0)


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "resnet_small", "mobilenet_small"])
def test_removing_dead_channels_keeps_output(name: str) -> None:
    torch.manual_seed(0)
    model = ts.models.create(name).eval()
    x = ts.models.example_input(model, 4)
    _kill_channels(model, x)
    ref = model(x)
    ts.prune(model, ts.ChannelPruning(ratio=0.5))
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_gpt_dead_heads_and_neurons_keep_output() -> None:
    torch.manual_seed(0)
    model = ts.models.create("gpt_tiny").eval()
    x = ts.models.example_input(model, 2)
    # LayerNorm statistics see every residual channel, so keep the residual width (ignore the
    # norms) and check heads and MLP neurons exactly.
    ignore = ["blocks.*.ln1", "blocks.*.ln2", "ln_f"]
    _kill_channels(model, x, ignore)
    ref = model(x)
    ts.prune(model, ts.ChannelPruning(ratio=0.5, ignore=ignore))
    assert model.blocks[0].attn.n_head == 2 and model.tok_emb.embedding_dim == 128
    assert torch.allclose(model(x), ref, atol=1e-4)


class _Concat(nn.Module):
    """Two branches concatenated along channels, then a residual add with a 1x1 projection."""

    input_shape = (3, 12, 12)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(14)
        self.dw = nn.Conv2d(14, 14, 3, padding=1, groups=14)
        self.grouped = nn.Conv2d(14, 14, 1, groups=2)
        self.proj = nn.Conv2d(14, 10, 1)
        self.fc = nn.Linear(10 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        y = self.bn(y)
        y = self.dw(y) + y
        y = self.proj(self.grouped(y))
        y = torch.max_pool2d(y, 2)
        return self.fc(y.flatten(1))


def test_concat_depthwise_grouped_flatten() -> None:
    torch.manual_seed(0)
    model = _Concat().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 12, 12)
    y0 = model(x)
    ts.prune(model, ts.ChannelPruning(ratio=0.5))
    # the grouped conv freezes its input group (the concat) so a, b, bn, dw keep their width;
    # proj's output feeds flatten -> fc and is pruned, fc reads 5 channels x 36 positions
    assert model.a.out_channels == 8 and model.grouped.groups == 2
    assert model.proj.out_channels == 5 and model.fc.in_features == 5 * 36
    assert model(x).shape == y0.shape


def test_concat_channels_pruned_per_branch() -> None:
    torch.manual_seed(0)

    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
            self.head = nn.Conv2d(14, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([self.a(x), self.b(x)], 1))

    model = Cat().eval()
    x = torch.randn(2, 3, 8, 8)
    _kill_channels(model, x)
    ref = model(x)
    ts.prune(model, ts.ChannelPruning(ratio=0.5), example=x)
    assert (model.a.out_channels, model.b.out_channels, model.head.in_channels) == (4, 3, 7)
    assert torch.allclose(model(x), ref, atol=1e-5)


class _MHAModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(6, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(self.norm(h + a))


def test_multihead_attention_heads() -> None:
    torch.manual_seed(0)
    model = _MHAModel().eval()
    x = torch.randn(2, 5, 6)
    ref_model = copy.deepcopy(model)
    ts.prune(model, ts.ChannelPruning(ratio=0.5), example=x)
    assert count_macs(model, x) <= 0.3 * count_macs(ref_model, x)  # fast path counted too
    assert isinstance(model.attn, PrunedMultiheadAttention)
    assert model.attn.num_heads == 2 and model.norm.normalized_shape == (16,)
    assert model(x).shape == ref_model(x).shape
    # with nothing removed the replacement computes exactly what nn.MultiheadAttention does
    from torchshrink.prune.channel import _rebuild_mha

    full = _rebuild_mha(ref_model.attn, torch.arange(32), torch.arange(32), torch.arange(4))
    q = torch.randn(2, 5, 32)
    mask = torch.rand(2, 5) > 0.7
    mask[:, 0] = False
    a, wa = ref_model.attn(q, q, q, key_padding_mask=mask)
    b, wb = full(q, q, q, key_padding_mask=mask)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(wa, wb, atol=1e-5)


class _Dynamic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.gate = _Gate()
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.gate(torch.relu(self.fc1(x))))


class _Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return x
        return -x


def test_untraceable_names_op_and_suggests_ignore() -> None:
    model = _Dynamic()
    x = torch.randn(3, 8)
    with pytest.raises(ts.UnsupportedModelError,
                       match=r"cannot trace _Dynamic.*if x.sum\(\) > 0.*inside module 'gate'.*ignore=\['gate'\]"):
        ts.prune(model, ts.ChannelPruning(ratio=0.5), example=x)
    ts.prune(model, ts.ChannelPruning(ratio=0.5, ignore=["gate"]), example=x)
    # the ignored module's channels (fc1 out, fc2 in) are kept; the model still runs
    assert model.fc1.out_features == 16 and model(x).shape == (3, 2)


def test_keeps_masks_and_round_to() -> None:
    model = ts.models.create("lenet300")
    ts.prune(model, ts.MagnitudePruning(sparsity=0.5))
    ts.prune(model, ts.ChannelPruning(ratio=0.3, round_to=8))
    assert model.fc1.out_features % 8 == 0 and model.fc1.out_features >= 210
    assert mask_of(model.fc1) is not None and mask_of(model.fc1).shape == model.fc1.weight.shape


@pytest.mark.parametrize("criterion", ["l2", "taylor", "fisher", "activation", "apoz"])
def test_structured_criteria(criterion: str, img_loader) -> None:
    model = ts.models.create("resnet_small", widths=(8, 16, 16))
    ts.prune(model, ts.ChannelPruning(ratio=0.5, criterion=criterion, calibration_batches=1), calibration=img_loader)
    assert model.stem[0].out_channels == 4 and model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_channel_config_errors() -> None:
    with pytest.raises(ts.ConfigError, match=r"ratio must be in \[0, 1\), got 1"):
        ts.ChannelPruning(ratio=1.0)
    with pytest.raises(ts.ConfigError, match=r"ignore pattern 'nope' matches no"):
        ts.prune(ts.models.create("lenet300"), ts.ChannelPruning(ignore=["nope"]))
    with pytest.raises(ts.ConfigError, match="needs an example input"):
        ts.prune(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), ts.ChannelPruning())


@pytest.mark.parametrize("name", ["resnet_small", "gpt_tiny"])
def test_artifact_replays_thinner_layers_and_head_count(name: str, tmp_path) -> None:
    model = ts.models.create(name).eval()
    ts.prune(model, ts.ChannelPruning(ratio=0.5))
    path = tmp_path / "m.tsz"
    ts.save(model, path)
    back = ts.load(path, like=ts.models.create(name)).eval()
    x = ts.models.example_input(model, 2)
    assert torch.equal(back(x), model(x))
    if name == "gpt_tiny":
        assert back.blocks[0].attn.n_head == 2
    else:
        assert back.stem[0].out_channels == 16

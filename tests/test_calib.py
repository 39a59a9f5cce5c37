"""Block-wise sequential calibration (nn.calib): a fixed number of block forwards per block and
batch, every block measured on the compressed blocks' outputs, on Hugging Face and torchshrink
transformers, on a user's blocks, and on models with no known blocks."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.errors import ConfigError
from torchshrink.models.gpt import GPTConfig, GPTTiny
from torchshrink.nn.blocks import find_blocks
from torchshrink.nn.calib import InputStats, calibrate_sequentially, collect_stats
from torchshrink.quant.weight_only import WeightOnlyLayer


def _gpt(n_layer: int, seed: int = 0) -> GPTTiny:
    torch.manual_seed(seed)
    return GPTTiny(GPTConfig(n_layer=n_layer, n_embd=32, n_head=2, block_size=16)).eval()


def _calib(n: int = 3, vocab: int = 256, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (2, 16), generator=g) for _ in range(n)]


def _count_block_forwards(model: nn.Module, blocks: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(blocks, 0)
    for b in blocks:
        def hook(m: nn.Module, args: tuple, b: str = b) -> None:
            counts[b] += 1
        model.get_submodule(b).register_forward_pre_hook(hook)
    return counts


GPTQ = ts.WeightOnly(bits=4, group_size=None, algorithm="gptq")
SPARSEGPT = ts.MagnitudePruning(sparsity=0.5, criterion="obs")


def _run(model: nn.Module, method: object, calib: list[torch.Tensor]) -> nn.Module:
    if isinstance(method, ts.WeightOnly):
        return ts.quantize(model, method, calibration=calib, progress=False)
    return ts.prune(model, method, calibration=calib)


@pytest.mark.parametrize("method", [GPTQ, SPARSEGPT], ids=["gptq", "sparsegpt"])
def test_block_forwards_are_two_per_block_and_batch_so_linear_in_depth(method: object) -> None:
    calib = _calib(3)
    totals = {}
    for depth in (2, 4):
        model = _gpt(depth)
        blocks = find_blocks(model)
        assert blocks == [f"blocks.{i}" for i in range(depth)]
        counts = _count_block_forwards(model, blocks)
        _run(model, method, calib)
        # block 0: the capture pass stops at it, then a measuring and a propagating forward;
        # every other block: measure, then run compressed; the head is measured on replayed outputs
        assert counts == {b: (3 if i == 0 else 2) * len(calib) for i, b in enumerate(blocks)}
        totals[depth] = sum(counts.values())
    assert totals[4] - totals[2] == 2 * 2 * len(calib)


def test_original_propagation_needs_one_forward_per_block() -> None:
    calib = _calib(2)
    model = _gpt(3)
    counts = _count_block_forwards(model, find_blocks(model))
    ts.quantize(model, ts.WeightOnly(bits=4, group_size=None, algorithm="gptq", propagate="original"),
                calibration=calib, progress=False)
    assert list(counts.values()) == [2 * len(calib)] + [len(calib)] * 2


def test_true_sequential_is_still_a_fixed_number_of_forwards_per_block() -> None:
    calib = _calib(2)
    model = _gpt(3)
    counts = _count_block_forwards(model, find_blocks(model))
    ts.quantize(model, ts.WeightOnly(bits=4, group_size=None, algorithm="gptq", true_sequential=True),
                calibration=calib, progress=False)
    # gpt_tiny's groups: q/k/v, out_proj, fc, proj (4 partial forwards) + 1 to propagate
    assert list(counts.values()) == [6 * len(calib)] + [5 * len(calib)] * 2


def _prune_half(model: nn.Module, seen: dict[str, torch.Tensor]) -> Callable[[dict[str, InputStats]], None]:
    def compress(stats: dict[str, InputStats]) -> None:
        for n, s in stats.items():
            assert s.hessian is not None
            seen[n] = s.hessian.clone()
            m = model.get_submodule(n)
            with torch.no_grad():  # zero the smaller half of every row
                w = m.weight
                w[w.abs() < w.abs().median(1, keepdim=True).values] = 0.0
    return compress


def test_each_block_is_measured_on_the_outputs_of_the_pruned_blocks_before_it() -> None:
    calib = _calib(3)
    model = _gpt(2)
    ref = copy.deepcopy(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    seen: dict[str, torch.Tensor] = {}
    calibrate_sequentially(model, layers, calib, _prune_half(model, seen), limit=None, hessian=True)
    assert set(seen) == {n for n, _ in layers}

    def hessian_in(m: nn.Module, name: str) -> torch.Tensor:
        stats, _ = collect_stats([lambda x=x: m(x) for x in calib], [(name, m.get_submodule(name))], hessian=True,
                                 stop_at_new_input=False)
        assert stats[name].hessian is not None
        return stats[name].hessian

    name = "blocks.1.attn.q_proj"
    # what block 1 saw is what the finished (pruned) model feeds it, not what the float model does
    assert torch.allclose(seen[name], hessian_in(model, name), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(seen[name], hessian_in(ref, name), rtol=1e-3, atol=1e-3)
    # the head (after the blocks, measured on replayed outputs) too
    assert torch.allclose(seen["head"], hessian_in(model, "head"), rtol=1e-4, atol=1e-4)


def test_sparsegpt_propagation_modes_differ_after_the_first_block() -> None:
    calib = _calib(3)
    a = ts.prune(_gpt(2), ts.MagnitudePruning(sparsity=0.5, criterion="obs"), calibration=calib)
    b = ts.prune(_gpt(2), ts.MagnitudePruning(sparsity=0.5, criterion="obs", propagate="original"),
                 calibration=calib)
    assert torch.equal(a.blocks[0].mlp.fc.weight, b.blocks[0].mlp.fc.weight)
    assert not torch.equal(a.blocks[1].mlp.fc.weight, b.blocks[1].mlp.fc.weight)
    for m in (a, b):
        assert float((m.blocks[1].mlp.fc.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)


def test_layers_reading_one_tensor_share_one_hessian() -> None:
    model = _gpt(1)
    attn = model.blocks[0].attn
    pending = [(f"q{i}", p) for i, p in enumerate((attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj))]
    stats, outs = collect_stats([lambda x=x: model(x) for x in _calib(2)], pending, hessian=True,
                                stop_at_new_input=False)
    assert stats["q0"] is stats["q1"] is stats["q2"] and stats["q3"] is not stats["q0"]
    assert stats["q0"].rows == 2 * 2 * 16 and len(outs) == 2 and outs[0] is not None


def _llama(layers: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                   max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def test_gptq_and_sparsegpt_on_a_hugging_face_llama() -> None:
    calib = _calib(3, vocab=128)
    base = _llama(2)
    blocks = find_blocks(base)
    assert blocks == ["model.layers.0", "model.layers.1"]
    x = _calib(1, vocab=128, seed=9)[0]
    ref = _logits(base, x)
    errs = {}
    for alg in ("rtn", "gptq"):
        model = copy.deepcopy(base)
        counts = _count_block_forwards(model, blocks)
        q = ts.quantize(model, ts.WeightOnly(bits=3, group_size=None, algorithm=alg), calibration=calib,  # type: ignore[arg-type]
                        progress=False)
        assert isinstance(q.model.layers[1].self_attn.q_proj, WeightOnlyLayer)
        assert isinstance(q.model.layers[1].mlp.down_proj, WeightOnlyLayer)
        if alg == "gptq":
            assert list(counts.values()) == [3 * len(calib), 2 * len(calib)]
        errs[alg] = float((_logits(q, x) - ref).pow(2).mean())
    assert errs["gptq"] < errs["rtn"], errs
    pruned = ts.prune(copy.deepcopy(base), SPARSEGPT, calibration=calib)
    for lin in (pruned.model.layers[0].self_attn.k_proj, pruned.model.layers[1].mlp.up_proj):
        assert float((lin.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert torch.isfinite(_logits(pruned, x)).all()


def test_wanda_and_sparsegpt_2_4_go_block_by_block_on_llama() -> None:
    calib = _calib(2, vocab=128)
    model = _llama(2)
    counts = _count_block_forwards(model, find_blocks(model))
    ts.prune(model, ts.NMPruning(criterion="obs"), calibration=calib)
    assert list(counts.values()) == [3 * len(calib), 2 * len(calib)]
    w = model.model.layers[1].mlp.gate_proj.weight
    assert bool(((w.reshape(-1, 4) != 0).sum(1) <= 2).all())
    model = _llama(2)
    ts.prune(model, ts.MagnitudePruning(sparsity=0.5, criterion="wanda"), calibration=calib)
    assert float((model.model.layers[1].self_attn.o_proj.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)


def test_gptq_on_a_hugging_face_gpt2() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128,
                                                                 n_positions=32)).eval()
    blocks = find_blocks(model)
    assert blocks == ["transformer.h.0", "transformer.h.1"]
    calib = _calib(2, vocab=128)
    x = calib[0]
    ref = _logits(model, x)
    counts = _count_block_forwards(model, blocks)
    q = ts.quantize(model, ts.WeightOnly(bits=8, group_size=None, algorithm="gptq",
                                         ignore=("transformer.wte",)), calibration=calib, progress=False)
    assert isinstance(q.lm_head, WeightOnlyLayer)
    assert list(counts.values()) == [3 * len(calib), 2 * len(calib)]
    assert float((_logits(q, x) - ref).abs().max()) < 0.05 * float(ref.abs().max())


class _Stage(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(torch.relu(self.a(x)))


class _Staged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.stages = nn.ModuleList([_Stage(16) for _ in range(3)])
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for s in self.stages:
            x = s(x)
        return self.out(x)


def test_user_blocks_and_layers_before_and_after_them() -> None:
    torch.manual_seed(0)
    model = _Staged().eval()
    assert find_blocks(model) == []  # "stages" is no known name
    names = [f"stages.{i}" for i in range(3)]
    calib = [torch.randn(32, 8) for _ in range(3)]
    x = torch.randn(64, 8)
    ref = model(x).detach()
    counts = _count_block_forwards(model, names)
    q = ts.quantize(model, ts.WeightOnly(bits=4, group_size=None, algorithm="gptq", blocks=tuple(names)),
                    calibration=calib, progress=False)
    assert all(isinstance(m, WeightOnlyLayer) for m in (q.inp, q.stages[2].b, q.out))
    # the input layer is measured on its own (its pass stops on entering the first block),
    # then the capture is redone on its quantized outputs: block 0 is entered 3 times before
    # its measuring and propagating forwards
    assert list(counts.values()) == [5 * len(calib), 2 * len(calib), 2 * len(calib)]
    assert float((q(x) - ref).pow(2).mean()) < 0.05 * float(ref.pow(2).mean())


def test_no_known_blocks_falls_back_to_layer_groups() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    calls = [0]
    model[0].register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    calib = [torch.randn(32, 16) for _ in range(2)]
    ts.prune(model, SPARSEGPT, calibration=calib)
    assert calls[0] == 3 * len(calib)  # one pass per layer, each stopping after its layer
    for i in (0, 2, 4):
        assert float((model[i].weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-2)


def test_bad_blocks_words() -> None:
    model = _gpt(1)
    with pytest.raises(ConfigError, match=r"has no submodule 'blocks.7'"):
        find_blocks(model, ["blocks.7"])
    with pytest.raises(ConfigError, match=r"blocks=\[\] names no block"):
        find_blocks(model, [])
    with pytest.raises(ConfigError, match=r"propagate must be"):
        ts.WeightOnly(propagate="float")  # type: ignore[arg-type]

"""WeightOnly(cpu_kernel=True): PyTorch's packed int4 CPU matmul computes what the float path
computes, up to bfloat16 rounding, and only where it can."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.quant.weight_only import WeightOnlyLayer, int4_kernel_ok

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"),
                                reason="this torch has no int4 CPU kernel")


def _pair(symmetric: bool, group_size: int = 32) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 48))
    plain = ts.quantize(copy.deepcopy(model), ts.WeightOnly(bits=4, group_size=group_size, symmetric=symmetric))
    kern = ts.quantize(copy.deepcopy(model), ts.WeightOnly(bits=4, group_size=group_size, symmetric=symmetric,
                                                           cpu_kernel=True))
    return plain.eval(), kern.eval()


@pytest.mark.parametrize("symmetric", [True, False])
def test_kernel_matches_the_float_path_up_to_bf16(symmetric: bool) -> None:
    plain, kern = _pair(symmetric)
    assert all(int4_kernel_ok(m) for m in kern.modules() if isinstance(m, WeightOnlyLayer))
    x = torch.randn(5, 3, 128)  # leading dims are kept
    with torch.no_grad():
        a, b = plain(x), kern(x)
    assert b.shape == a.shape
    assert float((b - a).norm() / a.norm()) < 2e-2
    assert "int4 CPU matmul kernel" in kern[0].execution


def test_training_mode_and_ineligible_layers_use_the_exact_float_path() -> None:
    plain, kern = _pair(True)
    x = torch.randn(4, 128)
    kern.train()
    plain.train()
    with torch.no_grad():
        assert torch.equal(plain(x), kern(x))
    torch.manual_seed(0)
    odd = ts.quantize(nn.Sequential(nn.Linear(64, 10)), ts.WeightOnly(bits=4, group_size=32, cpu_kernel=True)).eval()
    assert not int4_kernel_ok(odd[0])  # 10 outputs: not a multiple of 16
    ref = odd[0].dequantized_weight()
    with torch.no_grad():
        torch.testing.assert_close(odd(x[:, :64]), x[:, :64] @ ref.T + odd[0].bias)


def test_the_setting_survives_save_and_load(tmp_path: Path) -> None:
    _, kern = _pair(True)
    ts.save(kern, tmp_path / "k.tsz")
    back = ts.load(tmp_path / "k.tsz", like=nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 48))).eval()
    assert back[0].cpu_kernel
    x = torch.randn(2, 128)
    with torch.no_grad():
        assert torch.equal(back(x), kern(x))

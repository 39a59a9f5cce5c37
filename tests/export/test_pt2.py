"""torch.export programs: saved, loaded without the model's code, checked."""

from __future__ import annotations

import subprocess
import sys

import torch

import torchshrink as ts
from torchshrink import models
from torchshrink.export import load_pt2
from torchshrink.nn import params


class _Mask(torch.nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * (w.abs() > 0.02)


def test_pt2_round_trip_with_dynamic_batch(tmp_path: object) -> None:
    model = models.create("lenet5")
    params.add(model.fc1, _Mask())
    path = f"{tmp_path}/lenet5.pt2"
    result = ts.export(model, path, example=models.example_input(model, 1), format="pt2")
    assert result.parity is not None and result.parity.max_abs_error == 0.0
    x = torch.randn(9, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_pt2(path)(x), model.eval()(x))


def test_pt2_loads_without_torchshrink(tmp_path: object) -> None:
    model = models.create("lenet300").eval()
    path = f"{tmp_path}/m.pt2"
    ts.export(model, path, example=torch.randn(2, 784), format="pt2")
    x = torch.randn(5, 784)
    torch.save(x, f"{tmp_path}/x.pt")
    with torch.no_grad():
        torch.save(model(x), f"{tmp_path}/want.pt")
    code = (
        "import sys, torch\n"
        # the same thread count as here: another count sums in another order (not bit-equal)
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        f"m = torch.export.load({path!r}).module()\n"
        f"got = m(torch.load({str(tmp_path) + '/x.pt'!r}, weights_only=True))\n"
        f"assert torch.equal(got, torch.load({str(tmp_path) + '/want.pt'!r}, weights_only=True))\n"
        "assert not any(k.startswith('torchshrink') for k in sys.modules), 'needed torchshrink'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

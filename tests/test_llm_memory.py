"""GPTQ without a second copy of the model: finished layers write their quantized weight into
the float layer's storage (rollback=False, the default), large layers are swept and packed in
slices, and the result is the same codes as the rollback path and the unsliced sweep."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.models.gpt import GPTConfig, GPTTiny
from torchshrink.quant import weight_only
from torchshrink.quant.gptq import gptq_codes
from torchshrink.quant.weight_only import WeightOnlyLayer


def _gpt(seed: int = 0) -> GPTTiny:
    torch.manual_seed(seed)
    return GPTTiny(GPTConfig(n_layer=2, n_embd=32, n_head=2, block_size=16)).eval()


def _calib(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (2, 16), generator=g) for _ in range(n)]


def _codes(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.packed.clone() for n, m in model.named_modules() if isinstance(m, WeightOnlyLayer)}


@pytest.mark.parametrize("desc_act,group", [(False, 16), (True, 16), (False, None)])
def test_sliced_sweep_gives_the_same_codes(desc_act: bool, group: int | None) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 64, generator=g)
    x = torch.randn(256, 64, generator=g) * torch.linspace(0.1, 3, 64)
    h = x.T @ x
    h[5, :] = 0
    h[:, 5] = 0  # a dead input: its column is zeroed in every slice
    kw = dict(bits=4, symmetric=True, granularity="group" if group else "channel", group_size=group,
              desc_act=desc_act)
    whole = gptq_codes(w, h, **kw)
    sliced = gptq_codes(w, h, chunk_values=7 * 64, **kw)  # 7 rows per slice, a ragged last slice
    for a, b in zip(whole, sliced):
        assert torch.equal(a, b)


def test_packing_in_slices_matches_one_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    model = ts.quantize(_gpt(), ts.WeightOnly(bits=3, group_size=16))
    whole = _codes(model)
    monkeypatch.setattr(weight_only, "PACK_SLICE", 24)  # 24 codes x 3 bits = 9 bytes per slice
    assert _codes(ts.quantize(_gpt(), ts.WeightOnly(bits=3, group_size=16))).keys() == whole.keys()
    for name, packed in _codes(ts.quantize(_gpt(), ts.WeightOnly(bits=3, group_size=16))).items():
        assert torch.equal(packed, whole[name]), name


def test_in_place_gptq_equals_the_rollback_path() -> None:
    calib = _calib()
    a = ts.quantize(_gpt(), ts.WeightOnly(bits=4, group_size=16, algorithm="gptq"), calibration=calib, progress=False)
    b = ts.quantize(_gpt(), ts.WeightOnly(bits=4, group_size=16, algorithm="gptq", rollback=True),
                    calibration=calib, progress=False)
    ca, cb = _codes(a), _codes(b)
    assert ca.keys() == cb.keys() and len(ca) > 4
    for name in ca:
        assert torch.equal(ca[name], cb[name]), name


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("rollback", [False, True])
def test_a_failure_leaves_finished_layers_quantized_or_rolls_back(monkeypatch: pytest.MonkeyPatch,
                                                                  rollback: bool) -> None:
    model = _gpt()
    ref = copy.deepcopy(model)
    x = _calib(1)[0]
    calls = {"n": 0}
    orig = weight_only.quantize_layer_weight_only

    def flaky(*args: object, **kw: object) -> WeightOnlyLayer:
        calls["n"] += 1
        if calls["n"] == 5:  # the fifth layer fails, inside the calibration of the first block
            raise _Boom("stop")
        return orig(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(weight_only, "quantize_layer_weight_only", flaky)
    with pytest.raises(_Boom) as err:
        ts.quantize(model, ts.WeightOnly(bits=4, group_size=16, algorithm="gptq", rollback=rollback),
                    calibration=_calib(), progress=False)
    quantized = sum(isinstance(m, WeightOnlyLayer) for m in model.modules())
    if rollback:
        assert quantized == 0 and torch.equal(model(x), ref(x))  # the original model, untouched
    else:
        assert quantized == 4 and "stopped after 4 of" in "".join(getattr(err.value, "__notes__", []))

"""Factor pairs travel through the artifact as the pair (never the product) and rebuild on load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchshrink as ts
from torchshrink.codec.structure import module_codec
from torchshrink.lowrank import FactorizedConv2d, FactorizedLinear, chosen_ranks


@pytest.mark.parametrize("mode", ["channel", "spatial"])
def test_structure_spec_rebuilds_the_same_pair(mode: str) -> None:
    model = ts.factorize(ts.models.create("lenet5"), ts.SvdFactorization(ratio=0.3, mode=mode))  # type: ignore[arg-type]
    for layer in (model.conv2, model.fc1):
        codec = module_codec(layer)
        assert codec is not None and codec.cls in (FactorizedLinear, FactorizedConv2d)
        rebuilt = codec.from_spec(codec.to_spec(layer))
        rebuilt.load_state_dict(layer.state_dict())
        x = torch.randn(2, 20, 12, 12) if isinstance(layer, FactorizedConv2d) else torch.randn(2, 800)
        torch.testing.assert_close(rebuilt(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("name,mode", [("lenet300", "channel"), ("resnet_small", "channel"),
                                       ("resnet_small", "spatial")])
def test_save_load_round_trip_is_bit_exact(tmp_path: Path, name: str, mode: str) -> None:
    if not hasattr(ts, "save") or not hasattr(ts, "load"):
        pytest.skip("ts.save/ts.load not available in this checkout")
    torch.manual_seed(0)
    model = ts.factorize(ts.models.create(name), ts.SvdFactorization(ratio=0.25, mode=mode)).eval()  # type: ignore[arg-type]
    path = tmp_path / "f.tsz"
    ts.save(model, path)
    loaded = ts.load(path).eval()
    assert chosen_ranks(loaded) == chosen_ranks(model)
    sd, ld = model.state_dict(), loaded.state_dict()
    assert sd.keys() == ld.keys()
    for k in sd:
        assert torch.equal(sd[k], ld[k]), k
    # stored as the factor pair: no dense product of a factorized layer is in the file
    first = next(iter(chosen_ranks(model)))
    assert f"{first}.first.weight" in ld and f"{first}.weight" not in ld
    x = ts.models.example_input(model, 3)
    assert torch.equal(loaded(x), model(x))
    # the pair is smaller on disk than the dense model
    dense_path = tmp_path / "d.tsz"
    ts.save(ts.models.create(name), dense_path)
    assert path.stat().st_size < 0.5 * dense_path.stat().st_size

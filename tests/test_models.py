"""Reference models: parameter counts from the papers, forward shapes, names."""

from __future__ import annotations

import pytest
import torch

from torchshrink import models
from torchshrink.errors import ConfigError


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts() -> None:
    assert _params(models.create("lenet300")) == 266_610
    assert _params(models.create("lenet5")) == 431_080


@pytest.mark.parametrize(("name", "out"), [("lenet300", (3, 10)), ("lenet5", (3, 10)), ("resnet_small", (3, 10)),
                                           ("mobilenet_small", (3, 10)), ("gpt_tiny", (3, 64, 256))])
def test_forward_shapes(name: str, out: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    m = models.create(name).eval()
    x = models.example_input(m, 3)
    with torch.no_grad():
        y = m(x)
    assert tuple(y.shape) == out and torch.isfinite(y).all()
    assert models.model_name(m) == name


def test_all_five_are_registered() -> None:
    assert models.names() == ["gpt_tiny", "lenet300", "lenet5", "mobilenet_small", "resnet_small"]


def test_lenet300_accepts_flat_input_and_gpt_shorter_context() -> None:
    assert models.create("lenet300")(torch.randn(2, 784)).shape == (2, 10)
    gpt = models.create("gpt_tiny")
    assert gpt(torch.randint(0, 256, (2, 10))).shape == (2, 10, 256)


def test_example_input_is_deterministic() -> None:
    a, b = models.example_input("lenet5", 2), models.example_input("lenet5", 2)
    assert torch.equal(a, b) and a.shape == (2, 1, 28, 28)
    ids = models.example_input("gpt_tiny", 2)
    assert ids.dtype == torch.int64 and ids.shape == (2, 64)
    with pytest.raises(ConfigError, match="has no input_shape; pass example="):
        models.example_input(torch.nn.Linear(2, 2))


def test_unknown_model_suggests_a_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'lenet6'\. Did you mean 'lenet5'"):
        models.create("lenet6")
    with pytest.raises(ConfigError, match="resnet_small"):
        models.create("resnet")
    assert models.model_name(torch.nn.Linear(2, 2)) is None

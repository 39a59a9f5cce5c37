"""Reference models by name: `torchshrink.models.create("lenet300")`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchshrink.codec.references import Reference, register_reference
from torchshrink.errors import ConfigError, did_you_mean
from torchshrink.models.gpt import GPTConfig, GPTTiny
from torchshrink.models.lenet import LeNet5, LeNet300
from torchshrink.models.mobilenet import MobileNetSmall
from torchshrink.models.resnet import ResNetSmall

__all__ = [
    "GPTConfig",
    "GPTTiny",
    "LeNet300",
    "LeNet5",
    "MobileNetSmall",
    "ResNetSmall",
    "create",
    "example_input",
    "names",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "resnet_small": ResNetSmall,
    "mobilenet_small": MobileNetSmall,
    "gpt_tiny": lambda **kw: GPTTiny(GPTConfig(**kw)),
}


def names() -> list[str]:
    return sorted(_MODELS)


def create(name: str, **kwargs: Any) -> nn.Module:
    """A freshly initialized reference model. Unknown names get suggestions."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}." + did_you_mean(name, _MODELS))
    return _MODELS[name](**kwargs)


def model_name(model: nn.Module) -> str | None:
    """The registered name of a reference model instance, or None."""
    for n, ctor in _MODELS.items():
        if isinstance(ctor, type) and type(model) is ctor:
            return n
    return "gpt_tiny" if isinstance(model, GPTTiny) else None


def _gpt_kwargs(model: nn.Module) -> dict[str, Any] | None:
    assert isinstance(model, GPTTiny)
    kwargs = dataclasses.asdict(model.config)
    return None if kwargs == dataclasses.asdict(GPTConfig()) else kwargs


def _gpt_build(**kwargs: Any) -> nn.Module:
    return GPTTiny(GPTConfig(**kwargs))


# The artifact names these models instead of needing like=; GPTTiny records its config.
def _no_kwargs(model: nn.Module) -> dict[str, Any] | None:
    return None


def _is_exactly(cls: type[nn.Module]) -> Callable[[nn.Module], bool]:
    return lambda m: type(m) is cls


for _name, _ctor in _MODELS.items():
    if isinstance(_ctor, type):
        register_reference(Reference(_name, _is_exactly(_ctor), _no_kwargs, _ctor))
register_reference(Reference("gpt_tiny", lambda m: isinstance(m, GPTTiny), _gpt_kwargs, _gpt_build))


def example_input(model_or_name: nn.Module | str, batch: int = 1) -> torch.Tensor:
    """A deterministic example batch of the right shape and dtype for a reference model."""
    model = create(model_or_name) if isinstance(model_or_name, str) else model_or_name
    g = torch.Generator().manual_seed(0)
    if isinstance(model, GPTTiny):
        return torch.randint(0, model.config.vocab_size, (batch, model.config.block_size), generator=g)
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError(f"{type(model).__name__} has no input_shape; pass example= explicitly")
    return torch.rand((batch, *shape), generator=g)

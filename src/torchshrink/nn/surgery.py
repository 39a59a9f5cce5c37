"""Replacing modules in place by dotted name."""

from __future__ import annotations

from torch import nn

from torchshrink.errors import ConfigError

__all__ = ["get_module", "set_module", "parent_of"]


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError as e:
        raise ConfigError(f"{type(model).__name__} has no submodule {name!r}") from e


def parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return get_module(model, parent_name), attr


def set_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Swap the submodule at `name` for `new`; returns the old one. `name=""` is refused."""
    if not name:
        raise ConfigError("cannot replace the root module by name; return the new module instead")
    parent, attr = parent_of(model, name)
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old

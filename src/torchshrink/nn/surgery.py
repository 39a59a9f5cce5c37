"""Replacing modules in place by dotted name."""

from __future__ import annotations

from torch import nn

from torchshrink.errors import ConfigError

__all__ = ["get_module", "set_module", "parent_of", "isolate"]


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


def isolate(model: nn.Module, name: str) -> nn.Module:
    """A bare model holding only a copy of `model.<name>`, at the same dotted path, so a method
    config that targets `name` applies to it alone (no forward: methods that need one, or
    calibration data, cannot run on it). Used to price variants of one layer cheaply."""
    import copy

    layer = get_module(model, name)
    root = nn.Module()
    node = root
    parts = name.split(".")
    for part in parts[:-1]:
        child = nn.Module()
        node.add_module(part, child)
        node = child
    node.add_module(parts[-1], copy.deepcopy(layer))
    return root


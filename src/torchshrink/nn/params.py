"""Parametrization helpers: the one place that knows how torch.nn.utils.parametrize chains work.

Value constraints (pruning masks, shared-weight codebooks, fake quantization) live on weights
as parametrizations that compose in registration order: mask, then codebook, then fake quant.
`module.weight` reads the constrained value; the raw tensor is `original(module, "weight")`.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "add",
    "chain",
    "find",
    "has",
    "original",
    "remove",
    "materialize",
    "is_parametrized",
]

P = TypeVar("P", bound=nn.Module)


def is_parametrized(module: nn.Module, tensor_name: str = "weight") -> bool:
    return parametrize.is_parametrized(module, tensor_name)


def chain(module: nn.Module, tensor_name: str = "weight") -> list[nn.Module]:
    """The parametrizations on `tensor_name`, in application order (empty when none)."""
    if not is_parametrized(module, tensor_name):
        return []
    return list(module.parametrizations[tensor_name])  # type: ignore[index]


def find(module: nn.Module, kind: type[P], tensor_name: str = "weight") -> P | None:
    for p in chain(module, tensor_name):
        if isinstance(p, kind):
            return p
    return None


def has(module: nn.Module, kind: type[nn.Module], tensor_name: str = "weight") -> bool:
    return find(module, kind, tensor_name) is not None


def add(module: nn.Module, parametrization: nn.Module, tensor_name: str = "weight",
        *, unsafe: bool = False) -> nn.Module:
    """Append `parametrization` to the chain on `tensor_name` and return the module."""
    parametrize.register_parametrization(module, tensor_name, parametrization, unsafe=unsafe)
    return module


def original(module: nn.Module, tensor_name: str = "weight") -> torch.Tensor:
    """The stored tensor before any parametrization (the trainable one)."""
    if is_parametrized(module, tensor_name):
        return module.parametrizations[tensor_name].original  # type: ignore[index,union-attr]
    return getattr(module, tensor_name)


def value_before(module: nn.Module, stop: nn.Module, tensor_name: str = "weight") -> torch.Tensor:
    """The tensor as it is just before parametrization `stop` in the chain applies."""
    x = original(module, tensor_name)
    for p in chain(module, tensor_name):
        if p is stop:
            return x
        x = p(x)
    raise ValueError("parametrization not found on this module")


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own before a parametrization is removed.

    `copy.deepcopy` of a parametrized module shares its generated `Parametrized<Type>` class,
    and removing the last parametrization deletes the class's property, which would silently
    break every copy (`AttributeError: ... has no attribute 'weight'`)."""
    cls = module.__class__
    if parametrize.is_parametrized(module):
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def remove(module: nn.Module, kind: type[nn.Module] | None = None, tensor_name: str = "weight") -> None:
    """Drop parametrizations of `kind` (all when None), keeping the others and the current value
    of the raw tensor. To bake the constrained value in, use `materialize`."""
    ps = chain(module, tensor_name)
    if not ps:
        return
    keep = [p for p in ps if kind is not None and not isinstance(p, kind)]
    raw = original(module, tensor_name).detach()
    _own_class(module)
    parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
    with torch.no_grad():
        getattr(module, tensor_name).copy_(raw)
    for p in keep:
        add(module, p, tensor_name)


def materialize(model: nn.Module) -> nn.Module:
    """Bake every parametrization into plain tensors (in place); returns the model."""
    for m in list(model.modules()):
        if parametrize.is_parametrized(m):
            # copy.deepcopy shares the dynamic Parametrized<Cls> class between copy and original,
            # and removing a parametrization deletes its property from that class, which would
            # break the original. Give this module a class of its own first.
            cls = m.__class__
            m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for tensor_name in list(m.parametrizations.keys()):  # type: ignore[union-attr,operator]
                parametrize.remove_parametrizations(m, tensor_name, leave_parametrized=True)
    return model

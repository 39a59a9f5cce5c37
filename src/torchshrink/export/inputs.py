"""Inputs and outputs as models take them, for exporters that want positional tensors.

Exporters trace `model(*tensors)` and name graph inputs by position. A Hugging Face model
takes keyword tensors (`input_ids`, `attention_mask`, `pixel_values`) and returns a
`ModelOutput`, possibly with a key/value cache that is not a tensor. `positional` wraps such a
model so the graph's inputs carry the keyword names, the cache is off (`use_cache=False`),
and the outputs are the tensors of the output object in order.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from torchshrink.errors import ConfigError

__all__ = ["PositionalModel", "positional", "tensor_outputs"]


def tensor_outputs(y: Any) -> tuple[torch.Tensor, ...]:
    """The tensors of a model output, in order (tuples, lists, dicts and ModelOutputs flattened;
    caches and other non-tensors dropped)."""
    if isinstance(y, torch.Tensor):
        return (y,)
    if isinstance(y, Mapping):
        return tuple(t for v in y.values() for t in tensor_outputs(v))
    if isinstance(y, (tuple, list)):
        return tuple(t for v in y for t in tensor_outputs(v))
    return ()


class PositionalModel(nn.Module):
    """`model(**dict(zip(names, args)), **fixed)`, returning its output tensors as a tuple."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], fixed: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.names, self.fixed = names, dict(fixed)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = tensor_outputs(self.model(**dict(zip(self.names, args)), **self.fixed))
        if not out:
            raise ConfigError(f"{type(self.model).__name__} returned no tensors to export")
        return out


def _is_hf(model: nn.Module) -> bool:
    return hasattr(getattr(model, "config", None), "to_dict") and hasattr(model, "main_input_name")


def positional(model: nn.Module, example: Any) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str] | None]:
    """(module taking positional tensors, those tensors, input names or None for the default).

    Plain models with a tensor or tuple example pass through unchanged."""
    if isinstance(example, Mapping):
        bad = [k for k, v in example.items() if not isinstance(v, torch.Tensor)]
        if bad or not example:
            raise ConfigError(f"a dict example must map input names to tensors; {bad or 'it is empty'} "
                              "e.g. example={'input_ids': ids, 'attention_mask': mask}")
        names = tuple(str(k) for k in example)
        tensors = tuple(example.values())
    elif _is_hf(model):
        tensors = (example,) if isinstance(example, torch.Tensor) else tuple(example)
        names = (str(model.main_input_name),) if len(tensors) == 1 else tuple(
            list(inspect.signature(model.forward).parameters)[:len(tensors)])
    else:
        return model, tuple(example) if isinstance(example, (tuple, list)) else (example,), None
    params = inspect.signature(model.forward).parameters
    unknown = [n for n in names if n not in params and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())]
    if unknown:
        raise ConfigError(f"{type(model).__name__}.forward takes no input {unknown}; it takes "
                          f"{[p for p in params if p not in ('kwargs', 'args')]}")
    fixed: dict[str, Any] = {}
    if "use_cache" in params:
        fixed["use_cache"] = False  # a cache is an object, not a tensor; export the full computation
    if "return_dict" in params:
        fixed["return_dict"] = True
    return PositionalModel(model, names, fixed), tensors, list(names)

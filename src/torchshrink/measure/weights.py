"""Counting weights as the model computes with them.

A compressed layer may store its weight in a form that is not the tensor it multiplies by: a
pruning mask or a codebook as a parametrization, int4 codes packed into bytes inside a custom
module. What a user wants to know is how many weights the model really uses and how many of
those are zero, so every count here is taken on the *effective* tensor:

- plain parameters, as they are;
- a parametrized tensor through `getattr(module, name)`, i.e. after the whole chain (mask,
  codebook, fake quant), never the raw `original` nor the parametrizations' own tensors
  (a codebook's centroids are storage, not weights the layer multiplies by);
- a module that defines `ts_effective_weights() -> dict[str, Tensor]` is counted from that
  dict alone; it speaks for its whole subtree, so its children are not walked again.

Buffers (BatchNorm running statistics, masks, scales) are not weights and are not counted,
matching the parameter counts the literature quotes (LeNet-5: 431,080).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["LayerRow", "effective_tensors", "layer_rows", "execution_label", "layer_type"]

DENSE = "dense"


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One module that holds weights: its counts and how it really executes."""

    name: str
    type: str
    params: int
    nonzeros: int
    execution: str
    macs: int | None = None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["sparsity"] = self.sparsity
        return d


def layer_type(module: nn.Module) -> str:
    """The class name a user wrote: `Linear`, not the `ParametrizedLinear` that parametrize makes."""
    cls = type(module)
    if parametrize.is_parametrized(module) and len(cls.__mro__) > 1:
        return cls.__mro__[1].__name__
    return cls.__name__


def execution_label(module: nn.Module) -> str:
    """The `execution` strings found on the module and on its parametrizations, joined in chain
    order; "dense" when nothing says otherwise."""
    labels: list[str] = []

    def take(obj: object) -> None:
        label = getattr(obj, "execution", None)
        if isinstance(label, str) and label and label not in labels:
            labels.append(label)

    take(module)
    # The inference form records which measured form it chose and why (`ts.for_inference`).
    choice = getattr(module, "inference_choice", None)
    if isinstance(choice, str) and choice not in labels:
        labels.append(choice)
    if parametrize.is_parametrized(module):
        for plist in module.parametrizations.values():  # type: ignore[operator]
            for p in plist:
                take(p)
    return " + ".join(labels) if labels else DENSE


def _walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    yield prefix, module
    if callable(getattr(module, "ts_effective_weights", None)):
        return
    for child_name, child in module.named_children():
        # The ParametrizationList container holds `original` and the parametrization modules;
        # they are reached through getattr on the owner instead.
        if child_name == "parametrizations" and parametrize.is_parametrized(module):
            continue
        yield from _walk(child, f"{prefix}.{child_name}" if prefix else child_name)


def effective_tensors(module: nn.Module, seen: set[int] | None = None) -> dict[str, torch.Tensor]:
    """The module's own weights (not its children's) as it computes with them.

    `seen` holds ids of plain parameters already counted elsewhere, so tied weights (a shared
    embedding and output head) count once.
    """
    custom = getattr(module, "ts_effective_weights", None)
    if callable(custom):
        return {name: t.detach() for name, t in custom().items()}
    out: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters(recurse=False):
        if seen is not None:
            if id(p) in seen:
                continue
            seen.add(id(p))
        out[name] = p.detach()
    if parametrize.is_parametrized(module):
        with torch.no_grad():
            for name in module.parametrizations:  # type: ignore[union-attr]
                out[name] = getattr(module, name).detach()
    return out


def layer_rows(model: nn.Module) -> list[LayerRow]:
    """A row for every module that holds weights, in model order."""
    rows: list[LayerRow] = []
    seen: set[int] = set()
    for name, module in _walk(model):
        tensors = effective_tensors(module, seen)
        if not tensors:
            continue
        params = sum(t.numel() for t in tensors.values())
        nonzeros = sum(int(torch.count_nonzero(t)) for t in tensors.values())
        rows.append(LayerRow(name or "(root)", layer_type(module), params, nonzeros, execution_label(module)))
    return rows

"""Shapes without memory: copies and builds of a model on the meta device.

A loader checks a model's tensor names and shapes against a file before it allocates
anything, so a hostile description (a 4 PB embedding) is refused instead of attempted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["build_on_meta", "build_with_state_on_meta", "meta_copy", "state_shapes"]

M = TypeVar("M")


class _SkipInplaceInit(TorchFunctionMode):
    """Turns in-place methods on meta tensors (`normal_`, `uniform_`, `zero_`) into no-ops:
    the values do not exist anyway, and torch's first meta `normal_` costs seconds of setup."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        # torch.nn.init functions pass their tensor by keyword, Tensor methods positionally.
        target = args[0] if args else kwargs.get("tensor")
        if name.endswith("_") and not name.endswith("__") and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[], M]) -> M:
    """`build()` with every new tensor on the meta device and weight initialization skipped."""
    with torch.device("meta"), _SkipInplaceInit():
        return build()


def build_with_state_on_meta(build: Callable[[], M]) -> M:
    """`build()` with every new plain `nn.Parameter` and persistent buffer moved to the meta
    device as it is registered, and initialization on them skipped; non-persistent buffers
    stay real. For a loader about to assign the whole state_dict from a file: the skeleton then
    costs no memory, while the buffers a state_dict leaves out (rotary frequencies, say) keep
    their computed values. Patches `nn.Module.register_parameter` / `register_buffer` for the
    duration (not thread-safe)."""
    register, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(self, name, param)
        p = self._parameters.get(name)
        if p is not None and type(p) is nn.Parameter and not p.is_meta:
            self._parameters[name] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)

    def buffer_on_meta(self: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        register_buffer(self, name, tensor, persistent)
        b = self._buffers.get(name)
        if persistent and b is not None and not b.is_meta:
            self._buffers[name] = b.to("meta")

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    nn.Module.register_buffer = buffer_on_meta  # type: ignore[method-assign]
    try:
        with _SkipInplaceInit():
            return build()
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers are on the meta device (shared ones stay
    shared); raises whatever `copy.deepcopy` raises on modules that refuse it."""
    memo: dict[int, Any] = {}
    tensors: list[torch.Tensor] = [t for _, t in module.named_parameters(remove_duplicate=False)]
    tensors += [t for _, t in module.named_buffers(remove_duplicate=False)]
    for t in tensors:
        if id(t) in memo:
            continue
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(module, memo)


def state_shapes(module: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """state_dict key -> (shape, dtype), for tensors only."""
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict(keep_vars=True).items()
            if isinstance(v, torch.Tensor)}

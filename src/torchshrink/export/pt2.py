"""`.pt2` programs: torch.export graphs saved with torch.export.save and loaded without the
model's Python code (torch.export.load needs only torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchshrink.errors import ArtifactError, UnsupportedModelError

__all__ = ["write_pt2", "load_pt2", "Pt2Runner"]


def _batch_dims(inputs: tuple[torch.Tensor, ...]) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch", min=1, max=65536)
    return tuple({0: batch} for _ in inputs)


def write_pt2(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path, *,
              dynamic_batch: bool = True) -> None:
    """Export `module` with torch.export (batch dimension dynamic) and save it to `path`."""
    # A batch of 1 would be specialized to the constant 1 (PyTorch's 0/1 rule), so trace with 2.
    if dynamic_batch and inputs[0].shape[0] == 1:
        inputs = tuple(torch.cat([t, t]) for t in inputs)
    try:
        program = torch.export.export(module, inputs, dynamic_shapes=_batch_dims(inputs) if dynamic_batch else None)
    except Exception as e:  # torch.export raises many types (UserError, Unsupported, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(
            f"cannot export {type(module).__name__} with torch.export: {first}. To fix: make the forward "
            "traceable (no data-dependent Python control flow; use torch.cond), or use format='onnx'"
        ) from e
    torch.export.save(program, str(path))


def load_pt2(path: str | Path) -> nn.Module:
    """The program in a `.pt2` file as a callable module (no model code needed)."""
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:
        raise ArtifactError(f"cannot load torch.export program {str(path)!r}: {e}") from e


class Pt2Runner:
    def __init__(self, path: str | Path) -> None:
        self.module = load_pt2(path)

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.module(*inputs)
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().float().numpy() for o in outs]

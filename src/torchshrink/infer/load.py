"""`ts.load(..., inference=True, example=x)`: an artifact straight into its inference form."""

from __future__ import annotations

import os
from typing import Any, Literal

from torch import nn

from torchshrink.codec import load as load_artifact
from torchshrink.errors import ConfigError
from torchshrink.infer.build import for_inference

__all__ = ["load"]


def load(path: str | os.PathLike[str], like: nn.Module | str | None = None, *, inference: bool = False,
         example: Any = None, prefer: Literal["speed", "memory"] = "speed", inplace: bool = False) -> nn.Module:
    """Rebuild a model from an artifact (see `torchshrink.codec.load`); with `inference=True`
    return its inference form (`ts.for_inference`) chosen at `example`'s batch size."""
    if inference and example is None:
        raise ConfigError("ts.load(..., inference=True) needs example= (one input batch at the batch size you "
                          "will serve), to time each layer's forms on")
    if prefer not in ("speed", "memory"):
        raise ConfigError(f"prefer must be 'speed' or 'memory', got {prefer!r}")
    model = load_artifact(path, like, inplace=inplace)
    return for_inference(model, example=example, prefer=prefer) if inference else model

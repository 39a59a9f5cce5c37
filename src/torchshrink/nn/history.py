"""The record of configs applied to a model, kept as a plain attribute on the model.

It lives here, below every family, so the verbs that append to it and the artifact that
stores it share one name without importing each other.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["HISTORY_ATTR", "history_of", "set_history"]

# Each applied config is appended here (as plain dicts) so reports and artifacts can say what
# was done; nothing reads it to decide behaviour.
HISTORY_ATTR = "torchshrink_history"


def history_of(model: nn.Module) -> list[Any]:
    return list(getattr(model, HISTORY_ATTR, None) or [])


def set_history(model: nn.Module, history: list[Any]) -> None:
    object.__setattr__(model, HISTORY_ATTR, list(history))  # plain attribute, not a submodule/buffer

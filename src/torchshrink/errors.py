"""The error hierarchy. Every message says what went wrong, with the user's input, and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ShrinkError",
    "ConfigError",
    "UnsupportedModelError",
    "ArtifactError",
    "DataError",
    "did_you_mean",
]


class ShrinkError(Exception):
    """Base class of every error torchshrink raises on purpose."""


class ConfigError(ShrinkError, ValueError):
    """A method config, recipe or argument is invalid."""


class UnsupportedModelError(ShrinkError):
    """The model (or a layer in it) cannot be handled by the requested method."""


class ArtifactError(ShrinkError):
    """A saved file is missing, truncated, corrupted, foreign or from a newer format."""


class DataError(ShrinkError):
    """A data set is missing or malformed, or a batch has the wrong shape."""


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 3) -> str:
    """A suffix like " Did you mean 'lenet5'?" or " Choices: a, b, c." for error messages."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(name, options, n=n, cutoff=0.5)
    if close:
        return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    shown = ", ".join(options[:20]) + (", ..." if len(options) > 20 else "")
    return f" Choices: {shown}."

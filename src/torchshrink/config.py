"""Frozen, validated method configs that round-trip through plain dicts (and so YAML/JSON).

A method is a config (this base class) plus a handler registered in `registry`. Configs hold
only plain data: numbers, strings, bools, tuples, dicts of those, and (for a few methods such
as distillation) objects that are deliberately excluded from serialization.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from torchshrink.errors import ConfigError

__all__ = ["Config", "check", "check_range", "check_choice"]

C = TypeVar("C", bound="Config")


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


def check_range(
    name: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Validate low <= value <= high (bounds optional, inclusivity configurable)."""
    if value is None:
        return
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        lb = "[" if low_inclusive else "("
        hb = "]" if high_inclusive else ")"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ConfigError(f"{name} must be in {lb}{lo}, {hi}{hb}, got {value!r}")


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    options = list(choices)
    if value not in options:
        raise ConfigError(f"{name} must be one of {options}, got {value!r}")


def _type_ok(value: Any, hint: Any) -> bool:
    """A small structural type check for the plain types configs use."""
    if hint is Any or hint is object:
        return True
    origin = get_origin(hint)
    if origin is Literal:
        return value in get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, h) for h in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        args = get_args(hint)
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        return len(args) == len(value) and all(_type_ok(v, a) for v, a in zip(value, args))
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        if not isinstance(value, dict):
            return False
        args = get_args(hint)
        if not args:
            return True
        return all(_type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # unknown typing construct: accept rather than reject valid input


def _freeze(value: Any) -> Any:
    """Lists from YAML/JSON become tuples so configs stay hashable and immutable."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base of every method config.

    Subclasses are frozen keyword-only dataclasses that validate in `__post_init__` (call
    `super().__post_init__()` first: it checks field types and freezes lists into tuples).
    Fields listed in `_runtime_fields` hold live objects (a teacher model, say) and are left
    out of `to_dict`.
    """

    _runtime_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.name in self._runtime_fields:
                continue
            value = _freeze(getattr(self, f.name))
            object.__setattr__(self, f.name, value)
            hint = hints.get(f.name, Any)
            if not _type_ok(value, hint):
                shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
                if get_origin(hint) is Literal:  # name the choices, not the word "Literal"
                    shown = f"one of {list(get_args(hint))}"
                raise ConfigError(
                    f"{type(self).__name__}.{f.name} must be {shown}, got {value!r} "
                    f"({type(value).__name__})"
                )

    @classmethod
    def method_name(cls) -> str:
        from torchshrink.registry import name_of

        return name_of(cls)

    def to_dict(self) -> dict[str, Any]:
        """Plain data with a `method` tag; `Config.from_dict` reverses it."""
        out: dict[str, Any] = {"method": self.method_name()}
        for f in dataclasses.fields(self):
            if f.name in self._runtime_fields:
                continue
            out[f.name] = _thaw(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build a config from plain data. On the base class the `method` tag picks the class;
        unknown keys are errors naming the key and the valid ones."""
        from torchshrink.registry import get_method

        data = dict(data)
        target: type[Config] = cls
        tag = data.pop("method", None)
        if cls is Config:
            if tag is None:
                raise ConfigError(f"config dict needs a 'method' key naming the method, got keys {sorted(data)}")
            target = get_method(str(tag)).config
        elif tag is not None and get_method(str(tag)).config is not cls:
            raise ConfigError(f"config dict names method {tag!r} but was loaded as {cls.__name__}")
        names = {f.name for f in dataclasses.fields(target) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            from torchshrink.errors import did_you_mean

            hint = did_you_mean(unknown[0], names)
            raise ConfigError(
                f"unknown key(s) {unknown} for {target.__name__}; valid keys: {sorted(names)}.{hint}"
            )
        try:
            return typing.cast(C, target(**data))
        except TypeError as e:  # e.g. a missing required field
            raise ConfigError(f"{target.__name__}: {e}") from e

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

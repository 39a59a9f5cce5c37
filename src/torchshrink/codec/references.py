"""Skeletons an artifact can name instead of needing `like=`: registered reference models,
and Hugging Face models rebuilt from their config (data, never code).

Reference models register themselves here (`torchshrink.models` does so on import), so the
codec never imports the models that use it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from torchshrink.errors import ArtifactError, ConfigError

__all__ = ["Reference", "build_hf", "build_reference", "hf_record", "identify", "register_reference"]


@dataclasses.dataclass(frozen=True)
class Reference:
    """name: what the manifest records. matches(model): whether a model is one of these.
    kwargs_of(model): the JSON constructor arguments that differ from the default, or None.
    build(**kwargs): a fresh skeleton; raises ConfigError/ValueError/TypeError on bad kwargs."""

    name: str
    matches: Callable[[nn.Module], bool]
    kwargs_of: Callable[[nn.Module], dict[str, Any] | None]
    build: Callable[..., nn.Module]


_REFERENCES: dict[str, Reference] = {}


def register_reference(ref: Reference) -> None:
    _REFERENCES[ref.name] = ref


def identify(model: nn.Module) -> tuple[str, dict[str, Any] | None] | None:
    """(name, constructor kwargs) of a registered reference model, or None."""
    for ref in _REFERENCES.values():
        if ref.matches(model):
            kwargs = ref.kwargs_of(model)
            return ref.name, (json.loads(json.dumps(kwargs)) if kwargs else None)
    return None


def build_reference(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The skeleton registered under `name`; ArtifactError on an unknown name or bad kwargs."""
    if name not in _REFERENCES:
        raise ArtifactError(f"the artifact names reference model {name!r}, which is not registered (known: "
                            f"{sorted(_REFERENCES)}); import the package that defines it, or pass like=")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ArtifactError(f"the constructor arguments recorded for {name!r} are not a JSON object of names")
    try:
        return _REFERENCES[name].build(**kwargs)
    except (ConfigError, TypeError, ValueError, OverflowError, ZeroDivisionError) as e:
        raise ArtifactError(f"cannot build the skeleton {name!r} from {json.dumps(kwargs)[:200]}: {e}") from e


def _transformers() -> Any | None:
    # A model can only be a transformers model if transformers is already imported.
    return sys.modules.get("transformers")


def hf_record(model: nn.Module) -> dict[str, Any] | None:
    """{"c": model class, "k": config class, "d": config dict} for a transformers model whose
    class the transformers package exports, else None."""
    tf = _transformers()
    if tf is None or not isinstance(model, tf.PreTrainedModel):
        return None
    cls = type(model)
    cfg_cls = type(model.config)
    if getattr(tf, cls.__name__, None) is not cls or getattr(tf, cfg_cls.__name__, None) is not cfg_cls:
        return None  # a user subclass: its code is not in transformers, so like= is needed
    return {"c": cls.__name__, "k": cfg_cls.__name__, "d": json.loads(model.config.to_json_string(use_diff=False))}


def build_hf(record: Any) -> nn.Module:
    """The transformers model a manifest's "hf" entry describes, built from its config only.
    Only classes exported by the transformers package are accepted."""
    if not (isinstance(record, dict) and isinstance(record.get("c"), str) and isinstance(record.get("k"), str)
            and isinstance(record.get("d"), dict)):
        raise ArtifactError("the artifact's Hugging Face record is malformed (needs class, config class, config)")
    try:
        import transformers
    except ImportError as e:
        raise ArtifactError(f"the artifact holds a Hugging Face {record['c']}; install transformers "
                            "(pip install 'torchshrink[hf]') or pass like=") from e
    cls = getattr(transformers, record["c"], None)
    cfg_cls = getattr(transformers, record["k"], None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ArtifactError(f"the artifact names {record['c']!r}, which is not a transformers model class")
    if not (isinstance(cfg_cls, type) and issubclass(cfg_cls, transformers.PretrainedConfig)):
        raise ArtifactError(f"the artifact names {record['k']!r}, which is not a transformers config class")
    try:
        return cls(cfg_cls.from_dict(record["d"]))
    except Exception as e:  # transformers raises many kinds on odd config values
        raise ArtifactError(f"cannot build {record['c']} from the recorded config: {type(e).__name__}: {e}") from e

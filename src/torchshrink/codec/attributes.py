"""Structural attributes and transformers' `Conv1D` in the artifact.

Removing attention heads changes plain attributes beside the thinner projections (a head
count, GPT-2's `split_size`, the model config's `num_attention_heads`); the forward reads them,
so a skeleton given to `load(like=...)` must get them too. The pruning surgery notes each one
on the module it set it on (`torchshrink.nn.transformer.record_attribute`); the artifact
stores the notes as JSON and sets them again after the modules are rebuilt.

`Conv1D` is registered when transformers is already imported (a model holding one means it
is), so torchshrink itself never pays transformers' import time.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from torchshrink.codec.structure import module_codec_by_name, register_module
from torchshrink.errors import ArtifactError
from torchshrink.nn.transformer import STRUCTURE_ATTR

__all__ = ["structural_attributes", "replay_attributes", "register_optional_modules"]

_SCALARS = (int, float, str, bool, type(None))


def structural_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{module name: {dotted attribute: value}} for every module the surgery noted."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        table = getattr(m, STRUCTURE_ATTR, None)
        if isinstance(table, dict) and table:
            out[name] = {k: v for k, v in table.items() if isinstance(v, _SCALARS)}
    return out


def replay_attributes(model: nn.Module, table: Any, path: str) -> None:
    if not isinstance(table, dict):
        raise ArtifactError(f"{path!r}: malformed structural attribute table")
    for name, attrs in table.items():
        try:
            owner = model.get_submodule(name) if name else model
        except AttributeError as e:
            raise ArtifactError(f"{path!r} sets attributes on {name!r}, which like= does not have; pass the "
                                "architecture the artifact was saved from") from e
        if not isinstance(attrs, dict):
            raise ArtifactError(f"{path!r}: malformed structural attributes for {name!r}")
        for dotted, value in attrs.items():
            *parts, last = str(dotted).split(".")
            obj: Any = owner
            try:
                for p in parts:
                    obj = getattr(obj, p)
            except AttributeError as e:
                raise ArtifactError(f"{path!r} sets {name}.{dotted}, which like= does not have") from e
            setattr(obj, last, value)
        object.__setattr__(owner, STRUCTURE_ATTR, dict(attrs))


def _conv1d_codec(cls: type[nn.Module]) -> None:
    register_module(cls, to_spec=lambda m: {"nf": m.nf, "nx": m.nx},
                    from_spec=lambda s: cls(s["nf"], s["nx"]), name="transformers.Conv1D")


def register_optional_modules(*, table: Any = None) -> None:
    """Register `Conv1D` if transformers is loaded, or if the structure `table` of an artifact
    being loaded names it."""
    mod = sys.modules.get("transformers.pytorch_utils")
    named = isinstance(table, list) and any(isinstance(e, list) and e and e[0] == "transformers.Conv1D"
                                            for e in table)
    if mod is None and named:
        try:
            import transformers.pytorch_utils as mod
        except ImportError:
            return
    if mod is None:
        return
    try:
        module_codec_by_name("transformers.Conv1D")
    except ArtifactError:
        _conv1d_codec(mod.Conv1D)

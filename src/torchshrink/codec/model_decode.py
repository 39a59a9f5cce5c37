"""Manifest and payload -> model: the skeleton, structure replay, parametrizations, tensors.

The whole rebuild runs twice: first on the meta device, where a hostile manifest (a 4 PB
layer, a million heads) costs nothing and its tensor names and shapes are checked against
the file's tensor table; then for real, only once they agree.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.codec import attributes, references, structure
from torchshrink.codec.encodings import dtype_code, get_encoding
from torchshrink.codec.fileformat import TensorRecord, dumps, fail
from torchshrink.codec.mapped import MappedArtifact
from torchshrink.codec.model_encode import depth, module_codec, normalized
from torchshrink.errors import ArtifactError
from torchshrink.nn.history import set_history
from torchshrink.nn.meta import (
    build_on_meta,
    build_with_state_on_meta,
    meta_copy,
    state_shapes,
)

__all__ = ["decode_model", "layout"]

_BUILD_ERRORS = (ArtifactError, TypeError, ValueError, KeyError, IndexError, OverflowError, ZeroDivisionError,
                 RuntimeError, AttributeError, RecursionError)


def _copy_like(like: nn.Module, meta: bool) -> nn.Module:
    try:
        return meta_copy(like) if meta else copy.deepcopy(like)
    except Exception as e:  # deepcopy runs arbitrary __deepcopy__/__reduce__ code of user modules
        raise ArtifactError(
            f"like= ({type(like).__name__}) cannot be copied ({type(e).__name__}: {e}); loading never edits the "
            "module you pass, so pass one that copy.deepcopy accepts, or ts.load(..., inplace=True) to load "
            "into that module itself"
        ) from e


def _skeleton(like: nn.Module | str | None, manifest: dict[str, Any], path: str, meta: bool,
              inplace: bool, light: bool) -> nn.Module:
    if isinstance(like, nn.Module):
        return like if inplace else _copy_like(like, meta or light)
    name = like if isinstance(like, str) else manifest.get("m")
    build: Callable[[], nn.Module]
    if name is None and like is None and "hf" in manifest:
        record = manifest["hf"]
        build = lambda: references.build_hf(record)  # noqa: E731
    elif name is None:
        root = manifest.get("r", "model")
        raise ArtifactError(
            f"{path!r} holds a {root} that is not a torchshrink reference model; pass like= a freshly "
            f"constructed {root} (the skeleton the saved structure is replayed on)"
        )
    else:
        if not isinstance(name, str):
            raise fail(path, "the reference model name is not a string")
        kwargs = (manifest.get("mk") or {}) if like is None or like == manifest.get("m") else {}
        build = lambda: references.build_reference(name, kwargs)  # noqa: E731
    try:
        return build_on_meta(build) if meta else build_with_state_on_meta(build) if light else build()
    except ArtifactError as e:
        raise ArtifactError(f"{path!r}: {e}") from e


def _strip_parametrizations(model: nn.Module) -> None:
    for m in list(model.modules()):
        if parametrize.is_parametrized(m):
            for tensor_name in list(m.parametrizations.keys()):  # type: ignore[union-attr,operator]
                # Keep the skeleton's plain tensor; the artifact's values replace it anyway.
                parametrize.remove_parametrizations(m, tensor_name, leave_parametrized=False)


def _spec_matches(codec: structure.TypeCodec, existing: nn.Module, spec: Any) -> bool:
    return bool(normalized(codec.to_spec(existing)) == spec)


def _replay(model: nn.Module, manifest: dict[str, Any], path: str) -> nn.Module:
    """Rebuild modules whose recorded type or spec differs from the skeleton's, parents first."""
    table = manifest.get("S", [])
    specs = manifest.get("s", {})
    if not isinstance(table, list) or not isinstance(specs, dict):
        raise fail(path, "malformed structure table")
    for name in sorted(specs, key=lambda n: (depth(n), n)):
        try:
            type_name, spec = table[specs[name]]
        except (IndexError, TypeError, ValueError) as e:
            raise fail(path, f"malformed structure entry for {name!r}") from e
        if not isinstance(type_name, str) or not isinstance(spec, dict):
            raise fail(path, f"malformed structure entry for {name!r}")
        codec = structure.module_codec_by_name(type_name)
        try:
            existing: nn.Module | None = model.get_submodule(name) if name else model
        except AttributeError:
            existing = None
        if existing is not None and module_codec(existing) is codec and _spec_matches(codec, existing, spec):
            continue
        try:
            new = codec.from_spec(spec)
        except _BUILD_ERRORS as e:
            raise ArtifactError(f"cannot rebuild {name or 'the root module'} as {type_name} from "
                                f"{dumps(spec)[:200]}: {type(e).__name__}: {e}") from e
        if name == "":
            model = new
            continue
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError as e:
            raise ArtifactError(
                f"{path!r} has a layer {name!r} whose parent {parent_name!r} is missing from like= "
                f"({type(model).__name__}); pass the architecture the artifact was saved from"
            ) from e
        setattr(parent, attr, new)
    return model


def _reattach(model: nn.Module, manifest: dict[str, Any], path: str) -> None:
    chains = manifest.get("p", {})
    if not isinstance(chains, dict):
        raise fail(path, "malformed parametrization table")
    for target, chain in chains.items():
        layer, _, tensor_name = target.rpartition(".")
        try:
            module = model.get_submodule(layer) if layer else model
        except AttributeError as e:
            raise ArtifactError(f"{path!r} parametrizes {target!r} but like= has no layer {layer!r}") from e
        if not isinstance(chain, list):
            raise fail(path, f"malformed parametrization chain for {target!r}")
        for item in chain:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise fail(path, f"malformed parametrization entry for {target!r}")
            type_name, spec = item
            codec = structure.parametrization_codec_by_name(type_name)
            try:
                p = codec.from_spec(spec)
                parametrize.register_parametrization(module, tensor_name, p, unsafe=True)
            except _BUILD_ERRORS as e:
                raise ArtifactError(f"cannot re-attach {type_name} to {target!r} from {dumps(spec)[:200]}: "
                                    f"{type(e).__name__}: {e}") from e


def _build(like: nn.Module | str | None, manifest: dict[str, Any], path: str, *, meta: bool,
           inplace: bool, light: bool = False) -> nn.Module:
    """The skeleton with the recorded structure and parametrizations: on the meta device
    (meta), or real with its parameters and persistent buffers on the meta device (light: all
    of them are about to be assigned from the file; a like= module is then copied to the meta device, its
    buffers filled in after loading by `_fill_buffers`), or real."""
    model = _skeleton(like, manifest, path, meta, inplace, light)

    def rest() -> nn.Module:
        _strip_parametrizations(model)
        attributes.register_optional_modules(table=manifest.get("S"))
        out = _replay(model, manifest, path)
        if "A" in manifest:
            attributes.replay_attributes(out, manifest["A"], path)
        _reattach(out, manifest, path)
        return out

    return build_on_meta(rest) if meta else build_with_state_on_meta(rest) if light else rest()


def _aliases(manifest: dict[str, Any], stored: set[str], path: str) -> dict[str, str]:
    aliases = manifest.get("a", {})
    if not (isinstance(aliases, dict) and all(isinstance(v, str) and v in stored for v in aliases.values())
            and not stored & set(aliases)):
        raise fail(path, "malformed tied-tensor table (an alias must name a stored tensor)")
    return aliases


def _check_against(model: nn.Module, records: list[TensorRecord], aliases: dict[str, str], manifest: dict[str, Any],
                   path: str) -> None:
    expected = state_shapes(model)
    declared = {r.key: (r.shape, r.dtype) for r in records}
    declared.update({a: declared[s] for a, s in aliases.items()})
    missing = [k for k in expected if k not in declared]
    unexpected = [k for k in declared if k not in expected]
    if missing or unexpected:
        saved = manifest.get("r", "?")
        raise ArtifactError(
            f"{path!r} does not match like= ({type(model).__name__}; the artifact holds a {saved}): "
            f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected tensors "
            f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}. Pass like= the architecture it was saved from"
        )
    for k, (shape, _) in declared.items():
        if expected[k][0] != shape:
            raise ArtifactError(
                f"{path!r}: tensor {k!r} has shape {list(shape)} in the artifact but {list(expected[k][0])} in "
                f"like= ({type(model).__name__}); pass the architecture it was saved from"
            )


def _decode_tensors(records: list[TensorRecord], source: MappedArtifact, path: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for r in records:
        enc = get_encoding(r.encoding)
        # The built-in decoders read a view of the map; others get bytes, as they always did.
        builtin = type(enc).__module__.startswith("torchshrink.codec.")
        try:
            with source.stream(r) as view:
                t = enc.decode(view if builtin else bytes(view), r.meta, r.shape, r.dtype)  # type: ignore[arg-type]
        except ArtifactError:
            raise
        except Exception as e:  # a bad payload must never surface as a crash
            raise fail(path, f"tensor {r.key!r} does not decode with {r.encoding!r}: {e}") from e
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != r.shape or t.dtype != r.dtype:
            raise fail(path, f"tensor {r.key!r} decoded to the wrong shape or dtype")
        out[r.key] = t
    return out


def _tensors_for(model: nn.Module, decoded: dict[str, torch.Tensor],
                 aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    """The state_dict to assign: one object per stored tensor, so tied names get the very same
    Parameter and stay tied after `load_state_dict(assign=True)`."""
    current = model.state_dict(keep_vars=True)
    out: dict[str, torch.Tensor] = {}
    for key, t in decoded.items():
        old = current.get(key)
        out[key] = nn.Parameter(t, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else t
    for alias, source in aliases.items():
        out[alias] = out[source]
    return out


def layout(manifest: dict[str, Any], path: str, like: nn.Module | str | None, *,
           inplace: bool = False) -> list[list[Any]]:
    """[[key, shape, dtype code], ...] of the tensors the rebuilt skeleton stores, in its
    state_dict order with tied aliases left out: what an implicit tensor table is laid out by.
    Built on the meta device, except in place (a module that refuses copying)."""
    aliases = manifest.get("a", {})
    if not isinstance(aliases, dict):
        raise fail(path, "malformed tied-tensor table")
    model = _build(like, manifest, path, meta=not inplace, inplace=inplace)
    try:
        return [[k, list(shape), dtype_code(dtype)] for k, (shape, dtype) in state_shapes(model).items()
                if k not in aliases]
    except ArtifactError as e:
        raise ArtifactError(f"{path!r}: the skeleton holds a tensor the artifact cannot describe ({e})") from e


def _assign(model: nn.Module, tensors: dict[str, torch.Tensor], path: str) -> None:
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:
        raise ArtifactError(f"{path!r} does not load into {type(model).__name__}: {e}") from e


def _fill_buffers(model: nn.Module, like: nn.Module) -> None:
    """Copy into `model` the buffers the file does not hold (non-persistent ones) from `like`,
    whose meta copy `model` was built from: what a deep copy of `like` would have had."""
    source = dict(like.named_buffers())
    for name, buf in list(model.named_buffers()):
        src = source.get(name)
        if buf.is_meta and src is not None and src.shape == buf.shape and src.dtype == buf.dtype:
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner)._buffers[attr] = src.detach().clone()


def _has_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def decode_model(manifest: dict[str, Any], records: list[TensorRecord], source: MappedArtifact, path: str,
                 like: nn.Module | str | None, *, inplace: bool = False) -> nn.Module:
    """The model, its tensors decoded one at a time from `source`. Unless in place, the skeleton
    gets its parameters and persistent buffers on the meta device, so memory holds only the
    decoded tensors; should one stay unassigned (a module that hides a tensor from its
    state_dict), the skeleton is built again for real."""
    aliases = _aliases(manifest, {r.key for r in records}, path)
    if not inplace:
        # A module that refuses deepcopy cannot be copied to the meta device either; in place,
        # the check runs after the real rebuild (still before any tensor is decoded).
        _check_against(_build(like, manifest, path, meta=True, inplace=False), records, aliases, manifest, path)
    light = not inplace
    model = _build(like, manifest, path, meta=False, inplace=inplace, light=light)
    _check_against(model, records, aliases, manifest, path)
    decoded = _decode_tensors(records, source, path)
    _assign(model, _tensors_for(model, decoded, aliases), path)
    if light and isinstance(like, nn.Module):
        _fill_buffers(model, like)
    if light and _has_meta(model):
        model = _build(like, manifest, path, meta=False, inplace=False)
        _assign(model, _tensors_for(model, decoded, aliases), path)
    history = manifest.get("h")
    if history:
        if not isinstance(history, list):
            raise fail(path, "the history is not a list")
        set_history(model, json.loads(dumps(history)))
    model.eval()
    return model

"""Model -> manifest and payload: what the artifact records about a module tree.

Every tensor of the state_dict is coded by the smallest bit-exact encoding
(`codec/encodings.py`) and the coded streams are concatenated into one payload, because
file bytes are what users judge and each safetensors entry costs header bytes. Tied
tensors (one Parameter under two names) are coded once and recorded as aliases.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Mapping
from typing import Any, Protocol, overload

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.codec import attributes, references, structure
from torchshrink.codec.encodings import (
    Dense,
    Encoding,
    TensorHint,
    dtype_code,
    encodings,
    tensor_bytes,
)
from torchshrink.codec.fileformat import FORMAT_VERSION, dumps, version
from torchshrink.codec.screen import screened
from torchshrink.errors import ArtifactError, ConfigError
from torchshrink.nn.history import history_of
from torchshrink.nn.meta import build_on_meta
from torchshrink.nn.storage import alias_groups

__all__ = ["StreamSink", "depth", "encode_streams", "encode_tensor", "manifest_of", "module_codec", "normalized",
           "plain_type", "raw_view", "unregistered_error"]


def _layer_of(key: str) -> tuple[str, str]:
    """("fc1", "parametrizations.weight.original") for a state_dict key: the layer a tensor
    belongs to and the tensor's name relative to it."""
    marker = "parametrizations."
    if key.startswith(marker):
        return "", key
    if "." + marker in key:
        layer, rest = key.split("." + marker, 1)
        return layer, marker + rest
    layer, _, name = key.rpartition(".")
    return layer, name


def plain_type(m: nn.Module) -> type[nn.Module]:
    # torch.nn.utils.parametrize swaps a module's class for a generated subclass.
    cls = type(m)
    if parametrize.is_parametrized(m):
        cls = cls.__bases__[0]
    return cls


def module_codec(m: nn.Module) -> structure.TypeCodec | None:
    cls = plain_type(m)
    for codec in structure._MODULES.values():
        if codec.cls is cls:
            return codec
    return None


def normalized(spec: Any) -> Any:
    """Specs compare after a JSON round trip (tuples vs lists, int vs float keys)."""
    return json.loads(dumps(spec))


# ----------------------------------------------------------------------------- writing


def _hint_for(key: str, tensor: torch.Tensor, modules: Mapping[str, nn.Module]) -> TensorHint:
    layer, rel = _layer_of(key)
    is_int = not tensor.dtype.is_floating_point and tensor.dtype not in (torch.bool,) and not tensor.is_complex()
    hint = TensorHint(module=layer, tensor=rel, key=key, is_index=is_int)
    owner_name, _, local = key.rpartition(".")
    owner = modules.get(owner_name)
    owners: list[Any] = [owner]
    if isinstance(owner, parametrize.ParametrizationList) and local.startswith("original"):
        owners, local = list(owner), "original"  # every member of the chain may describe it
    for o in owners:
        fn = getattr(o, "ts_encoding_hint", None)
        if callable(fn):
            hint = hint.updated(fn(local))
    return hint


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and tensor_bytes(a) == tensor_bytes(b)


def raw_view(t: torch.Tensor) -> memoryview:
    """`tensor_bytes(t)` without the copy where the machine is little-endian: the bytes dense
    stores, as a view of the (contiguous) tensor's memory."""
    if sys.byteorder != "little":
        return memoryview(tensor_bytes(t))
    twin = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    arr: Any = (t.view(twin) if t.dtype != twin else t).reshape(-1).numpy()
    return memoryview(arr).cast("B")


def encode_tensor(key: str, tensor: torch.Tensor, hint: TensorHint, candidates: list[Encoding], *,
                  verify: bool = True) -> tuple[str, bytes | memoryview, dict[str, Any]]:
    """The encoding `save` stores `tensor` with: the smallest bit-exact one among those
    `codec/screen.py` keeps (all of them for a small tensor). A large tensor that nothing beats
    is stored by the built-in dense encoding as a view of its own bytes (exact by construction)."""
    chosen = screened(tensor, candidates)
    dense = next((c for c in chosen if c.name == "dense" and type(c) is Dense), None)
    if chosen is candidates or dense is None:
        return _encode_best(key, tensor, hint, chosen, verify=verify)
    raw = tensor.numel() * tensor.element_size()
    got = _encode_best(key, tensor, hint, [c for c in chosen if c is not dense], verify=verify, bound=raw)
    return got if got is not None else ("dense", raw_view(tensor), {})


@overload
def _encode_best(key: str, tensor: torch.Tensor, hint: TensorHint, candidates: list[Encoding], *,
                 verify: bool = True, bound: None = None) -> tuple[str, bytes, dict[str, Any]]: ...


@overload
def _encode_best(key: str, tensor: torch.Tensor, hint: TensorHint, candidates: list[Encoding], *,
                 verify: bool = True, bound: int) -> tuple[str, bytes, dict[str, Any]] | None: ...


def _encode_best(key: str, tensor: torch.Tensor, hint: TensorHint,
                 candidates: list[Encoding], *, verify: bool = True,
                 bound: int | None = None) -> tuple[str, bytes, dict[str, Any]] | None:
    """The smallest encoding of `tensor` that decodes bit-exactly. verify=False skips the
    decode (a size estimate: an encoding that would fail the check may be picked). With a
    bound, only an encoding costing less counts, and None means none did."""
    best: tuple[int, str, bytes, dict[str, Any]] | None = None
    shape = tuple(tensor.shape)
    for enc in candidates:
        try:
            got = enc.encode(tensor, hint)
            if got is None:
                continue
            payload, meta = bytes(got[0]), dict(got[1])
            meta_cost = len(dumps(meta)) if meta else 0
            cost = len(payload) + meta_cost
            if (best is not None and cost >= best[0]) or (bound is not None and cost >= bound):
                continue
            if not verify:
                best = (cost, enc.name, payload, meta)
                if not payload:  # an empty stream (all zeros, a constant): no encoding is smaller
                    break
                continue
            decoded = enc.decode(payload, json.loads(dumps(meta)), shape, tensor.dtype)
        except ArtifactError:
            raise
        except Exception as e:
            raise ArtifactError(
                f"tensor encoding {enc.name!r} failed on {key!r} ({list(shape)} {tensor.dtype}): {e}; "
                "nothing was written"
            ) from e
        if not _bits_equal(decoded, tensor):
            warnings.warn(f"encoding {enc.name!r} is not bit-exact on {key!r}; skipped", stacklevel=3)
            continue
        best = (cost, enc.name, payload, meta)
    if best is None:
        if bound is not None:
            return None
        raise ArtifactError(f"no registered encoding could store {key!r} ({list(shape)} {tensor.dtype})")
    return best[1], best[2], best[3]


def _chain_value(plist: nn.Module, original: torch.Tensor) -> torch.Tensor:
    x = original
    for p in plist:  # type: ignore[attr-defined]
        x = p(x)
    return x


def _canonical_originals(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict key -> the value to store instead of a parametrization chain's raw tensor,
    where the chain's first parametrization defines `canonical_original`."""
    out: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if not parametrize.is_parametrized(m):
            continue
        for tensor_name, plist in m.parametrizations.items():
            first = plist[0]
            fn = getattr(first, "canonical_original", None)
            if not callable(fn) or not hasattr(plist, "original"):
                continue
            with torch.no_grad():
                raw = plist.original
                canon = fn(raw.detach())
                if not isinstance(canon, torch.Tensor) or canon.shape != raw.shape or canon.dtype != raw.dtype:
                    raise ArtifactError(
                        f"{type(first).__name__}.canonical_original on {name}.{tensor_name} must return a "
                        f"tensor of shape {list(raw.shape)} and dtype {raw.dtype}"
                    )
                # Eval mode: a fake-quant observer later in the chain must not learn from
                # the probe. The model's own mode is restored right after.
                modes = [(mod, mod.training) for mod in plist.modules()]
                plist.eval()
                try:
                    same = _bits_equal(_chain_value(plist, canon), _chain_value(plist, raw))
                finally:
                    for mod, mode in modes:
                        mod.training = mode
            if not same:
                warnings.warn(
                    f"{type(first).__name__}.canonical_original changes the value of {name}.{tensor_name}; "
                    "storing the raw tensor instead", stacklevel=3)
                continue
            key = f"{name}.parametrizations.{tensor_name}.original" if name else f"parametrizations.{tensor_name}.original"
            out[key] = canon.detach()
    return out


def _module_specs(model: nn.Module) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for name, m in model.named_modules():
        if "parametrizations" in name.split("."):
            continue  # parametrization containers and members: rebuilt by re-attaching
        codec = module_codec(m)
        if codec is not None:
            out[name] = [codec.name, normalized(codec.to_spec(m))]
    return out


def unregistered_error(name: str, m: nn.Module) -> ArtifactError:
    return ArtifactError(
        f"layer {name!r} is a {plain_type(m).__name__}, which the artifact cannot rebuild: register it with "
        "torchshrink.codec.structure.register_module(cls, to_spec=..., from_spec=...) next to its definition"
    )


def _structure(model: nn.Module, reference: nn.Module | None
               ) -> tuple[list[list[Any]], dict[str, int], dict[str, list[list[Any]]]]:
    """Structure specs and parametrization chains.

    With a reference skeleton (the model is a registered reference model) the save simulates
    the load: it replays specs on the skeleton parents first and records only the modules
    that still differ, so an unchanged architecture costs no bytes and the children of a
    rebuilt module are recorded only where its constructor does not already produce them.
    """
    table: list[list[Any]] = []
    index: dict[str, int] = {}
    specs: dict[str, int] = {}
    chains: dict[str, list[list[Any]]] = {}
    wanted = _module_specs(model)
    recorded: dict[str, list[Any]] = {}
    if reference is None:
        recorded = wanted
    else:
        sim = reference
        for name in sorted(wanted, key=lambda n: (depth(n), n)):
            entry = wanted[name]
            try:
                existing: nn.Module | None = sim.get_submodule(name) if name else sim
            except AttributeError:
                existing = None
            codec = module_codec(existing) if existing is not None else None
            if codec is not None and existing is not None and [codec.name, normalized(codec.to_spec(existing))] == entry:
                continue
            recorded[name] = entry
            new = structure.module_codec_by_name(entry[0]).from_spec(entry[1])
            if name == "":
                sim = new
                continue
            parent_name, _, attr = name.rpartition(".")
            try:
                parent = sim.get_submodule(parent_name) if parent_name else sim
            except AttributeError:
                raise unregistered_error(parent_name, model.get_submodule(parent_name)) from None
            setattr(parent, attr, new)
        sim_types = {n: plain_type(m) for n, m in sim.named_modules()}
        for name, m in model.named_modules():
            if "parametrizations" in name.split(".") or module_codec(m) is not None:
                continue
            if sim_types.get(name) is not plain_type(m):
                raise unregistered_error(name, m)
    for name, entry in recorded.items():
        k = dumps(entry)
        if k not in index:
            index[k] = len(table)
            table.append(entry)
        specs[name] = index[k]
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m) and "parametrizations" not in name.split("."):
            for tensor_name, plist in m.parametrizations.items():
                chain = []
                for p in plist:
                    pc = structure.parametrization_codec(p)
                    if pc is None:
                        raise ArtifactError(
                            f"parametrization {type(p).__name__} on {name or '<root>'}.{tensor_name} is not "
                            "registered for artifacts; call torchshrink.codec.structure.register_parametrization("
                            f"{type(p).__name__}, to_spec=..., from_spec=...) next to its definition"
                        )
                    chain.append([pc.name, normalized(pc.to_spec(p))])
                chains[f"{name}.{tensor_name}" if name else tensor_name] = chain
    return table, specs, chains

def depth(name: str) -> int:
    return -1 if name == "" else name.count(".")


def _reference(model: nn.Module) -> tuple[dict[str, Any], nn.Module | None]:
    """(manifest entries naming the skeleton, that skeleton) for a registered reference model
    or a transformers model; ({}, None) for anything else (then loading needs like=)."""
    found = references.identify(model)
    if found is not None:
        name, kwargs = found
        entries: dict[str, Any] = {"m": name}
        if kwargs:
            entries["mk"] = kwargs
        # Structure replay on the skeleton decides what must be recorded; it compares module
        # types and specs, never values, so the skeleton is built on the meta device (a real
        # build of a 125M-parameter model took a second, and its memory).
        return entries, build_on_meta(lambda: references.build_reference(name, kwargs or {}))
    record = references.hf_record(model)
    if record is not None:
        return {"hf": record}, build_on_meta(lambda: references.build_hf(record))
    return {}, None


def _check_tensor(key: str, value: Any) -> None:
    if not isinstance(value, torch.Tensor):
        raise ArtifactError(
            f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; the artifact stores "
            "tensors only (convert packed or quantized modules to modules with plain tensor buffers)"
        )
    if value.is_quantized or value.is_sparse or value.layout != torch.strided:
        raise ArtifactError(
            f"state_dict entry {key!r} is a {value.layout}/{value.dtype} tensor; the artifact stores dense "
            "tensors only (store integer codes and scales as plain buffers)"
        )


def _stored_values(state: Mapping[str, torch.Tensor], canon: dict[str, torch.Tensor],
                   aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    """The value written for each non-alias key. A tied tensor takes its canonical form only
    where every name it has agrees on that form; otherwise the raw tensor, which is exact for all."""
    out = {k: canon.get(k, v) for k, v in state.items() if k not in aliases}
    for alias, source in aliases.items():
        if alias in canon or source in canon:
            a, s = canon.get(alias, state[alias]), canon.get(source, state[source])
            if not _bits_equal(a, s):
                out[source] = state[source]
    return out


class StreamSink(Protocol):
    """Where `encode_streams` puts the coded tensors (`codec/writer.py` writes them to a file)."""

    def begin(self, tensors: list[tuple[str, list[int], int]]) -> None:
        """(key, shape, raw bytes) of every tensor to come, in table order, before the first."""

    def add(self, row: list[Any], payload: bytes | memoryview) -> None:
        """One tensor: its table row [key, encoding, shape, dtype code, bytes, meta?] and stream."""


def encode_streams(model: nn.Module, sink: StreamSink, *, metadata: Mapping[str, Any] | None = None,
                   history: bool = False) -> dict[str, Any]:
    """Code `model`'s tensors one by one into `sink`; returns the manifest (tensor table with
    names). Everything that can refuse the model (metadata, tensor kinds, unregistered
    modules) is checked before the first tensor is coded."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"save() expects an nn.Module, got {type(model).__name__}")
    user_meta = None
    if metadata is not None:
        try:
            user_meta = normalized(dict(metadata))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"metadata must be JSON-serializable data (str, numbers, lists, dicts): {e}") from e
    attributes.register_optional_modules()
    state = model.state_dict(keep_vars=True)
    for key, value in state.items():
        _check_tensor(key, value)
    aliases = alias_groups(state)
    values = _stored_values(state, _canonical_originals(model), aliases)
    modules = dict(model.named_modules())
    entries, reference = _reference(model)
    attrs = attributes.structural_attributes(model)
    # After head pruning the saved config already describes the thinner model, while like= may
    # be the original: record every module spec, not only those that differ from the config's build.
    table, specs, chains = _structure(model, None if attrs else reference)
    candidates = encodings()
    sink.begin([(k, list(v.shape), v.numel() * v.element_size()) for k, v in values.items()])
    rows: list[list[Any]] = []
    for key, value in values.items():
        t = value.detach().to("cpu").contiguous()
        code = dtype_code(t.dtype)
        enc, payload, meta = encode_tensor(key, t, _hint_for(key, t, modules), candidates)
        rec: list[Any] = [key, enc, list(t.shape), code, len(payload) if isinstance(payload, bytes) else payload.nbytes]
        if meta:
            rec.append(meta)
        rows.append(rec)
        sink.add(rec, payload)
    manifest: dict[str, Any] = {"f": FORMAT_VERSION, "v": version(), **entries}
    manifest["r"] = plain_type(model).__name__
    applied = history_of(model) if history else []
    if applied:
        manifest["h"] = normalized(applied)
    if user_meta is not None:
        manifest["u"] = user_meta
    if table:
        manifest["S"] = table
        manifest["s"] = specs
    if chains:
        manifest["p"] = chains
    if attrs:
        manifest["A"] = normalized(attrs)
    manifest["t"] = rows
    if aliases:
        manifest["a"] = aliases
    return manifest


class _Collect:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def begin(self, tensors: list[tuple[str, list[int], int]]) -> None:
        pass

    def add(self, row: list[Any], payload: bytes | memoryview) -> None:
        self.chunks.append(bytes(payload))


def manifest_of(model: nn.Module, *, metadata: Mapping[str, Any] | None = None,
                history: bool = False) -> tuple[dict[str, Any], bytes]:
    """The manifest and the concatenated payload of `model`, all in memory (tests, sizes)."""
    sink = _Collect()
    manifest = encode_streams(model, sink, metadata=metadata, history=history)
    return manifest, b"".join(sink.chunks)

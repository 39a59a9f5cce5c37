"""The artifact: one safetensors file, no pickle, everything needed to rebuild the model.

Layout (all of it a valid safetensors file, readable by `safetensors.safe_open`):

    u64 header length | JSON header | payload
    header = {"__metadata__": {"ts": <manifest JSON>, "c": <crc32 of the manifest, hex>},
              "b": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}

Every tensor of the model's state_dict is coded by the smallest bit-exact encoding
(`codec/encodings.py`) and the coded streams are concatenated into the one uint8 tensor
"b", because file bytes are what users judge and each safetensors entry costs header bytes.

Manifest keys (short on purpose, since they are in every file):

    f   format version (int). Readers refuse a newer one. Every version keeps "c".
    v   torchshrink version that wrote the file
    m   reference model name (`models.create(m, **mk)` gives the skeleton), when known
    mk  constructor arguments for `m` (the GPTConfig of a GPTTiny), when not the default
    r   class name of the root module (for error messages)
    h   the model's `torchshrink_history`: the configs applied to it, as plain dicts
    u   user metadata given to `save(metadata=...)`
    S   structure spec table: [[module type name, spec], ...] (deduplicated)
    s   {module name: index into S} for every module whose type is registered
    p   {"<module>.<tensor>": [[parametrization type name, spec], ...]} in chain order
    t   [[state_dict key, encoding, shape, dtype code, payload bytes, meta?], ...] in payload order
    x   crc32 of the payload, hex
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.codec import structure
from torchshrink.codec.encodings import (
    Encoding,
    TensorHint,
    dtype_code,
    dtype_from_code,
    encodings,
    get_encoding,
    tensor_bytes,
)
from torchshrink.errors import ArtifactError, ConfigError

__all__ = ["FORMAT_VERSION", "ArtifactInfo", "TensorRecord", "save", "load", "read_info"]

FORMAT_VERSION = 1
_BLOB = "b"
_MANIFEST_KEY = "ts"
_MANIFEST_CRC = "c"
_MAX_HEADER = 100 * 2**20  # a header beyond this is corruption, not a model


def _crc(data: bytes) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)


def _version() -> str:
    try:
        from torchshrink import __version__

        return __version__
    except ImportError:  # during a partial import of the package
        return "unknown"


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


def _plain_type(m: nn.Module) -> type[nn.Module]:
    # torch.nn.utils.parametrize swaps a module's class for a generated subclass.
    cls = type(m)
    if parametrize.is_parametrized(m):
        cls = cls.__bases__[0]
    return cls


def _module_codec(m: nn.Module) -> structure.TypeCodec | None:
    cls = _plain_type(m)
    for codec in structure._MODULES.values():
        if codec.cls is cls:
            return codec
    return None


def _normalized(spec: Any) -> Any:
    """Specs compare after a JSON round trip (tuples vs lists, int vs float keys)."""
    return json.loads(_dumps(spec))


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


def _encode_best(key: str, tensor: torch.Tensor, hint: TensorHint,
                 candidates: list[Encoding]) -> tuple[str, bytes, dict[str, Any]]:
    best: tuple[int, str, bytes, dict[str, Any]] | None = None
    shape = tuple(tensor.shape)
    for enc in candidates:
        try:
            got = enc.encode(tensor, hint)
            if got is None:
                continue
            payload, meta = bytes(got[0]), dict(got[1])
            meta_cost = len(_dumps(meta)) if meta else 0
            cost = len(payload) + meta_cost
            if best is not None and cost >= best[0]:
                continue
            decoded = enc.decode(payload, json.loads(_dumps(meta)), shape, tensor.dtype)
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
        codec = _module_codec(m)
        if codec is not None:
            out[name] = [codec.name, _normalized(codec.to_spec(m))]
    return out


def _unregistered_error(name: str, m: nn.Module) -> ArtifactError:
    return ArtifactError(
        f"layer {name!r} is a {_plain_type(m).__name__}, which the artifact cannot rebuild: register it with "
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
        for name in sorted(wanted, key=lambda n: (_depth(n), n)):
            entry = wanted[name]
            try:
                existing: nn.Module | None = sim.get_submodule(name) if name else sim
            except AttributeError:
                existing = None
            codec = _module_codec(existing) if existing is not None else None
            if codec is not None and existing is not None and [codec.name, _normalized(codec.to_spec(existing))] == entry:
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
                raise _unregistered_error(parent_name, model.get_submodule(parent_name)) from None
            setattr(parent, attr, new)
        sim_types = {n: _plain_type(m) for n, m in sim.named_modules()}
        for name, m in model.named_modules():
            if "parametrizations" in name.split(".") or _module_codec(m) is not None:
                continue
            if sim_types.get(name) is not _plain_type(m):
                raise _unregistered_error(name, m)
    for name, entry in recorded.items():
        k = _dumps(entry)
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
                    chain.append([pc.name, _normalized(pc.to_spec(p))])
                chains[f"{name}.{tensor_name}" if name else tensor_name] = chain
    return table, specs, chains


def _reference(model: nn.Module) -> tuple[str | None, dict[str, Any] | None, nn.Module | None]:
    """(reference model name, its constructor kwargs, a skeleton built from them)."""
    from torchshrink import models

    name = models.model_name(model)
    if name is None:
        return None, None, None
    kwargs = None
    cfg = getattr(model, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        kwargs = _normalized(dataclasses.asdict(cfg))
        if kwargs == _normalized(dataclasses.asdict(type(cfg)())):
            kwargs = None
    try:
        # A real (CPU) build: the meta device would save the init, but its first use costs
        # seconds of one-time setup in torch.
        skeleton = _build_reference(name, kwargs or {})
    except Exception:
        return name, kwargs, None
    return name, kwargs, skeleton


def _build_reference(name: str, kwargs: dict[str, Any]) -> nn.Module:
    from torchshrink import models

    if name == "gpt_tiny" and kwargs:
        return models.GPTTiny(models.GPTConfig(**kwargs))
    return models.create(name, **kwargs)


def encode_model(model: nn.Module, *, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The artifact's bytes for `model` (what `save` writes)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"save() expects an nn.Module, got {type(model).__name__}")
    if metadata is not None:
        try:
            user_meta = _normalized(dict(metadata))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"metadata must be JSON-serializable data (str, numbers, lists, dicts): {e}") from e
    from torchshrink.api import HISTORY_ATTR

    state = model.state_dict()
    canon = _canonical_originals(model)
    modules = dict(model.named_modules())
    candidates = encodings()
    records: list[list[Any]] = []
    chunks: list[bytes] = []
    for key, value in state.items():
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
        t = canon.get(key, value).detach().to("cpu").contiguous()
        code = dtype_code(t.dtype)
        enc, payload, meta = _encode_best(key, t, _hint_for(key, t, modules), candidates)
        rec: list[Any] = [key, enc, list(t.shape), code, len(payload)]
        if meta:
            rec.append(meta)
        records.append(rec)
        chunks.append(payload)
    payload = b"".join(chunks)
    name, kwargs, reference = _reference(model)
    table, specs, chains = _structure(model, reference)
    manifest: dict[str, Any] = {"f": FORMAT_VERSION, "v": _version()}
    if name is not None:
        manifest["m"] = name
    if kwargs:
        manifest["mk"] = kwargs
    manifest["r"] = _plain_type(model).__name__
    history = getattr(model, HISTORY_ATTR, None)
    if history:
        manifest["h"] = _normalized(list(history))
    if metadata is not None:
        manifest["u"] = user_meta
    if table:
        manifest["S"] = table
        manifest["s"] = specs
    if chains:
        manifest["p"] = chains
    manifest["t"] = records
    manifest["x"] = _crc(payload)
    text = _dumps(manifest)
    header: dict[str, Any] = {"__metadata__": {_MANIFEST_KEY: text, _MANIFEST_CRC: _crc(text.encode())}}
    if payload:
        header[_BLOB] = {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}
    raw = _dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + payload


def _atomic_write(path: Path, data: bytes) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ArtifactError(f"cannot save to {str(path)!r}: directory {str(directory)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; not every platform lets us open a directory.
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def save(model: nn.Module, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None) -> int:
    """Write `model` to `path` as a torchshrink artifact; returns the bytes written.

    The write is atomic: the file appears complete or not at all, and a failed save leaves
    any previous file at `path` untouched. `metadata` is optional JSON data kept in the file.
    """
    data = encode_model(model, metadata=metadata)
    try:
        _atomic_write(Path(path), data)
    except OSError as e:
        raise ArtifactError(f"cannot save artifact to {str(path)!r}: {e}") from e
    return len(data)


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class TensorRecord:
    key: str
    encoding: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    nbytes: int
    meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """What an artifact holds, without building the model."""

    path: str
    file_bytes: int
    header_bytes: int
    payload_bytes: int
    format_version: int
    library_version: str
    model_name: str | None
    model_kwargs: dict[str, Any] | None
    root_type: str | None
    history: list[Any]
    metadata: dict[str, Any] | None
    tensors: list[TensorRecord]
    manifest: dict[str, Any]

    def encoding_bytes(self) -> dict[str, int]:
        """Payload bytes per encoding name."""
        out: dict[str, int] = {}
        for r in self.tensors:
            out[r.encoding] = out.get(r.encoding, 0) + r.nbytes
        return out


def _fail(path: str, what: str) -> ArtifactError:
    return ArtifactError(f"{path!r} is not a readable torchshrink artifact: {what}")


def _parse(data: bytes, path: str) -> tuple[dict[str, Any], bytes, int]:
    """(manifest, payload, header bytes) after checking structure and checksums."""
    if len(data) == 0:
        raise _fail(path, "the file is empty")
    if len(data) < 8:
        raise _fail(path, f"only {len(data)} bytes, too short for a safetensors header (truncated?)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, _MAX_HEADER):
        raise _fail(path, f"its header claims {n} bytes but the file has {len(data)} "
                          "(truncated, corrupted, or not a safetensors file)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"the safetensors header is not valid JSON ({e}); the file is corrupted or foreign") from e
    if not isinstance(header, dict):
        raise _fail(path, "the safetensors header is not a JSON object")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or _MANIFEST_KEY not in meta:
        raise _fail(path, "it is a safetensors file without a torchshrink manifest (written by another tool?); "
                          "load it with safetensors.torch.load_file instead")
    text = meta[_MANIFEST_KEY]
    if not isinstance(text, str) or meta.get(_MANIFEST_CRC) != _crc(text.encode("utf-8", "surrogatepass")):
        raise _fail(path, "the manifest checksum does not match (the file is corrupted)")
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise _fail(path, f"the manifest is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("f"), int):
        raise _fail(path, "the manifest has no format version")
    if manifest["f"] > FORMAT_VERSION:
        raise ArtifactError(
            f"{path!r} uses artifact format version {manifest['f']}, newer than format version "
            f"{FORMAT_VERSION} that this torchshrink ({_version()}) reads; it was written by torchshrink "
            f"{manifest.get('v', '?')}. Upgrade torchshrink to load it."
        )
    if manifest["f"] < 1:
        raise _fail(path, f"unknown format version {manifest['f']}")
    body = data[8 + n :]
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if entries:
        spec = entries.get(_BLOB)
        if (set(entries) != {_BLOB} or not isinstance(spec, dict) or spec.get("dtype") != "U8"
                or spec.get("shape") != [len(body)] or spec.get("data_offsets") != [0, len(body)]):
            raise _fail(path, f"the data section has {len(body)} bytes but the header describes "
                              f"{_dumps(entries)[:200]} (truncated or corrupted)")
    elif body:
        raise _fail(path, f"{len(body)} unexpected bytes after the header")
    if manifest.get("x") != _crc(body):
        raise _fail(path, "the payload checksum does not match (the file is truncated or corrupted)")
    return manifest, body, 8 + n


def _records(manifest: dict[str, Any], payload_len: int, path: str) -> list[TensorRecord]:
    out: list[TensorRecord] = []
    offset = 0
    rows = manifest.get("t")
    if not isinstance(rows, list):
        raise _fail(path, "the manifest has no tensor table")
    try:
        for row in rows:
            key, enc, shape, code, nbytes = row[:5]
            meta = row[5] if len(row) > 5 else {}
            if not (isinstance(key, str) and isinstance(enc, str) and isinstance(nbytes, int) and nbytes >= 0
                    and isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                    and isinstance(meta, dict)):
                raise ValueError(f"bad tensor record {row!r}")
            out.append(TensorRecord(key, enc, tuple(shape), dtype_from_code(code), offset, nbytes, meta))
            offset += nbytes
    except (TypeError, ValueError, IndexError) as e:
        raise _fail(path, f"malformed tensor table: {e}") from e
    if offset != payload_len:
        raise _fail(path, f"the tensor table covers {offset} bytes but the payload has {payload_len}")
    return out


def _read(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    p = str(path)
    try:
        with open(p, "rb") as f:
            return f.read(), p
    except FileNotFoundError as e:
        raise ArtifactError(f"artifact {p!r} does not exist") from e
    except IsADirectoryError as e:
        raise ArtifactError(f"{p!r} is a directory, not an artifact file") from e
    except OSError as e:
        raise ArtifactError(f"cannot read artifact {p!r}: {e}") from e


def read_info(path: str | os.PathLike[str]) -> ArtifactInfo:
    """The manifest and tensor table of an artifact (checksums verified)."""
    data, p = _read(path)
    manifest, body, header_bytes = _parse(data, p)
    records = _records(manifest, len(body), p)
    return ArtifactInfo(
        path=p, file_bytes=len(data), header_bytes=header_bytes, payload_bytes=len(body),
        format_version=manifest["f"], library_version=str(manifest.get("v", "?")),
        model_name=manifest.get("m"), model_kwargs=manifest.get("mk"), root_type=manifest.get("r"),
        history=list(manifest.get("h", [])), metadata=manifest.get("u"), tensors=records, manifest=manifest,
    )


def _decode_tensors(records: list[TensorRecord], body: bytes, path: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for r in records:
        enc = get_encoding(r.encoding)
        try:
            t = enc.decode(body[r.offset : r.offset + r.nbytes], r.meta, r.shape, r.dtype)
        except ArtifactError:
            raise
        except Exception as e:  # a bad payload must never surface as a crash
            raise _fail(path, f"tensor {r.key!r} does not decode with {r.encoding!r}: {e}") from e
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != r.shape or t.dtype != r.dtype:
            raise _fail(path, f"tensor {r.key!r} decoded to the wrong shape or dtype")
        out[r.key] = t
    return out


def _skeleton(like: nn.Module | str | None, manifest: dict[str, Any], path: str) -> nn.Module:
    if isinstance(like, nn.Module):
        try:
            return copy.deepcopy(like)
        except Exception:  # some modules refuse deepcopy; then we edit the given one
            return like
    name = like if isinstance(like, str) else manifest.get("m")
    if name is None:
        root = manifest.get("r", "model")
        raise ArtifactError(
            f"{path!r} holds a {root} that is not a torchshrink reference model; pass like= a freshly "
            f"constructed {root} (the skeleton the saved structure is replayed on)"
        )
    kwargs = (manifest.get("mk") or {}) if like is None or like == manifest.get("m") else {}
    try:
        return _build_reference(str(name), kwargs)
    except (ConfigError, TypeError) as e:
        raise ArtifactError(f"cannot build the skeleton {name!r} for {path!r}: {e}") from e


def _strip_parametrizations(model: nn.Module) -> None:
    for m in list(model.modules()):
        if parametrize.is_parametrized(m):
            for tensor_name in list(m.parametrizations.keys()):  # type: ignore[union-attr,operator]
                try:
                    parametrize.remove_parametrizations(m, tensor_name, leave_parametrized=False)
                except Exception:
                    parametrize.remove_parametrizations(m, tensor_name, leave_parametrized=True)


def _depth(name: str) -> int:
    return -1 if name == "" else name.count(".")


def _replay(model: nn.Module, manifest: dict[str, Any], path: str) -> nn.Module:
    """Rebuild modules whose recorded type or spec differs from the skeleton's, parents first."""
    table = manifest.get("S", [])
    specs = manifest.get("s", {})
    if not isinstance(table, list) or not isinstance(specs, dict):
        raise _fail(path, "malformed structure table")
    for name in sorted(specs, key=lambda n: (_depth(n), n)):
        try:
            type_name, spec = table[specs[name]]
        except (IndexError, TypeError, ValueError) as e:
            raise _fail(path, f"malformed structure entry for {name!r}") from e
        codec = structure.module_codec_by_name(type_name)
        try:
            existing: nn.Module | None = model.get_submodule(name) if name else model
        except AttributeError:
            existing = None
        if existing is not None and _module_codec(existing) is codec:
            try:
                if _normalized(codec.to_spec(existing)) == spec:
                    continue
            except Exception:
                pass
        try:
            new = codec.from_spec(spec)
        except Exception as e:
            raise ArtifactError(f"cannot rebuild {name or 'the root module'} as {type_name} from {spec}: {e}") from e
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
        raise _fail(path, "malformed parametrization table")
    for target, chain in chains.items():
        layer, _, tensor_name = target.rpartition(".")
        try:
            module = model.get_submodule(layer) if layer else model
        except AttributeError as e:
            raise ArtifactError(f"{path!r} parametrizes {target!r} but like= has no layer {layer!r}") from e
        for type_name, spec in chain:
            codec = structure.parametrization_codec_by_name(type_name)
            try:
                p = codec.from_spec(spec)
                parametrize.register_parametrization(module, tensor_name, p, unsafe=True)
            except Exception as e:
                raise ArtifactError(f"cannot re-attach {type_name} to {target!r} from {spec}: {e}") from e


def load(path: str | os.PathLike[str], like: nn.Module | str | None = None) -> nn.Module:
    """Rebuild a model from an artifact.

    like: the skeleton to load into: a module of the saved architecture (it is copied, not
        modified), or a reference model name; by default the reference model recorded in the
        file. Recorded structural changes (thinner layers, factorized layers, custom modules)
        and parametrizations are replayed on it before the tensors are loaded strictly.
    Returns the model on the CPU in eval mode. Raises ArtifactError on anything truncated,
    corrupted, foreign, from a newer format, or not matching `like`.
    """
    from torchshrink.api import HISTORY_ATTR

    data, p = _read(path)
    manifest, body, _ = _parse(data, p)
    records = _records(manifest, len(body), p)
    tensors = _decode_tensors(records, body, p)
    model = _skeleton(like, manifest, p)
    _strip_parametrizations(model)
    model = _replay(model, manifest, p)
    _reattach(model, manifest, p)
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        saved = manifest.get("r", "?")
        raise ArtifactError(
            f"{p!r} does not match like= ({type(model).__name__}; the artifact holds a {saved}): "
            f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected tensors "
            f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}. Pass like= the architecture it was saved from"
        )
    for k, t in tensors.items():
        if tuple(expected[k].shape) != tuple(t.shape):
            raise ArtifactError(
                f"{p!r}: tensor {k!r} has shape {list(t.shape)} in the artifact but {list(expected[k].shape)} in "
                f"like= ({type(model).__name__}); pass the architecture it was saved from"
            )
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:
        raise ArtifactError(f"{p!r} does not load into {type(model).__name__}: {e}") from e
    if manifest.get("h"):
        object.__setattr__(model, HISTORY_ATTR, list(manifest["h"]))
    model.eval()
    return model

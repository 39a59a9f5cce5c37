"""`ts.export(model, DIR, format="compressed-tensors")`: a Hugging Face model folder in the
compressed-tensors layout that transformers (`AutoModelForCausalLM.from_pretrained(DIR)`, with
the `compressed-tensors` package) and vLLM load directly.

What is written (the format's "pack-quantized" layout, from compressed-tensors'
`PackedQuantizationCompressor`):
- `config.json`: the model's config plus `quantization_config` (quant_method
  "compressed-tensors", format "pack-quantized", one config group per weight scheme: num_bits,
  symmetric, strategy "group" or "channel", group_size) and, where the Linears are 2:4 sparse,
  a `sparsity_config` (format "dense", sparsity_structure "2:4") that tells loaders the pattern;
- `model.safetensors`: per quantized Linear `weight_packed` (int32, 32 / bits codes per word
  along the input dimension, little-endian, signed code q stored as q + 2^(bits-1)),
  `weight_scale` (out, groups) in the model's float dtype, `weight_shape` ([out, in]) and, for an
  affine grid, `weight_zero_point` (signed, packed the same way along the output dimension);
  every other tensor as the model holds it (pruned weights with their zeros applied).

The codes are torchshrink's own (GPTQ, AWQ, RTN): only their layout changes, so a loader
dequantizes to exactly the weight our model computes with. Layers the format cannot carry
(int3/5/6/7 codes, whose dense packing older loaders read differently; affine grids, whose
packed zero points transformers' loader rejects; AWQ column scales not folded into the
preceding op; quantized embeddings and convolutions) are written as their
dequantized float weight and listed in `ignore`, each recorded in the result with its reason.

No package is needed to write the folder; `check=True` reads it back and decodes every packed
tensor independently of the writer (int32 words -> codes -> weight) against the model's weight.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchshrink.errors import ArtifactError, ConfigError, UnsupportedModelError
from torchshrink.export.paths import output_path
from torchshrink.quant.packing import pack, unpack
from torchshrink.quant.weight_only import WeightOnlyLayer

__all__ = ["CompressedTensorsExport", "export_compressed_tensors", "PACKED_BITS", "pack_int32", "unpack_int32"]

# Bit widths whose int32 packing every compressed-tensors version reads the same way (whole codes
# per word); vLLM's kernels take 4 and 8.
PACKED_BITS = (2, 4, 8)
WEIGHTS_FILE = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class CompressedTensorsExport:
    path: str
    bytes: int  # the folder's total size
    packed: dict[str, str]  # layer -> scheme written ("int4 group 128 symmetric")
    dense: dict[str, str]  # quantized layer written as its float weight -> why
    sparse_24: tuple[str, ...]  # Linears whose weight has the 2:4 pattern
    max_weight_error: float | None  # check=True: max |decoded - model weight| over packed layers


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes (rows, cols) in [0, 2^bits) -> (rows, ceil(cols * bits / 32)) int32, code j
    of a row at bits [j * bits, (j + 1) * bits) of the row's little-endian word stream."""
    rows, cols = codes.shape
    per_word = 32 // bits
    padded = -(-cols // per_word) * per_word
    c = torch.zeros(rows, padded, dtype=torch.uint8)
    c[:, :cols] = codes.to(torch.uint8)
    # Our byte packing is the same little-endian bit stream; a row of whole words is 4k bytes.
    return pack(c, bits).view(rows, padded * bits // 8).view(torch.int32).contiguous()


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """The inverse of `pack_int32`: (rows, cols) unsigned codes as int32."""
    rows = packed.shape[0]
    raw = packed.contiguous().view(torch.uint8).reshape(-1)
    per_row = packed.shape[1] * 32 // bits
    return unpack(raw, bits, rows * per_row).reshape(rows, per_row)[:, :cols].to(torch.int32)


def _float_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _why_dense(m: WeightOnlyLayer) -> str | None:
    if m.op["kind"] != "linear":
        return f"a quantized {m.op['kind']} (the format packs Linear weights)"
    if m.bits not in PACKED_BITS:
        return f"int{m.bits} codes (packed here only at {', '.join(map(str, PACKED_BITS))} bits)"
    if m.col_scale is not None:
        return "AWQ column scale not folded into the preceding op"
    if m.granularity == "tensor":
        return "one scale per tensor (a shared-codebook grid)"
    if not m.symmetric:
        # The format packs affine zero points along the output dimension, but transformers 5.24
        # with compressed-tensors 0.20.1 allocates them unpacked and refuses the file.
        return "an affine grid (transformers' loader rejects packed zero points)"
    return None


def _scheme(m: WeightOnlyLayer) -> dict[str, Any]:
    return {"num_bits": m.bits, "type": "int", "symmetric": m.symmetric,
            "strategy": "group" if m.granularity == "group" else "channel",
            "group_size": m.group_size if m.granularity == "group" else None,
            "dynamic": False, "actorder": None, "block_structure": None, "observer": "minmax",
            "observer_kwargs": {}}


def _packed_tensors(m: WeightOnlyLayer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out_f, in_f = m.shape
    codes = unpack(m.packed, m.bits, out_f * in_f, dtype=torch.uint8).reshape(out_f, in_f)
    qmin = -(2 ** (m.bits - 1)) if m.symmetric else 0
    # Ours: w = (c + qmin - zp) * s. Theirs: w = (q - z) * s with q = c + qmin - offset signed
    # around offset = 2^(bits-1), stored as q + offset; for symmetric grids (qmin = -offset) the
    # stored value is c itself, for affine ones (qmin = 0) q = c - offset and z = zp - offset.
    groups = m.scale.numel() // out_f
    t = {"weight_packed": pack_int32(codes, m.bits),
         "weight_scale": m.scale.reshape(out_f, groups).to(dtype).contiguous(),
         "weight_shape": torch.tensor([out_f, in_f], dtype=torch.int64)}
    if not m.symmetric:
        assert m.zero_point is not None
        zp = m.zero_point.reshape(out_f, groups).to(torch.int32) + qmin  # stored = (zp - off) + off
        t["weight_zero_point"] = pack_int32(zp.t().contiguous(), m.bits).t().contiguous()
    if m.bias is not None:
        t["bias"] = m.bias.detach().to(dtype).contiguous()
    return t


def _decoded(t: dict[str, torch.Tensor], scheme: dict[str, Any]) -> torch.Tensor:
    """The weight a compressed-tensors loader computes from the written tensors, decoded
    without the writer's code: (q - z) * s per group."""
    bits = scheme["num_bits"]
    out_f, in_f = (int(v) for v in t["weight_shape"])
    off = 2 ** (bits - 1)
    q = unpack_int32(t["weight_packed"], bits, in_f).float() - off
    scale = t["weight_scale"].float()
    groups = scale.shape[1]
    z = torch.zeros_like(scale)
    if "weight_zero_point" in t:
        z = unpack_int32(t["weight_zero_point"].t().contiguous(), bits, out_f).t().float() - off
    per = in_f // groups
    w = (q.reshape(out_f, groups, per) - z[:, :, None]) * scale[:, :, None]
    return w.reshape(out_f, in_f)


def _is_24(w: torch.Tensor) -> bool:
    if w.dim() != 2 or w.shape[1] % 4 or w.numel() == 0:
        return False
    return bool(((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all())


def _state(model: nn.Module, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str],
                                                          dict[str, str], list[str], list[str]]:
    """(tensors to write, scheme per packed layer, packed layer -> description, dense layer -> why,
    2:4 Linears, every Linear-like name)."""
    from torch.nn.utils import parametrize

    tensors: dict[str, torch.Tensor] = {}
    schemes: dict[str, dict[str, Any]] = {}
    packed: dict[str, str] = {}
    dense: dict[str, str] = {}
    sparse: list[str] = []
    linears: list[str] = []
    skip_prefixes: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        if isinstance(m, WeightOnlyLayer):
            skip_prefixes.append(name + ".")
            if m.op["kind"] == "linear":
                linears.append(name)
            why = _why_dense(m)
            if why is None:
                for k, v in _packed_tensors(m, dtype).items():
                    tensors[f"{name}.{k}"] = v
                schemes[name] = _scheme(m)
                g = f"group {m.group_size}" if m.granularity == "group" else "per channel"
                packed[name] = f"int{m.bits} {g} {'symmetric' if m.symmetric else 'affine'}"
                w = m.dequantized_weight()
            else:
                dense[name] = why
                w = m.dequantized_weight()
                tensors[f"{name}.weight"] = w.to(dtype).contiguous()
                if m.bias is not None:
                    tensors[f"{name}.bias"] = m.bias.detach().to(dtype).contiguous()
            if m.op["kind"] == "linear" and _is_24(w):
                sparse.append(name)
            continue
        if isinstance(m, nn.Linear):
            linears.append(name)
        direct = dict(m.named_parameters(recurse=False))
        direct.update({k: b for k, b in m.named_buffers(recurse=False)
                       if k not in m._non_persistent_buffers_set})
        if parametrize.is_parametrized(m):
            skip_prefixes.append(name + ".parametrizations.")
            for pname in m.parametrizations:
                direct[pname] = getattr(m, pname)  # the effective value: masks applied
        for k, v in direct.items():
            if v is None:
                continue
            v = v.detach()
            tensors[f"{name}.{k}" if name else k] = (v.to(dtype) if v.is_floating_point() else v).contiguous()
        if isinstance(m, nn.Linear) and _is_24(m.weight.detach()):
            sparse.append(name)
    return tensors, schemes, packed, dense, sparse, linears


def _quantization_config(schemes: dict[str, dict[str, Any]], linears: list[str], dense: dict[str, str],
                         sparse: list[str]) -> dict[str, Any]:
    by_scheme: dict[str, list[str]] = {}
    for name, s in schemes.items():
        by_scheme.setdefault(json.dumps(s, sort_keys=True), []).append(name)
    one = len(by_scheme) == 1
    groups = {}
    for i, (key, names) in enumerate(by_scheme.items()):
        # One scheme: the class target serving stacks match their fused q/k/v shards against.
        groups[f"group_{i}"] = {"targets": ["Linear"] if one else names, "weights": json.loads(key),
                                "input_activations": None, "output_activations": None, "format": "pack-quantized"}
    ignore = [n for n in linears if n not in schemes] if one else sorted(dense)
    qc: dict[str, Any] = {"quant_method": "compressed-tensors", "format": "pack-quantized" if groups else "dense",
                          "quantization_status": "compressed", "config_groups": groups, "ignore": ignore,
                          "kv_cache_scheme": None, "global_compression_ratio": None}
    if sparse:
        qc["sparsity_config"] = {"format": "dense", "sparsity_structure": "2:4", "targets": sparse,
                                 "ignore": [n for n in linears if n not in sparse], "global_sparsity": None,
                                 "registry_requires_subclass": False}
    return qc


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_compressed_tensors(model: nn.Module, path: str | os.PathLike[str], *, check: bool = True
                              ) -> CompressedTensorsExport:
    """Write `model` (a transformers model, weight-only quantized and/or 2:4 pruned by torchshrink)
    to the folder `path` in the compressed-tensors layout; see the module docstring.

    The folder is built beside `path` and moved into place only when complete (an existing folder
    at `path` is replaced then, never half-overwritten). Raises ConfigError for a bad path,
    UnsupportedModelError for a model without a Hugging Face config, ArtifactError when the
    read-back check fails."""
    from safetensors.torch import load_file, save_file

    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected an nn.Module to export, got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict") or not getattr(config, "model_type", None):
        raise UnsupportedModelError(
            f"format='compressed-tensors' writes a Hugging Face model folder, and {type(model).__name__} has no "
            "transformers config (model.config with a model_type); build the model with transformers "
            "(e.g. LlamaForCausalLM(LlamaConfig(...))) or export to format='onnx'")
    out = output_path(path, folder="compressed-tensors")
    parent = out.parent if str(out.parent) else Path(".")
    dtype = _float_dtype(model)
    with torch.no_grad():
        tensors, schemes, packed, dense, sparse, linears = _state(model, dtype)
    if not schemes and not sparse:
        why = f" ({', '.join(f'{n}: {w}' for n, w in list(dense.items())[:3])})" if dense else ""
        raise ConfigError(f"{type(model).__name__} has no layer the compressed-tensors format describes{why}: quantize it "
                          "first (ts.quantize(model, ts.WeightOnly(bits=4, group_size=128))) or prune it 2:4 "
                          "(ts.NMPruning(n=2, m=4)); a float model is saved with model.save_pretrained")
    for name, why in dense.items():
        warnings.warn(f"compressed-tensors export: {name} is written as its dequantized float weight ({why})",
                      stacklevel=2)
    cfg = config.to_dict()
    cfg["quantization_config"] = _quantization_config(schemes, linears, dense, sparse)
    if getattr(config, "tie_word_embeddings", False) and any(n.endswith("lm_head") for n in schemes):
        cfg["tie_word_embeddings"] = False  # the head is packed; the embedding stays float
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
        gen = getattr(model, "generation_config", None)
        if gen is not None and hasattr(gen, "to_json_string"):
            (tmp / "generation_config.json").write_text(gen.to_json_string())
        err = _check(tmp / WEIGHTS_FILE, model, schemes, load_file) if check else None
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return CompressedTensorsExport(str(out), _folder_bytes(out), packed, dense, tuple(sparse), err)


def _check(file: Path, model: nn.Module, schemes: dict[str, dict[str, Any]], load_file: Any) -> float:
    written = load_file(str(file))
    worst = 0.0
    for name, scheme in schemes.items():
        m = model.get_submodule(name)
        assert isinstance(m, WeightOnlyLayer)
        t = {k[len(name) + 1:]: v for k, v in written.items() if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
        w = _decoded(t, scheme)
        ref = m.dequantized_weight().float()
        err = float((w - ref).abs().max()) if ref.numel() else 0.0
        # Exact in float32; a half-precision model's scales round once.
        tol = 0.0 if t["weight_scale"].dtype == torch.float32 else float(ref.abs().max()) * 2 ** -7
        if not math.isfinite(err) or err > tol:
            raise ArtifactError(f"compressed-tensors export of {name} decodes to a different weight (max abs "
                                f"difference {err:.3g}); nothing was written")
        worst = max(worst, err)
    return worst

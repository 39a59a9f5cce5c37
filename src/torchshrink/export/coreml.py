"""`.mlpackage` (Core ML ML Program) through coremltools (the `coreml` extra).

Deep Compression's two storage forms map onto Core ML's own:

- a k-means codebook (cluster.KMeansSharing) becomes a palettized weight: a look-up table of
  our centroids and the per-weight indices (`constexpr_lut_to_dense`);
- a pruning mask becomes a sparse weight: a bit mask and the nonzero values
  (`constexpr_sparse_to_dense`); both together are the joint form (`constexpr_lut_to_sparse`).

The program is converted in float32 (no fp16 rounding), then only our layers are compressed
(coremltools' "unique" palettizer and a zero-threshold pruner, both lossless on weights that
already hold few distinct values and exact zeros). Core ML runs only on Apple platforms, so on
Linux the check is on the program itself: every weight, decoded from its constexpr ops, must
equal ours value for value (float32 bit patterns, with -0.0 read as 0.0), and each palettized
layer's table must hold only our centroids. Latency needs a Mac (`coremltools` `predict`).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchshrink.errors import UnsupportedModelError
from torchshrink.export.check import ParityError
from torchshrink.export.edge import layer_kinds, require
from torchshrink.nn import params, select_layers

__all__ = ["write_mlpackage", "EXTRA", "package_bytes", "decoded_weights"]

EXTRA = "coreml"


def package_bytes(path: str | Path) -> int:
    """Bytes on disk of a file or an .mlpackage directory."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _forms(model: nn.Module) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Per layer: {"palettized": codebook values, "sparse": density} as our parametrizations say, and
    the weight every layer computes with (parametrizations baked)."""
    from torchshrink.cluster.codebook import Codebook

    kinds = layer_kinds()
    forms: dict[str, dict[str, Any]] = {}
    mod: Any
    for name, mod in model.named_modules():
        if type(mod).__name__ in kinds:
            raise UnsupportedModelError(
                f"layer {name!r} is {kinds[type(mod).__name__]}; the Core ML export carries float32, k-means "
                "palettized and sparse weights (Deep Compression). Export quantized models with format='tflite', "
                "'pte' or 'onnx'")
    for name, mod in select_layers(model):
        chain = params.chain(mod)
        if not chain:
            continue
        form: dict[str, Any] = {}
        cb = next((p for p in chain if isinstance(p, Codebook)), None)
        if cb is not None:
            form["palettized"] = cb.codebook.detach().float().numpy().copy()
        w = mod.weight.detach()
        zeros = float((w == 0).float().mean())
        # Pruned zeros are exact (a mask, or a codebook's extra zero entry after pruning).
        if zeros > 0:
            form["sparse"] = 1.0 - zeros
        if form:
            forms[name] = form
    m = copy.deepcopy(model).eval()
    params.materialize(m)
    weights: dict[str, np.ndarray] = {}
    for name, layer in select_layers(m):
        w = getattr(layer, "weight", None)
        if isinstance(w, torch.Tensor):
            weights[name] = w.detach().float().numpy().copy()
    return forms, weights


def _const_names(ml: Any, ours: dict[str, np.ndarray], *, ops: bool = False) -> dict[str, str]:
    """Our layer -> the name of the program constant holding its weight, found by value (the
    converter derives names from attribute paths but rewrites some, e.g. "1" -> "op_1")."""
    consts = {n: v for n, (v, _, _) in decoded_weights(ml, op_names=ops).items()}
    out: dict[str, str] = {}
    for layer, w in ours.items():
        guess = layer.replace(".", "_") + "_weight"
        for name in [guess, *consts]:
            v = consts.get(name)
            if v is not None and v.shape == w.shape and np.array_equal(_bits(v), _bits(w)):
                out[layer] = name
                break
    return out


def write_mlpackage(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path) -> dict[str, str]:
    """Convert, compress our layers in their Core ML forms, check the weights, save to `path`
    (written next to it and moved into place, so a failure leaves an existing package as it was).
    Returns layer -> the form it was stored in."""
    forms, ours = _forms(model)
    ct = require("coremltools", extra=EXTRA, fmt="coreml")
    import coremltools.optimize.coreml as cto

    baked = copy.deepcopy(model).eval()
    params.materialize(baked)
    try:
        with torch.no_grad():
            traced = torch.jit.trace(baked, inputs)
        ml = ct.convert(traced, inputs=[ct.TensorType(name=f"input_{i}", shape=t.shape) for i, t in enumerate(inputs)],
                        convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                        minimum_deployment_target=ct.target.iOS18)
    except Exception as e:  # the converter raises many types
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(f"coremltools cannot convert {type(model).__name__}: {first}") from e
    names = _const_names(ml, ours)
    missing = [n for n in forms if n not in names]
    if missing:
        raise UnsupportedModelError(f"the Core ML program has no constant equal to layer {missing[0]!r}'s weight "
                                    "(the converter folded or transformed it); nothing was written")
    sparse = {names[n]: cto.OpThresholdPrunerConfig(threshold=0.0, minimum_sparsity_percentile=0.0,
                                                          weight_threshold=0)
              for n, f in forms.items() if "sparse" in f}
    if sparse:
        ml = cto.prune_weights(ml, cto.OptimizationConfig(op_name_configs=sparse))
    if sparse:  # the pruner renamed those constants: name them again by value
        names = _const_names(ml, ours, ops=True)
    lut = {names[n]: cto.OpPalettizerConfig(mode="unique", weight_threshold=0)
           for n, f in forms.items() if "palettized" in f}
    if lut:
        ml = cto.palettize_weights(ml, cto.OptimizationConfig(op_name_configs=lut), joint_compression=bool(sparse))
    stored = check_weights(ml, forms, ours, names)
    out = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent if str(out.parent) else "."))
    try:
        ml.save(str(tmp / out.name))
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
        os.replace(tmp / out.name, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stored


def _value(var: Any, cache: dict[str, np.ndarray]) -> np.ndarray | None:
    """A constant's value, decoding the constexpr ops that produce it."""
    if var.val is not None:
        return np.asarray(var.val)
    op = var.op
    if op is None:
        return None
    key = f"{op.name}:{[o.name for o in op.outputs].index(var.name)}"
    if key in cache:
        return cache[key]
    inp = op.inputs
    if op.op_type == "constexpr_lut_to_dense":
        table = np.asarray(_value(inp["lut"], cache)).reshape(-1)
        cache[key] = table[np.asarray(_value(inp["indices"], cache)).astype(np.int64)]
    elif op.op_type == "constexpr_sparse_to_dense":
        mask = np.asarray(_value(inp["mask"], cache)).astype(bool)
        dense = np.zeros(mask.shape, dtype=np.float32)
        dense[mask] = np.asarray(_value(inp["nonzero_data"], cache))
        cache[key] = dense
    elif op.op_type == "constexpr_lut_to_sparse":
        table = np.asarray(_value(inp["lut"], cache)).reshape(-1)
        cache[f"{op.name}:0"] = np.asarray(_value(inp["indices_mask"], cache))
        cache[f"{op.name}:1"] = table[np.asarray(_value(inp["indices_nonzero_data"], cache)).astype(np.int64)]
    else:
        return None
    return cache.get(key)


def decoded_weights(ml: Any, *, op_names: bool = False) -> dict[str, tuple[np.ndarray, str, np.ndarray | None]]:
    """Weight constant name -> (dense float32 value, how it is stored, its table if palettized).
    `op_names`: key by the name of the op yielding the dense tensor instead (what coremltools'
    op_name_configs match)."""
    out: dict[str, tuple[np.ndarray, str, np.ndarray | None]] = {}
    cache: dict[str, np.ndarray] = {}
    for fn in ml._mil_program.functions.values():
        for op in fn.operations:
            if op.op_type not in ("const", "constexpr_lut_to_dense", "constexpr_sparse_to_dense"):
                continue
            # the weight's name survives on the op that yields the dense tensor
            name = op.name if op_names else \
                op.name.split("_palettized")[0].split("_pruned")[0].split("_sparsified")[0]
            value = _value(op.outputs[0], cache)
            if value is None or np.asarray(value).ndim < 2:
                continue
            table = None
            stored = "dense"
            if op.op_type == "constexpr_sparse_to_dense":
                src = op.inputs["nonzero_data"].op
                stored = "sparse+palettized" if src is not None and src.op_type == "constexpr_lut_to_sparse" \
                    else "sparse"
                if src is not None and src.op_type == "constexpr_lut_to_sparse":
                    table = np.asarray(src.inputs["lut"].val).reshape(-1)
            elif op.op_type == "constexpr_lut_to_dense":
                stored, table = "palettized", np.asarray(op.inputs["lut"].val).reshape(-1)
            out[name] = (np.asarray(value, dtype=np.float32), stored, table)
    return out


def _bits(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 -> 0.0


def check_weights(ml: Any, forms: dict[str, dict[str, Any]], ours: dict[str, np.ndarray],
                  names: dict[str, str]) -> dict[str, str]:
    """Every layer's weight in the program equals ours; compressed layers are stored compressed."""
    got = decoded_weights(ml)
    stored: dict[str, str] = {}
    for layer, w in ours.items():
        match = got.get(names.get(layer, ""))
        if match is None:  # a name the converter changed: find the tensor by value
            match = next((g for g in got.values() if g[0].shape == w.shape and np.array_equal(_bits(g[0]), _bits(w))),
                         None)
        if match is None or match[0].shape != w.shape or not np.array_equal(_bits(match[0]), _bits(w)):
            raise ParityError(f"the Core ML program does not hold layer {layer!r}'s weights bit for bit; "
                              "nothing was written")
        want = forms.get(layer, {})
        if "palettized" in want:
            if match[2] is None:
                raise ParityError(f"layer {layer!r} has a k-means codebook but is not palettized in the program")
            table = match[2][: max(1, len(match[2]))]
            if not np.isin(_bits(table[table != 0]), _bits(want["palettized"])).all():
                raise ParityError(f"layer {layer!r}'s Core ML look-up table holds values that are not our centroids")
        if "sparse" in want and "sparse" not in match[1]:
            raise ParityError(f"layer {layer!r} is pruned but its Core ML weight is not stored sparse")
        if want:
            stored[layer] = match[1]
    return stored

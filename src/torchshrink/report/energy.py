"""Energy per inference, estimated from memory traffic and arithmetic.

The constants are Horowitz's 45 nm, 0.9 V figures (ISSCC 2014, "Computing's energy problem"),
the table Han et al. use to argue for Deep Compression: a 32-bit DRAM access costs 640 pJ, two
orders of magnitude more than a 32-bit multiply-add, so the bytes a model moves dominate its
energy unless its weights fit on chip. The table is one mapping; pass your own (same keys, pJ)
to `estimate_energy(table=...)` for another process node or a measured device.

The model, stated in every estimate's `assumptions`:

- every stored weight bit (the file's tensor payload: values, positions, codebooks, scales,
  biases) is fetched once per batch, from DRAM, or from on-chip SRAM when the whole payload fits
  in `sram_bytes`; per inference that is the fetch divided by the batch size;
- activations stay on chip: each layer reads its input and writes its output once, at the
  layer's activation width, from SRAM;
- each multiply-accumulate costs one multiply and one add at the layer's arithmetic precision
  (int8 layers accumulate in int32); sparse layers skip their zeros (`skip_zeros`); a codebook
  layer reads each kept weight's centroid from a register file once per use;
- biases, activation functions, pooling and normalization cost no arithmetic (as MAC counts
  in the literature leave them out); the file's header is not fetched at inference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from torchshrink.errors import ConfigError

__all__ = ["HOROWITZ_45NM", "EnergyEstimate", "LayerEnergy", "check_table", "estimate_energy", "layer_precision"]

# pJ per operation, 45 nm (Horowitz, ISSCC 2014; the memory rows as Han et al., ICLR 2016, Table 1
# quote them). Memory keys are per access of the width in their name.
HOROWITZ_45NM: Mapping[str, float] = MappingProxyType({
    "dram_32bit": 640.0,
    "sram_32bit": 5.0,
    "register_32bit": 1.0,
    "sram_8kb_64bit": 10.0,
    "sram_32kb_64bit": 20.0,
    "sram_1mb_64bit": 100.0,
    "int8_add": 0.03,
    "int16_add": 0.05,
    "int32_add": 0.1,
    "fp16_add": 0.4,
    "fp32_add": 0.9,
    "int8_mult": 0.2,
    "int32_mult": 3.1,
    "fp16_mult": 1.1,
    "fp32_mult": 3.7,
})

# (multiply key, add key, activation bits) per arithmetic precision of a layer.
_PRECISIONS: dict[str, tuple[str, str, int]] = {
    "fp32": ("fp32_mult", "fp32_add", 32),
    "fp16": ("fp16_mult", "fp16_add", 16),
    "int8": ("int8_mult", "int32_add", 8),
}
_NEEDED = ("dram_32bit", "sram_32bit", "register_32bit")


def check_table(table: Mapping[str, float] | None, precisions: set[str] | None = None) -> dict[str, float]:
    """The energy table to use (Horowitz's by default), checked for the keys the model reads."""
    t = dict(HOROWITZ_45NM if table is None else table)
    keys = set(_NEEDED)
    for p in precisions or set(_PRECISIONS):
        keys.update(_PRECISIONS[p][:2])
    missing = sorted(k for k in keys if k not in t)
    if missing:
        raise ConfigError(f"energy table lacks {missing}; give every key of "
                          "torchshrink.report.HOROWITZ_45NM (values in pJ), e.g. dict(HOROWITZ_45NM, **yours)")
    bad = {k: v for k, v in t.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0}
    if bad:
        raise ConfigError(f"energy table values must be non-negative numbers (pJ), got {bad}")
    return {k: float(v) for k, v in t.items()}


@dataclasses.dataclass(frozen=True)
class LayerEnergy:
    """One layer's share of an inference, in pJ."""

    name: str
    precision: str
    macs: int
    effective_macs: int
    stored_bits: int
    activation_values: int
    weight_pj: float
    activation_pj: float
    compute_pj: float

    @property
    def total_pj(self) -> float:
        return self.weight_pj + self.activation_pj + self.compute_pj


@dataclasses.dataclass(frozen=True)
class EnergyEstimate:
    """Energy of one inference (one sample of a batch of `batch`), in pJ."""

    batch: int
    sram_bytes: int
    stored_bytes: int
    weights_on_chip: bool
    layers: tuple[LayerEnergy, ...]
    other_weight_pj: float  # payload bytes of tensors outside the MAC layers (BatchNorm, embeddings)
    assumptions: tuple[str, ...]

    @property
    def weight_pj(self) -> float:
        return sum(r.weight_pj for r in self.layers) + self.other_weight_pj

    @property
    def activation_pj(self) -> float:
        return sum(r.activation_pj for r in self.layers)

    @property
    def compute_pj(self) -> float:
        return sum(r.compute_pj for r in self.layers)

    @property
    def total_pj(self) -> float:
        return self.weight_pj + self.activation_pj + self.compute_pj

    @property
    def total_uj(self) -> float:
        return self.total_pj / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "sram_bytes": self.sram_bytes, "stored_bytes": self.stored_bytes,
                "weights_on_chip": self.weights_on_chip, "weight_pj": self.weight_pj,
                "activation_pj": self.activation_pj, "compute_pj": self.compute_pj, "total_pj": self.total_pj,
                "layers": [dataclasses.asdict(r) | {"total_pj": r.total_pj} for r in self.layers],
                "assumptions": list(self.assumptions)}


def layer_precision(module: nn.Module) -> str:
    """The arithmetic a layer computes in: int8 for integer kernels, fp16 for half weights,
    else fp32 (weight-only and codebook layers decode to float and multiply in float)."""
    if isinstance(getattr(module, "weight_int8", None), torch.Tensor):
        return "int8"
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.dtype in (torch.float16, torch.bfloat16):
        return "fp16"
    return "fp32"


def _layer_traffic(model: nn.Module, example: Any) -> tuple[dict[str, int], dict[str, int], dict[str, nn.Module]]:
    """(MACs, activation values read + written, module) per MAC-holding layer, one sample."""
    from torchshrink.measure.macs import call, count_macs, slice_batch

    one = slice_batch(example, 1)
    total, per_module = count_macs(model, one)
    modules = dict(model.named_modules())
    counted = {n: v for n, v in per_module.items() if v and n in modules}
    # A module's count includes its children's; keep each module's own share (an attention
    # block's score matmuls beside its projections), and the root's functional ops as "".
    own = dict(counted)
    for n, v in counted.items():
        parts = n.split(".")
        parent = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in counted),
                      None)
        if parent is not None:
            own[parent] -= v
    tops = [n for n in counted if not any(n.startswith(o + ".") for o in counted if o != n)]
    rest = total - sum(counted[n] for n in tops)
    if rest > 0:
        own[""] = rest
    leaves = {n: v for n, v in own.items() if v > 0}
    acts: dict[str, int] = {}

    def hook(name: str) -> Any:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            n_in = sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))
            n_out = output.numel() if isinstance(output, torch.Tensor) else sum(
                t.numel() for t in output if isinstance(t, torch.Tensor)) if isinstance(output, tuple) else 0
            acts[name] = acts.get(name, 0) + n_in + n_out
        return fn

    modules[""] = model
    handles = [modules[n].register_forward_hook(hook(n)) for n in leaves]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            call(model, one)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return leaves, acts, {n: modules[n] for n in leaves}


def _density(module: nn.Module) -> tuple[float, bool]:
    """(kept fraction of the layer's weight, whether it is a codebook layer)."""
    from torchshrink.cluster.codebook import Codebook
    from torchshrink.measure.weights import effective_tensors
    from torchshrink.nn import params

    tensors = effective_tensors(module)
    w = tensors.get("weight")
    if w is None:
        w = next(iter(tensors.values()), None) if tensors else None
    if isinstance(getattr(module, "weight_int8", None), torch.Tensor):
        w = module.weight_int8  # type: ignore[assignment]
    if w is None or w.numel() == 0:
        return 1.0, False
    return float(torch.count_nonzero(w)) / w.numel(), params.find(module, Codebook) is not None


def estimate_energy(model: nn.Module, example: Any, *, batch: int = 1,
                    stored_bytes: Mapping[str, int] | None = None, sram_bytes: int = 0,
                    table: Mapping[str, float] | None = None, skip_zeros: bool = True,
                    precision: Mapping[str, str] | None = None, dense_fp32: bool = False) -> EnergyEstimate:
    """Energy of one inference of `model` at batch size `batch` (see the module docstring).

    stored_bytes: payload bytes per layer name as the file stores them (`report.streams`);
        None counts every parameter and buffer at its in-memory dtype size.
    sram_bytes: on-chip memory for weights; when the whole payload fits, weights come from SRAM.
    precision: layer name -> "fp32", "fp16" or "int8", overriding what the layer says.
    dense_fp32: price the model as its dense fp32 equivalent (32-bit weights, no zero skipping,
        fp32 arithmetic): the baseline when no fp32 model is at hand.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    if not isinstance(sram_bytes, int) or isinstance(sram_bytes, bool) or sram_bytes < 0:
        raise ConfigError(f"sram_bytes must be a non-negative integer (bytes of on-chip weight memory), "
                          f"got {sram_bytes!r}")
    overrides = dict(precision or {})
    bad = {k: v for k, v in overrides.items() if v not in _PRECISIONS}
    if bad:
        raise ConfigError(f"precision must map layer names to one of {sorted(_PRECISIONS)}, got {bad}")
    macs, acts, modules = _layer_traffic(model, example)
    unknown = sorted(set(overrides) - set(modules))
    if unknown:
        raise ConfigError(f"precision names layers {unknown} that do no multiply-accumulates; "
                          f"layers with MACs: {sorted(modules)}")
    precs = {n: "fp32" if dense_fp32 else overrides.get(n) or layer_precision(m) for n, m in modules.items()}
    t = check_table(table, set(precs.values()))

    from torchshrink.measure.weights import layer_rows

    per_layer: dict[str, int] = {}
    if dense_fp32:  # the weights as the layer computes with them, 4 bytes each
        for r in layer_rows(model):
            per_layer[r.name] = 4 * r.params
    elif stored_bytes is None:  # in memory, tied tensors once
        from torchshrink.report.streams import layer_of

        seen: set[int] = set()
        for key, v in model.state_dict(keep_vars=True).items():
            if id(v) not in seen:
                seen.add(id(v))
                layer = layer_of(key)
                per_layer[layer] = per_layer.get(layer, 0) + v.numel() * v.element_size()
    else:
        per_layer = dict(stored_bytes)
    total_bytes = sum(per_layer.values())
    on_chip = total_bytes <= sram_bytes
    fetch = t["sram_32bit"] if on_chip else t["dram_32bit"]

    def weight_pj(nbytes: int) -> float:
        return nbytes * 8 / 32 * fetch / batch

    unpriced = [r.name for r in layer_rows(model) if r.name not in modules and r.params > 1000
                and not any(r.name.startswith(n + ".") for n in modules if n)]
    rows: list[LayerEnergy] = []
    claimed = 0
    for name, m in modules.items():
        mult, add, act_bits = _PRECISIONS[precs[name]]
        kept, codebook = (1.0, False) if dense_fp32 else _density(m)
        eff = round(macs[name] * kept) if skip_zeros and kept < 1.0 else macs[name]
        per_mac = t[mult] + t[add] + (t["register_32bit"] if codebook else 0.0)
        own = sum(v for k, v in per_layer.items() if k == name or k.startswith(name + "."))
        claimed += own
        rows.append(LayerEnergy(name, precs[name], macs[name], eff, 8 * own, acts.get(name, 0), weight_pj(own),
                                acts.get(name, 0) * act_bits / 32 * t["sram_32bit"], eff * per_mac))
    where = (f"on-chip SRAM ({t['sram_32bit']:g} pJ per 32 bits): the {total_bytes:,} stored bytes fit in "
             f"{sram_bytes:,}" if on_chip else
             f"DRAM ({t['dram_32bit']:g} pJ per 32 bits): the {total_bytes:,} stored bytes do not fit in "
             f"{sram_bytes:,} bytes of on-chip SRAM")
    assumptions = (
        "45 nm energy table (Horowitz, ISSCC 2014)" if table is None else "a user-supplied energy table (pJ)",
        f"weights: every stored bit fetched once per batch of {batch} from {where}",
        "weights priced as dense fp32 (4 bytes per weight)" if dense_fp32 else
        "weights priced at their stored bits (values, positions, codebooks, scales, biases of the file's payload)",
        f"activations on chip: each layer reads its input and writes its output once ({t['sram_32bit']:g} pJ "
        "per 32 bits of SRAM, at the layer's activation width)",
        "arithmetic: one multiply and one add per MAC at the layer's precision (int8 multiplies accumulate in "
        "int32)" + ("; zeros of sparse layers skipped" if skip_zeros and not dense_fp32 else "; zeros not skipped")
        + ("; codebook layers read each centroid from a register file per use" if not dense_fp32 else ""),
        "not counted: biases, activation functions, pooling, normalization, the file header, control and "
        "leakage",
    ) + ((f"layers {unpriced} hold weights but run kernels the MAC counter does not know; their arithmetic "
          "and activations are not priced (their weights are)",) if unpriced else ())
    return EnergyEstimate(batch, sram_bytes, total_bytes, on_chip, tuple(rows),
                          weight_pj(total_bytes - claimed), assumptions)

"""`WeightOnly(bits=4, group_size=128)`: low-bit weights in real bit-packed storage (int2..int8,
int3 included), dequantized on the fly for each matmul; activations stay float.

Storage per layer: `packed` (uint8, ceil(n * bits / 8) bytes), one float16 scale per group and,
for affine grids, one uint8 zero point per group. The effective weight is exactly what
`FakeQuant` with the same settings computes, so QAT results convert without any change.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from torchshrink.codec.structure import register_module
from torchshrink.config import Config, check, check_choice
from torchshrink.errors import ConfigError, UnsupportedModelError
from torchshrink.nn import coverage, get_module, params, select_layers, set_module
from torchshrink.nn.calib import InputStats, calibrate_sequentially
from torchshrink.nn.kinds import tied_groups
from torchshrink.progress import progress_bar
from torchshrink.quant.awq import awq_column_scale, awq_input_scales
from torchshrink.quant.fake import (
    FakeQuant,
    Granularity,
    WeightMethod,
    check_bits,
    check_group,
    dequantize_codes,
    grid_params,
    group_rows,
    h_blocks_for,
    num_groups,
    qrange,
    quantize_codes,
    shares_values,
)
from torchshrink.quant.gptq import gptq_codes
from torchshrink.quant.layers import (
    DecodedOp,
    LayerOp,
    bias_of,
    compute_dtype,
    in_width,
    layer_op,
    run_op,
    weight_of,
    weight_shape,
)
from torchshrink.quant.lookup import lookup_rows, rows_addressable
from torchshrink.quant.packing import pack, packed_bytes, unpack
from torchshrink.registry import Context, register

__all__ = ["WeightOnly", "WeightOnlyLayer", "quantize_layer_weight_only"]


PACK_SLICE = 1 << 20  # codes packed at a time (a multiple of 8, so every slice ends on a byte)


class WeightOnlyLayer(nn.Module):
    """A Linear/Conv1d/Conv2d whose weight lives as packed `bits`-bit codes."""

    packed: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    bias: torch.Tensor | None
    col_scale: torch.Tensor | None

    def __init__(self, op: LayerOp, *, bits: int, symmetric: bool, granularity: Granularity,
                 group_size: int | None, bias: bool, col_scale: bool = False,
                 cpu_kernel: bool | None = None) -> None:
        super().__init__()
        self.cpu_kernel = cpu_kernel  # None: the int4 kernel where eligible; False: always the exact float path
        self._int4: tuple[tuple[int, int], torch.Tensor, torch.Tensor] | None = None  # (key, packed, scales/zeros)
        self.op = dict(op)
        self.bits, self.symmetric, self.granularity = bits, symmetric, granularity
        self.group_size = group_size if granularity == "group" else None
        self.shape = weight_shape(op)
        groups = num_groups(self.shape, granularity, self.group_size)
        # Unwritten until set_codes/a tied lead/the loader fills it: a loader's skeleton touches no pages.
        self.register_buffer("packed", torch.empty(packed_bytes(math.prod(self.shape), bits), dtype=torch.uint8))
        # Scales as float32: float16 would round the grid away from what QAT trained on.
        self.register_buffer("scale", torch.ones(groups, 1))
        self.register_buffer("zero_point", None if symmetric else torch.zeros(groups, 1, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(op["out"]) if bias else None)
        # AWQ: the codes encode W diag(s); the layer divides s back out of the weight's columns.
        self.register_buffer("col_scale", torch.ones(math.prod(self.shape[1:])) if col_scale else None)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, for code that reads a layer's `.weight` (its dtype or device,
        as Hugging Face's ViT does); the layer stores only the codes."""
        return self.dequantized_weight()

    @property
    def execution(self) -> str:
        if self.cpu_kernel is not False and int4_kernel_ok(self):
            return "bit-packed int4, PyTorch's int4 CPU matmul kernel (bf16 activations) in eval mode"
        return f"bit-packed int{self.bits} dequant-on-the-fly"

    def set_codes(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        # In slices of whole bytes: packing widens codes to int32 (an LM head: several x its weight).
        flat = codes.reshape(-1)
        step = PACK_SLICE
        for i in range(0, flat.numel(), step):
            part = pack(flat[i:i + step], self.bits)
            start = i * self.bits // 8
            self.packed[start:start + part.numel()] = part
        self.scale.copy_(scale.reshape(-1, 1))
        if self.zero_point is not None:
            self.zero_point.copy_(zero.reshape(-1, 1).to(torch.uint8))

    def dequantized_weight(self) -> torch.Tensor:
        codes = unpack(self.packed, self.bits, math.prod(self.shape), dtype=torch.uint8).reshape(self.shape)
        rows = group_rows(codes, self.granularity, self.group_size)
        zero = torch.zeros_like(self.scale) if self.zero_point is None else self.zero_point.float()
        w = dequantize_codes(rows, self.scale, zero, self.bits, self.symmetric).reshape(self.shape)
        if self.col_scale is not None:
            w = w / self.col_scale.reshape(1, *self.shape[1:])
        return w

    def _int4_operands(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight in the kernel's packed layout and its (groups, out, 2) bf16 scales and
        zeros, built once from the codes and rebuilt only if the codes change."""
        key = (self.packed.data_ptr(), self.packed._version)
        if self._int4 is None or self._int4[0] != key:
            n, k = self.shape
            codes = unpack(self.packed, 4, n * k).reshape(n, k).to(torch.int32)
            g = k // int(self.group_size or k)
            scale = self.scale.reshape(n, g).float()
            # The kernel computes (q - 8) * scale + zero. Ours is (c + qmin - zero_point) * scale,
            # qmin = -8 symmetric (zero_point 0) or 0 asymmetric: zero = (8 + qmin - zero_point) * scale.
            qmin = -8 if self.symmetric else 0
            zp = torch.zeros_like(scale) if self.zero_point is None else self.zero_point.reshape(n, g).float()
            zero = (8 + qmin - zp) * scale
            sz = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
            self._int4 = (key, packed, sz)
        return self._int4[1], self._int4[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_kernel is not False and not self.training and x.device.type == "cpu" and int4_kernel_ok(self):
            packed, sz = self._int4_operands()
            n, k = self.shape
            x2 = x.reshape(-1, k)
            if self.col_scale is not None:
                x2 = x2 / self.col_scale
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16), packed, int(self.group_size or k),
                                                           sz).to(x.dtype)
            if self.bias is not None:
                y = y + self.bias.to(x.dtype)
            return y.reshape(*x.shape[:-1], n)
        if self._per_row_int8(x):
            return self._int8_rows(x)
        if rows_addressable(self):
            return lookup_rows(self, x)
        dt = compute_dtype(x, self.scale)
        w = self.dequantized_weight().to(dt)
        b = None if self.bias is None else self.bias.to(dt)
        return run_op(self.op, x, w, b)

    def _per_row_int8(self, x: torch.Tensor) -> bool:
        return (self.bits == 8 and self.op["kind"] == "linear" and self.col_scale is None
                and self.scale.shape[0] == self.shape[0] and x.is_floating_point())

    def _int8_rows(self, x: torch.Tensor) -> torch.Tensor:
        # One scale per output row, w = (c + qmin - zero) * s, so x w^T = (x c^T + (qmin - zero) sum(x)) * s:
        # the codes are cast once and the scale applied to the output, not to every weight.
        # Equal to the decoded weight's product up to float summation order.
        qmin, _ = qrange(8, self.symmetric)
        c = self.packed.view(self.shape).to(x.dtype)
        offset = qmin - (0.0 if self.zero_point is None else self.zero_point.reshape(-1).to(x.dtype))
        y = F.linear(x, c)
        y = (y + x.sum(-1, keepdim=True) * offset) * self.scale.reshape(-1).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def ts_effective_weights(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.dequantized_weight()}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return f"{self.op['kind']}, shape={self.shape}, bits={self.bits}, symmetric={self.symmetric}, " \
               f"granularity={self.granularity}{g}"


INT4_GROUPS = (32, 64, 128, 256)  # what PyTorch's int4 CPU kernel accepts


def int4_kernel_ok(m: WeightOnlyLayer) -> bool:
    """Whether PyTorch's int4 CPU matmul can run this layer: a Linear with 4-bit group-wise
    codes, a group of 32/64/128/256 and a multiple of 16 outputs (its packing tiles)."""
    return (m.op["kind"] == "linear" and m.bits == 4 and m.granularity == "group" and m.group_size in INT4_GROUPS
            and m.shape[0] % 16 == 0 and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"))


register_module(
    WeightOnlyLayer,
    to_spec=lambda m: {"op": m.op, "bits": m.bits, "symmetric": m.symmetric, "granularity": m.granularity,
                       "group_size": m.group_size, "bias": m.bias is not None,
                       **({"col_scale": True} if m.col_scale is not None else {}),
                       **({"cpu_kernel": m.cpu_kernel} if m.cpu_kernel is not None else {})},
    from_spec=lambda s: WeightOnlyLayer(s["op"], bits=s["bits"], symmetric=s["symmetric"],
                                        granularity=s["granularity"], group_size=s["group_size"], bias=s["bias"],
                                        col_scale=s.get("col_scale", False), cpu_kernel=s.get("cpu_kernel")),
    name="WeightOnlyLayer",
)


def data_aware_eligible(m: nn.Module) -> bool:
    """GPTQ and AWQ need a plain grid (no QAT grid, no shared codebook) on an ungrouped layer."""
    chain = params.chain(m)
    if any(isinstance(p, FakeQuant) for p in chain) or shares_values(chain):
        return False
    return isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == 1)


def quantize_layer_weight_only(name: str, m: nn.Module, *, bits: int, symmetric: bool = True,
                               group_size: int | None = None, method: WeightMethod = "minmax",
                               hessian: torch.Tensor | None = None, damping: float = 0.01,
                               algorithm: Literal["rtn", "gptq", "awq"] = "gptq",
                               desc_act: bool = False, awq_scale: torch.Tensor | None = None,
                               awq_folded: bool = False) -> WeightOnlyLayer:
    """Pack one layer. A FakeQuant already on the weight (after QAT) fixes the grid; otherwise
    the grid comes from `method`, and with `hessian` (the layer's input X^T X) the codes come
    from `algorithm` (GPTQ, or AWQ's activation-aware column scaling) instead of rounding to
    nearest. Codebook layers use one grid per tensor (shared
    values stay shared); pruned zeros map to code `zero_point` and dequantize to exactly 0.
    AWQ: `awq_scale` is the column scale chosen for this layer's input group (searched here when
    None); `awq_folded` means the op before the layer already divides its input by it, so the
    codes encode W diag(s) and the layer keeps no scale."""
    op = layer_op(name, m)
    chain = params.chain(m)
    fq = next((p for p in chain if isinstance(p, FakeQuant)), None)
    if fq is not None:
        before = params.value_before(m, fq).detach().float()
        codes, scale, zero = fq.codes(before)
        q = WeightOnlyLayer(op, bits=fq.bits, symmetric=fq.symmetric, granularity=fq.granularity,
                            group_size=fq.group_size, bias=getattr(m, "bias", None) is not None)
    else:
        granularity: Granularity = "group" if group_size is not None else "channel"
        if shares_values(chain):
            granularity, group_size = "tensor", None
        if granularity == "group":
            check_group(name, in_width(op), group_size)
        w = weight_of(m)
        col_scale = None
        if hessian is not None and granularity != "tensor" and algorithm == "gptq":
            keep_zero = (w == 0) if chain else None  # a parametrized weight's zeros are pruned: keep them
            codes, scale, zero = gptq_codes(w, hessian, bits=bits, symmetric=symmetric, granularity=granularity,
                                            group_size=group_size, method=method, keep_zero=keep_zero,
                                            damping=damping, desc_act=desc_act)
        else:
            h = hessian
            if hessian is not None and granularity != "tensor" and algorithm == "awq":
                col_scale = awq_scale if awq_scale is not None else awq_column_scale(
                    w, hessian, bits=bits, symmetric=symmetric, granularity=granularity, group_size=group_size,
                    method=method)
                w = w.detach().float() * col_scale.reshape(1, *w.shape[1:])
                flat = col_scale.reshape(-1)
                h = hessian / (flat[:, None] * flat[None, :])  # the inputs the scaled weight meets
                if awq_folded:
                    col_scale = None
            hb = None
            if method == "output":
                if h is None or granularity == "tensor":
                    method = "mse"  # no input statistics here (a layer left out of calibration)
                else:
                    hb = h_blocks_for(h, granularity, group_size)
            rows = group_rows(w, granularity, group_size)
            scale, zero = grid_params(rows, bits, symmetric, method, h_blocks=hb)
            codes = quantize_codes(rows, scale, zero, bits, symmetric)
        q = WeightOnlyLayer(op, bits=bits, symmetric=symmetric, granularity=granularity, group_size=group_size,
                            bias=getattr(m, "bias", None) is not None, col_scale=col_scale is not None)
        if col_scale is not None:
            assert q.col_scale is not None
            q.col_scale.copy_(col_scale)
    q.set_codes(codes, scale, zero)
    b = bias_of(m)
    if b is not None and q.bias is not None:
        q.bias.copy_(b)
    return q


def layer_group(name: str, width: int, group_size: int | None, *, strict: bool) -> int | None:
    """The group this layer gets: `group_size` when it divides the width, else the largest
    divisor of the width below it (per channel when that is under 8 values), or ConfigError
    with `strict`."""
    if group_size is None or width % group_size == 0:
        return group_size
    if strict:
        check_group(name, width, group_size)
    best = max(d for d in range(1, min(group_size, width) + 1) if width % d == 0)
    return best if best >= 8 and best < width else None


WEIGHT_ONLY_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)


def apply_weight_only(model: nn.Module, config: WeightOnly, ctx: Context) -> nn.Module:
    selected = select_layers(model, types=WEIGHT_ONLY_TYPES, targets=config.targets, ignore=config.ignore)
    # The swap replaces the module, so a subclass with its own forward (OPT's learned positions
    # take position_ids) would lose it: those keep their float weight, with the reason recorded.
    for name, m in selected:
        if isinstance(m, nn.Embedding) and type(m).forward is not nn.Embedding.forward:
            coverage.skip(model, name, f"{type(m).__name__} overrides Embedding.forward; a swapped "
                                       "WeightOnlyLayer would not compute it")
    selected = [(n, m) for n, m in selected
                if not (isinstance(m, nn.Embedding) and type(m).forward is not nn.Embedding.forward)]
    # A weight tied between layers (an LM head and its token embedding) is quantized once, on
    # the first of its layers that is a Linear (GPTQ/AWQ can see its inputs), and the others
    # share that layer's codes and scales.
    ties = {g[0]: g for g in _primary_first(tied_groups(selected), selected)}
    followers = {n for g in ties.values() for n in g[1:]}
    layers = [(n, m) for n, m in selected if n not in followers]
    groups: dict[str, int | None] = {}
    for name, m in layers:  # every layer checked before any changes
        if shares_values(params.chain(m)):
            groups[name] = config.group_size
            continue
        g = layer_group(name, in_width(layer_op(name, m)), config.group_size, strict=config.strict)
        groups[name] = g
        if g != config.group_size:
            coverage.note(model, name, f"group_size={config.group_size} does not divide the input width "
                                       f"{in_width(layer_op(name, m))}; used "
                                       + (f"group_size={g}" if g else "one scale per output channel"))
    data_aware = config.algorithm != "rtn" or config.clip == "output"
    if data_aware and ctx.calibration is None:
        what = f"algorithm={config.algorithm!r}" if config.algorithm != "rtn" else "clip='output'"
        raise ConfigError(f"WeightOnly({what}) needs calibration data to measure each layer's inputs: "
                          "pass calibration=loader (a few dozen batches of inputs) to ts.quantize, or use "
                          "algorithm='rtn', which needs none")
    bar = progress_bar(len(layers), config.algorithm, ctx.progress and data_aware)
    done: dict[str, WeightOnlyLayer] = {}

    def put(name: str, m: nn.Module, hessian: torch.Tensor | None, awq: tuple[torch.Tensor, bool] | None = None
            ) -> None:
        q = quantize_layer_weight_only(name, m, bits=config.bits, symmetric=config.symmetric,
                                       group_size=groups[name], method=config.clip, hessian=hessian,
                                       damping=config.damping, algorithm=config.algorithm,
                                       desc_act=config.desc_act, awq_scale=None if awq is None else awq[0],
                                       awq_folded=awq is not None and awq[1])
        done[name] = q
        # Until every layer is done, the calibration passes after it compute with its quantized
        # weight in float (no unpacking on every call): written into the float layer's own
        # storage by default, so no second copy of the model exists; with rollback=True (or a
        # parametrized weight) a float stand-in holds it and the original stays untouched.
        w = getattr(m, "weight", None)
        if config.rollback or params.chain(m) or not isinstance(w, nn.Parameter):
            set_module(model, name, DecodedOp(q.op, q.dequantized_weight(), q.bias))
        else:
            with torch.no_grad():
                w.copy_(q.dequantized_weight().reshape(w.shape))
        if bar is not None:
            bar.update(1)

    pending = [(n, m) for n, m in layers if data_aware and data_aware_eligible(m)]
    shared = {n for g in ties.values() if len(g) > 1 for n in g}  # their codes serve other inputs too
    try:
        for name, m in layers:  # rounded to nearest first, so the GPTQ layers after them see their error
            if all(name != n for n, _ in pending):
                put(name, m, None)
        by_name = dict(pending)

        def compress(stats: dict[str, InputStats]) -> None:
            awq = awq_input_scales(model, stats, by_name, groups, bits=config.bits, symmetric=config.symmetric,
                                   method=config.clip, keep=set(done) | shared) \
                if config.algorithm == "awq" and config.fold and not config.rollback else {}
            for name, s in stats.items():
                put(name, by_name[name], s.hessian, awq.get(name))

        if pending:  # block by block, each measured on the outputs of the quantized blocks before it
            assert ctx.calibration is not None
            calibrate_sequentially(model, pending, ctx.calibration, compress, limit=config.calibration_batches,
                                   hessian=True, blocks=config.blocks, propagate=config.propagate,
                                   true_sequential=config.true_sequential,
                                   producers=config.algorithm == "awq" and config.fold and not config.rollback)
    except BaseException as e:
        if config.rollback:
            for name, m in layers:  # nothing half-done: the original layers go back
                set_module(model, name, m)
        else:  # the float weights of the finished layers hold their quantized values: swap them in
            for name, q in done.items():
                q.cpu_kernel = config.cpu_kernel
                set_module(model, name, q)
            if hasattr(e, "add_note"):
                e.add_note(f"WeightOnly stopped after {len(done)} of {len(layers)} layers; those are quantized "
                           "in the model (rollback=True restores the original layers on failure, at the cost "
                           "of a second copy of the weights)")
        raise
    finally:
        if bar is not None:
            bar.close()
    for name, q in done.items():
        q.cpu_kernel = config.cpu_kernel
        set_module(model, name, q)
    for lead, group in ties.items():
        for name in group[1:]:
            set_module(model, name, _sharing(done[lead], layer_op(name, get_module(model, name)),
                                             dict(selected)[name]))
    return model


def _primary_first(groups: list[list[str]], layers: list[tuple[str, nn.Module]]) -> list[list[str]]:
    kind = dict(layers)
    return [sorted(g, key=lambda n: not isinstance(kind[n], nn.Linear)) for g in groups]


def _sharing(lead: WeightOnlyLayer, op: LayerOp, m: nn.Module) -> WeightOnlyLayer:
    """A WeightOnlyLayer computing `op` with `lead`'s codes and scales (the same tensors)."""
    if weight_shape(op) != lead.shape:
        raise UnsupportedModelError(f"tied weight used with shapes {weight_shape(op)} and {lead.shape}")
    q = WeightOnlyLayer(op, bits=lead.bits, symmetric=lead.symmetric, granularity=lead.granularity,
                        group_size=lead.group_size, bias=getattr(m, "bias", None) is not None,
                        col_scale=lead.col_scale is not None)
    for buf in ("packed", "scale", "zero_point", "col_scale"):
        if getattr(lead, buf) is not None:
            setattr(q, buf, getattr(lead, buf))
    b = bias_of(m)
    if b is not None and q.bias is not None:
        q.bias.copy_(b)
    return q


@register(family="quant", handler=apply_weight_only)
@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightOnly(Config):
    """Weight-only quantization with bit-packed storage.

    bits: 2..8 (int2, int3, int4 are the usual choices).
    group_size: values per scale along the input width (in * kh * kw for convolutions, the
        embedding width for an Embedding); None = one scale per output channel. A layer whose
        width it does not divide gets the largest group below it that does (recorded in
        ts.coverage); `strict=True` makes that an error instead.
    clip: `mse` searches a clipping range per group (better at 2..4 bits), `minmax` uses the
        full range, `output` searches the range that changes the layer's output on
        `calibration=` data least (activation-aware; needs calibration).
    algorithm: "rtn" rounds each weight to the nearest grid point; "gptq" (Frantar et al. 2022)
        rounds column by column and compensates each error in the columns not yet rounded,
        using the layer's inputs from `calibration=` (at most `calibration_batches` batches;
        `damping` is added to the Hessian diagonal as a fraction of its mean). Same storage,
        same speed, better accuracy at 2..4 bits. "awq" (Lin et al. 2024) instead scales each
        input column by its activation size to the power alpha (searched per layer on the same
        data) before rounding and divides it back out: one more float per input column. Layers
        after QAT, codebook layers and grouped convs keep RTN.
    fold: AWQ gives the layers that read one input (q, k, v) one scale and folds it into the
        op producing that input (RMSNorm/LayerNorm, or a Linear not itself quantized), where
        there is one; elsewhere, and with fold=False or rollback=True (a folded norm is not
        restored), each layer keeps its own column scale.
    rollback: GPTQ/AWQ run block by block, and each finished layer's quantized weight is written
        into its float weight's storage, so the model is never held twice (peak memory about the
        model plus one block's statistics); if calibration fails, the finished layers stay
        quantized. True keeps the originals until the end and restores them on failure (about
        twice the weights in memory).
    cpu_kernel: None (default) runs eligible layers (int4 Linear, group_size 32/64/128/256,
        outputs a multiple of 16) through PyTorch's packed int4 CPU matmul in eval mode: several
        times faster than float at batch 1, with activations and scales rounded to bfloat16
        (outputs differ from the float path by about 1e-2 relative); training mode and other
        layers use the exact float path. False: always the exact float path; True: the same as
        None, recorded as asked for. The file is the same; export uses the float path.
    """

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = True
    clip: Literal["minmax", "mse", "output"] = "mse"
    algorithm: Literal["rtn", "gptq", "awq"] = "rtn"
    cpu_kernel: bool | None = None
    calibration_batches: int = 32
    damping: float = 0.01
    desc_act: bool = False
    blocks: tuple[str, ...] | None = None
    propagate: Literal["compressed", "original"] = "compressed"
    true_sequential: bool = False
    rollback: bool = False
    fold: bool = True
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    strict: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits("bits", self.bits, 2, 8)
        check(self.group_size is None or self.group_size > 0,
              f"group_size must be positive or None (per channel), got {self.group_size}")
        check_choice("algorithm", self.algorithm, ("rtn", "gptq", "awq"))
        check(self.calibration_batches >= 1, f"calibration_batches must be >= 1, got {self.calibration_batches}")
        check(0.0 < self.damping < 1.0, f"damping must be in (0, 1), got {self.damping}")
        check_choice("propagate", self.propagate, ("compressed", "original"))

    @classmethod
    def example(cls) -> WeightOnly:
        """Per-channel int4: applies to any layer width (group_size=128 needs widths divisible by 128)."""
        return cls(bits=4, group_size=None)

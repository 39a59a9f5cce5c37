"""The parity check run after every export: the exported file against the PyTorch model.

Float forms must match to a max absolute error of 1e-4 relative to the output scale (the
largest |output| of the reference); half-precision forms get ten units in the last place of
their dtype instead, because PyTorch itself computes them in that precision. Quantized forms
(integer activations) cannot match bit for bit, since the runtime's integer kernels round
differently from PyTorch's, so they must agree on the top-1 class for >= 99% of the samples
and, where labels are given, reach the same accuracy within 0.2 points (or one sample, where
the check set is smaller than 500).

Top-1 agreement for quantized forms treats near-ties as ties: a sample agrees when the file's
top class is one the reference scores within `TIE_BAND` (5%) of the output scale of its own top
class. Rounding differences of one integer step per layer accumulate; on untrained networks,
whose logits are nearly level, they flipped the argmax between classes up to 4.2% of the output
scale apart (LeNet-5, ONNX Runtime on an AVX2 CPU without VNNI, 7-bit activations), while a
wrong export (a lost bias, a transposed weight, a wrong scale) moves outputs by a large
fraction of the output scale. The strict agreement is reported beside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from torchshrink.batches import output_tensors, unwrap_batch
from torchshrink.errors import ShrinkError

__all__ = [
    "ParityError",
    "ParityReport",
    "Batch",
    "sample_batches",
    "compare",
    "float_tolerance",
    "FLOAT_TOLERANCE",
    "MIN_TOP1_AGREEMENT",
    "MAX_ACCURACY_DROP",
    "TIE_BAND",
]

FLOAT_TOLERANCE = 1e-4
MIN_TOP1_AGREEMENT = 99.0  # percent
MAX_ACCURACY_DROP = 0.2  # points
TIE_BAND = 0.05  # of the output scale: classes this close to the top count as tied (quantized forms)

Kind = Literal["float", "quantized"]
# One check batch: the model inputs (a tuple, one tensor per model argument) and optional labels.
Batch = tuple[tuple[torch.Tensor, ...], "torch.Tensor | None"]
Runner = Callable[[tuple[torch.Tensor, ...]], list[np.ndarray]]


class ParityError(ShrinkError):
    """The exported file does not compute what the PyTorch model computes."""


def float_tolerance(dtype: torch.dtype) -> float:
    """1e-4 for float32/64; ten ulps of the dtype for half precision (PyTorch computes fp16
    models in fp16, so the reference itself is only that accurate)."""
    if dtype in (torch.float16, torch.bfloat16):
        return max(FLOAT_TOLERANCE, 10.0 * torch.finfo(dtype).eps)
    return FLOAT_TOLERANCE


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """What the check measured. Accuracies and agreement are percentages."""

    runtime: str
    kind: Kind
    samples: int
    batch_sizes: tuple[int, ...]
    max_abs_error: float
    output_scale: float
    relative_error: float
    tolerance: float
    top1_agreement: float | None  # quantized forms: near-ties (TIE_BAND) count as agreeing
    accuracy_reference: float | None
    accuracy_exported: float | None
    passed: bool
    top1_strict: float | None = None  # the argmax identical

    def summary(self) -> str:
        parts = [f"{self.runtime} vs PyTorch ({self.kind} form, {self.samples} samples, "
                 f"batch sizes {list(self.batch_sizes)}): max abs error {self.max_abs_error:.3g} "
                 f"= {self.relative_error:.3g} of output scale {self.output_scale:.3g}"]
        if self.kind == "float":
            parts.append(f"tolerance {self.tolerance:.3g}")
        if self.top1_agreement is not None:
            parts.append(f"top-1 agreement {self.top1_agreement:.2f}% (need >= {MIN_TOP1_AGREEMENT:g}%; "
                         f"{self.top1_strict:.2f}% without counting near-ties)"
                         if self.kind == "quantized" else f"top-1 agreement {self.top1_agreement:.2f}%")
        if self.accuracy_reference is not None and self.accuracy_exported is not None:
            parts.append(f"accuracy {self.accuracy_reference:.2f}% (PyTorch) vs "
                         f"{self.accuracy_exported:.2f}% ({self.runtime})")
        parts.append("PASSED" if self.passed else "FAILED")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _as_inputs(x: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(x, torch.Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in x):
        return tuple(x)
    raise TypeError(f"model inputs must be a tensor or a tuple of tensors, got {type(x).__name__}")


def _like(t: torch.Tensor, batch: int, g: torch.Generator) -> torch.Tensor:
    """A random tensor shaped like `t` with `batch` rows and values in t's range, so
    embedding indices stay valid and float inputs keep their scale."""
    shape = (batch, *t.shape[1:])
    if t.is_floating_point():
        tf = t.float()
        mean, std = float(tf.mean()), float(tf.std()) if tf.numel() > 1 else 1.0
        return (torch.randn(shape, generator=g) * (std or 1.0) + mean).to(t.dtype)
    if t.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    lo, hi = int(t.min()), int(t.max())
    # Assume the inputs are indices into a table as large as the largest seen, at least 2.
    return torch.randint(lo, max(hi, lo + 1) + 1, shape, generator=g).to(t.dtype)


def sample_batches(example: Any, *, data: Iterable[Any] | None = None, rows: int = 64,
                   seed: int = 0) -> list[Batch]:
    """Check batches: from `data` (a loader of (x, y) or x batches) when given, else the
    example plus random batches like it, at two batch sizes so the dynamic batch dimension
    is exercised, about `rows` rows in all."""
    out: list[Batch] = []
    if data is not None:
        n = 0
        for b in data:
            x, y = unwrap_batch(b)
            out.append((_as_inputs(x), y))
            n += out[-1][0][0].shape[0]
            if n >= rows:
                break
        if out:
            return out
    ex = _as_inputs(example)
    out.append((tuple(t.detach() for t in ex), None))
    g = torch.Generator().manual_seed(seed)
    n = ex[0].shape[0]
    sizes = [3, 16] if rows <= 64 else [3, 64]
    while n < rows:
        b = sizes[len(out) % 2] if n + sizes[len(out) % 2] <= rows else max(rows - n, 1)
        out.append((tuple(_like(t, b, g) for t in ex), None))
        n += b
    return out


@torch.no_grad()
def compare(reference: nn.Module, runner: Runner, batches: Sequence[Batch], *, kind: Kind,
            runtime: str, tolerance: float | None = None) -> ParityReport:
    """Run `reference` (PyTorch) and `runner` (the exported file) on the same batches and
    measure the disagreement. Classification-like outputs (last dim > 1) also get top-1
    agreement; labels, where the batches have them, give accuracy on both sides."""
    max_err, scale, scale0 = 0.0, 0.0, 0.0
    agree = total = 0
    gaps: list[torch.Tensor] = []  # per sample: reference score of its top class minus the file's
    correct_ref = correct_exp = labelled = 0
    ref_dtype = torch.float32
    sizes: list[int] = []
    for inputs, labels in batches:
        ref = output_tensors(reference(*inputs))
        got = runner(inputs)
        if len(got) != len(ref):
            raise ParityError(f"{runtime} returned {len(got)} outputs, PyTorch {len(ref)}")
        sizes.append(int(inputs[0].shape[0]))
        for i, (r, e) in enumerate(zip(ref, got)):
            ref_dtype = r.dtype if r.is_floating_point() else ref_dtype
            rn = r.detach().float().numpy()
            en = np.asarray(e, dtype=np.float32)
            if rn.shape != en.shape:
                raise ParityError(f"output {i} has shape {list(en.shape)} in {runtime} but "
                                  f"{list(rn.shape)} in PyTorch (batch size {sizes[-1]})")
            if rn.size:
                max_err = max(max_err, float(np.max(np.abs(rn - en))))
                scale = max(scale, float(np.max(np.abs(rn))))
        r0 = ref[0].detach().float()
        if r0.dim() >= 2 and r0.shape[-1] > 1:
            e0 = torch.from_numpy(np.asarray(got[0], dtype=np.float32))
            top_r, top_e = r0.argmax(-1), e0.argmax(-1)
            agree += int((top_r == top_e).sum())
            total += top_r.numel()
            scale0 = max(scale0, float(r0.abs().max()))
            gaps.append((r0.gather(-1, top_r.unsqueeze(-1)) - r0.gather(-1, top_e.unsqueeze(-1))).flatten())
            if labels is not None and labels.shape == top_r.shape:
                correct_ref += int((top_r == labels).sum())
                correct_exp += int((top_e == labels).sum())
                labelled += labels.numel()
    rel = max_err / scale if scale > 0 else max_err
    tol = tolerance if tolerance is not None else float_tolerance(ref_dtype)
    strict = 100.0 * agree / total if total else None
    agreement = strict
    if kind == "quantized" and total:
        within = int((torch.cat(gaps) <= TIE_BAND * scale0).sum())  # includes the identical argmaxes (gap 0)
        agreement = 100.0 * within / total
    acc_r = 100.0 * correct_ref / labelled if labelled else None
    acc_e = 100.0 * correct_exp / labelled if labelled else None
    if kind == "float":
        passed = bool(np.isfinite(rel)) and rel <= tol
    else:
        passed = agreement is None or agreement >= MIN_TOP1_AGREEMENT
        if agreement is None:  # no class dimension: fall back to a loose numeric bound
            passed = rel <= 0.05
        if acc_r is not None and acc_e is not None:
            # 0.2 points, or one sample where the check set is too small to resolve 0.2 points
            # (of 256 samples one flipped image is 0.39 points)
            passed = passed and abs(correct_ref - correct_exp) <= max(1.0, MAX_ACCURACY_DROP / 100 * labelled)
    return ParityReport(runtime=runtime, kind=kind, samples=sum(sizes), batch_sizes=tuple(sorted(set(sizes))),
                        max_abs_error=max_err, output_scale=scale, relative_error=rel, tolerance=tol,
                        top1_agreement=agreement, accuracy_reference=acc_r, accuracy_exported=acc_e,
                        passed=passed, top1_strict=strict)

"""The parity check's rules for quantized forms: accuracy within 0.2 points, or one sample where
the check set cannot resolve 0.2 points; top-1 agreement with near-ties counted as ties."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from torchshrink.export.check import TIE_BAND, compare


def _flipping(n_flipped: int) -> object:
    """A runner that returns PyTorch's logits with the first `n_flipped` rows' argmax moved."""
    def run(inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        y = nn.Identity()(inputs[0]).clone()
        y[:n_flipped] = y[:n_flipped].roll(1, dims=-1)
        return [y.numpy()]
    return run


def _batches(n: int) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    logits = torch.eye(4)[torch.arange(n) % 4] * 5.0  # confident, every one correct
    return [((logits,), torch.arange(n) % 4)]


def test_one_flipped_sample_of_a_small_check_set_passes_two_do_not() -> None:
    batches = _batches(256)
    one = compare(nn.Identity(), _flipping(1), batches, kind="quantized", runtime="fake")  # type: ignore[arg-type]
    assert one.top1_agreement is not None and one.top1_agreement > 99.0
    assert one.accuracy_exported is not None and one.accuracy_reference == 100.0
    assert 100.0 - one.accuracy_exported > 0.2 and one.passed  # 0.39 points: one image of 256
    two = compare(nn.Identity(), _flipping(2), batches, kind="quantized", runtime="fake")  # type: ignore[arg-type]
    assert not two.passed


def test_a_large_check_set_keeps_the_point_bound() -> None:
    batches = _batches(2000)  # 0.2 points = 4 samples
    assert compare(nn.Identity(), _flipping(4), batches, kind="quantized", runtime="fake").passed  # type: ignore[arg-type]
    assert not compare(nn.Identity(), _flipping(5), batches, kind="quantized", runtime="fake").passed  # type: ignore[arg-type]


def _swap_top_two(gap: float) -> tuple[object, list[tuple[tuple[torch.Tensor, ...], None]]]:
    """Logits whose top two classes lie `gap` (of the output scale, 10) apart, and a runner that
    returns them with those two classes swapped in every row."""
    logits = torch.zeros(64, 4)
    logits[:, 0], logits[:, 1] = 10.0, 10.0 - gap * 10.0

    def run(inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        return [inputs[0][:, [1, 0, 2, 3]].numpy()]
    return run, [((logits,), None)]


def test_near_ties_count_as_agreement_for_quantized_forms_only() -> None:
    run, batches = _swap_top_two(TIE_BAND / 2)
    q = compare(nn.Identity(), run, batches, kind="quantized", runtime="fake")  # type: ignore[arg-type]
    assert q.passed and q.top1_agreement == 100.0 and q.top1_strict == 0.0
    assert "without counting near-ties" in q.summary()
    f = compare(nn.Identity(), run, batches, kind="float", runtime="fake")  # type: ignore[arg-type]
    assert f.top1_agreement == 0.0  # float forms report the strict argmax agreement


def test_a_flip_between_classes_far_apart_still_fails() -> None:
    run, batches = _swap_top_two(3 * TIE_BAND)
    q = compare(nn.Identity(), run, batches, kind="quantized", runtime="fake")  # type: ignore[arg-type]
    assert not q.passed and q.top1_agreement == 0.0

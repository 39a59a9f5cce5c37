"""The parity check's accuracy rule for quantized forms: 0.2 points, or one sample where the
check set cannot resolve 0.2 points."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from torchshrink.export.check import compare


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

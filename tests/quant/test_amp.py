"""AMP training (bf16 autocast on CPU) reaches the float32 accuracy."""

from __future__ import annotations

import pytest
import torch

from torchshrink import data, models
from torchshrink.train import evaluate, fit


def _train(amp: bool, splits_name: str, epochs: int) -> float:
    loaders = data.loaders(data.load(splits_name), batch_size=128)
    torch.manual_seed(0)
    model = models.create("lenet300")
    fit(model, loaders[0], epochs=epochs, lr=1e-3, amp=amp, progress=False)
    return evaluate(model, loaders[2])["accuracy"]


def test_amp_matches_fp32_on_synthetic() -> None:
    assert abs(_train(True, "synthetic", 1) - _train(False, "synthetic", 1)) <= 1.0


@pytest.mark.slow
def test_amp_matches_fp32_on_mnist5k_within_half_a_point() -> None:
    fp32, amp = _train(False, "mnist5k", 20), _train(True, "mnist5k", 20)
    assert abs(amp - fp32) <= 0.5, (fp32, amp)

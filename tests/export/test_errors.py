"""Bad input fails loudly, with words that say what and how to fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink import models


def test_unsupported_format_lists_formats(tmp_path: object) -> None:
    with pytest.raises(ts.ConfigError, match=r"unsupported export format 'tensorrt'; supported formats: onnx, pt2"):
        ts.export(models.create("lenet300"), f"{tmp_path}/m.tensorrt", example=torch.randn(1, 784),
                  format="tensorrt")  # type: ignore[arg-type]


def test_typo_in_format_gets_a_suggestion(tmp_path: object) -> None:
    with pytest.raises(ts.ConfigError, match="Did you mean 'onnx'"):
        ts.export(models.create("lenet300"), f"{tmp_path}/m.onnx", example=torch.randn(1, 784),
                  format="onxx")  # type: ignore[arg-type]


def test_missing_output_directory_is_named(tmp_path: object) -> None:
    missing = f"{tmp_path}/no/such/dir"
    with pytest.raises(ts.ConfigError, match=f"output directory '{missing}' does not exist.*mkdir -p"):
        ts.export(models.create("lenet300"), f"{missing}/m.onnx", example=torch.randn(1, 784))


def test_bad_example_type(tmp_path: object) -> None:
    with pytest.raises(ts.ConfigError, match="example must be an input tensor"):
        ts.export(models.create("lenet300"), f"{tmp_path}/m.onnx", example=[[1.0] * 784])


class _Spectral(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x)  # neither ONNX exporter converts it


def test_operator_without_onnx_conversion_is_named(tmp_path: object) -> None:
    with pytest.raises(ts.UnsupportedModelError, match=r"operator 'aten::special_bessel_j0'.*format='pt2'"):
        ts.export(_Spectral(), f"{tmp_path}/m.onnx", example=torch.randn(2, 16))


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent Python control flow: a trace hard-codes one branch
            return self.fc(x)
        return -self.fc(x)


def test_untraceable_control_flow_names_the_op_and_line(tmp_path: object) -> None:
    with pytest.raises(ts.UnsupportedModelError,
                       match=r"operator 'aten::Bool'.*at test_errors\.py:\d+.*torch\.where"):
        ts.export(_Branchy(), f"{tmp_path}/m.onnx", example=torch.randn(2, 4))
    import os

    assert os.listdir(str(tmp_path)) == []


def test_untraceable_in_pt2_too(tmp_path: object) -> None:
    with pytest.raises(ts.UnsupportedModelError, match="cannot export _Branchy with torch.export"):
        ts.export(_Branchy(), f"{tmp_path}/m.pt2", example=torch.randn(2, 4), format="pt2")

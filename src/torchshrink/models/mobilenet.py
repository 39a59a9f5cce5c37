"""A small MobileNet-v1 style network of depthwise-separable convolutions for 1x28x28 inputs."""

from __future__ import annotations

import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.models.validate import check_size, check_sizes


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.dw(x)))
        return torch.relu(self.bn2(self.pw(x)))


class MobileNetSmall(nn.Module):
    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 plan: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)),
                 stem: int = 32) -> None:
        super().__init__()
        check_size("MobileNetSmall", "num_classes", num_classes)
        check_size("MobileNetSmall", "in_channels", in_channels)
        check_size("MobileNetSmall", "stem", stem, high=2**14)
        if not isinstance(plan, (list, tuple)) or not 1 <= len(plan) <= 64 or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 for p in plan):
            raise ConfigError(f"MobileNetSmall: plan must be 1 to 64 (channels, stride) pairs, got {plan!r}")
        for i, (c, s) in enumerate(plan):
            check_size("MobileNetSmall", f"plan[{i}] channels", c, high=2**14)
            check_sizes("MobileNetSmall", f"plan[{i}] stride", [s], high=8)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        blocks = []
        cin = stem
        for cout, stride in plan:
            blocks.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))

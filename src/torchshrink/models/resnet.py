"""A CIFAR-style residual CNN (He et al. 2016, section 4.2) sized for 1x28x28 inputs."""

from __future__ import annotations

import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.models.validate import check_size, check_sizes


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # A projection shortcut where shape changes; identity otherwise, so structured pruning
        # must keep the block input and output channels coupled.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 widths: tuple[int, ...] = (32, 64, 128), blocks: tuple[int, ...] = (1, 1, 1)) -> None:
        super().__init__()
        check_size("ResNetSmall", "num_classes", num_classes)
        check_size("ResNetSmall", "in_channels", in_channels)
        check_sizes("ResNetSmall", "widths", widths, high=2**14)
        check_sizes("ResNetSmall", "blocks", blocks, high=64)
        if len(widths) != len(blocks):
            raise ConfigError(f"ResNetSmall: widths and blocks need the same length, got {len(widths)} and "
                              f"{len(blocks)}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))

"""LeNet-300-100 and Caffe's LeNet-5, the models of Deep Compression's MNIST experiments."""

from __future__ import annotations

import torch
from torch import nn

from torchshrink.models.validate import check_size


class LeNet300(nn.Module):
    """784-300-100-10 MLP (266,610 parameters). Accepts (N, 1, 28, 28) or (N, 784)."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10, in_features: int = 784) -> None:
        super().__init__()
        check_size("LeNet300", "num_classes", num_classes)
        check_size("LeNet300", "in_features", in_features)
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv 20@5x5, max-pool, conv 50@5x5, max-pool, fc 500, fc 10.

    431,080 parameters and 2,293,000 multiply-adds on a 1x28x28 input.
    """

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        check_size("LeNet5", "num_classes", num_classes)
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(self.conv1(x), 2)
        x = torch.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)

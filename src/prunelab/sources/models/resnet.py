"""A tiny residual network (conv, BatchNorm, residual add, global pool, linear) for tests.

It exercises every dependency structured pruning must respect: BatchNorm after a conv, an
identity shortcut that couples two convs' output channels, a projection shortcut, and a
Linear classifier after global pooling.
"""

from __future__ import annotations

from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.sources.models.zoo import MODELS


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (identity, or 1x1 conv-BN when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu()  # residual add couples channels


class ResNetTiny(nn.Module):
    """stem conv16 -> block(16) -> block(16->32, stride 2) -> global avg pool -> Linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = Block(width, width)
        self.layer2 = Block(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))  # (B, C, 1, 1) -> (B, C)


@MODELS.register("resnet-tiny")
def resnet_tiny(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A 2-block residual network (about 20k parameters for 1-channel inputs)."""
    if len(input_shape) != 3:
        raise PrunelabError(f"resnet-tiny needs image inputs (C, H, W), got shape {input_shape}")
    return ResNetTiny(input_shape[0], num_classes)

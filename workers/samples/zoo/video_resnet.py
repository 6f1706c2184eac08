"""torchvision's VideoResNet family (R3D-18, MC3-18, R(2+1)D-18), reduced in width.

Mirrors `torchvision/models/video/resnet.py` class for class and attribute for attribute, so the module
paths users see match the real models: `stem.0`, `layer1.0.conv1.0`, `layer1.0.conv2.0`, `layer2.0.downsample.0`,
`fc`. The ops are the same too: `Conv3DSimple` and `Conv3DNoTemporal` subclass nn.Conv3d (describe must not
match class names), `Conv2Plus1D` is an nn.Sequential of a (1, 3, 3) and a (3, 1, 1) conv with BatchNorm and
ReLU between, residual adds are in place (`out += residual`), and the head is `avgpool → x.flatten(1) → fc`.
Only the widths are divided: `width` stands for torchvision's 64 (layers get width, 2, 4, 8 × width).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

ConvBuilder = Callable[..., nn.Module]


class Conv3DSimple(nn.Conv3d):
    """A full 3 × 3 × 3 convolution (R3D)."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int | None = None, stride: int = 1, padding: int = 1) -> None:
        super().__init__(in_planes, out_planes, kernel_size=(3, 3, 3), stride=stride, padding=padding, bias=False)

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


class Conv2Plus1D(nn.Sequential):
    """(1, 3, 3) spatial conv → BatchNorm → ReLU → (3, 1, 1) temporal conv (R(2+1)D)."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int, stride: int = 1, padding: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_planes, midplanes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, padding, padding), bias=False),
            nn.BatchNorm3d(midplanes),
            nn.ReLU(inplace=True),
            nn.Conv3d(midplanes, out_planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1), padding=(padding, 0, 0), bias=False),
        )

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


class Conv3DNoTemporal(nn.Conv3d):
    """A (1, 3, 3) convolution: MC3's 2D layers after the first stage."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int | None = None, stride: int = 1, padding: int = 1) -> None:
        super().__init__(
            in_planes, out_planes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, padding, padding), bias=False
        )

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return 1, stride, stride


class BasicBlock(nn.Module):
    """conv1 = Sequential(conv, BN, ReLU), conv2 = Sequential(conv, BN), in-place residual add, ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, conv_builder: ConvBuilder, stride: int = 1, downsample: nn.Module | None = None) -> None:
        midplanes = (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)
        super().__init__()
        self.conv1 = nn.Sequential(conv_builder(inplanes, planes, midplanes, stride), nn.BatchNorm3d(planes), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv_builder(planes, planes, midplanes), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.conv1(x)
        out = self.conv2(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        out = self.relu(out)
        return out


class BasicStem(nn.Sequential):
    """(3, 7, 7) conv, stride (1, 2, 2) → BN → ReLU."""

    def __init__(self, width: int = 64) -> None:
        super().__init__(
            nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )


class R2Plus1dStem(nn.Sequential):
    """Factorised stem: (1, 7, 7) conv to 45 channels (per 64) → BN → ReLU → (3, 1, 1) conv → BN → ReLU."""

    def __init__(self, width: int = 64) -> None:
        mid = max(1, round(45 * width / 64))
        super().__init__(
            nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, width, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )


class VideoResNet(nn.Module):
    """stem → layer1..4 → AdaptiveAvgPool3d → flatten(1) → fc."""

    def __init__(
        self,
        block: type[BasicBlock],
        conv_makers: Sequence[ConvBuilder],
        layers: Sequence[int],
        stem: Callable[[int], nn.Module],
        num_classes: int = 400,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.stem = stem(width)
        self.layer1 = self._make_layer(block, conv_makers[0], width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, conv_makers[1], 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, conv_makers[2], 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, conv_makers[3], 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        x = self.fc(x)
        return x

    def _make_layer(self, block: type[BasicBlock], conv_builder: ConvBuilder, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            ds_stride = conv_builder.get_downsample_stride(stride)  # type: ignore[attr-defined]
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes * block.expansion, kernel_size=1, stride=ds_stride, bias=False),
                nn.BatchNorm3d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, conv_builder, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, conv_builder))
        return nn.Sequential(*layers)


def r3d_18(num_classes: int = 400, width: int = 64) -> VideoResNet:
    """R3D-18: full 3 × 3 × 3 convolutions everywhere."""
    return VideoResNet(BasicBlock, [Conv3DSimple] * 4, [2, 2, 2, 2], BasicStem, num_classes, width)


def mc3_18(num_classes: int = 400, width: int = 64) -> VideoResNet:
    """MC3-18: 3D convolutions in layer1, (1, 3, 3) ones in layers 2-4."""
    return VideoResNet(BasicBlock, [Conv3DSimple] + [Conv3DNoTemporal] * 3, [2, 2, 2, 2], BasicStem, num_classes, width)


def r2plus1d_18(num_classes: int = 400, width: int = 64) -> VideoResNet:
    """R(2+1)D-18: every 3D convolution factorised into spatial then temporal."""
    return VideoResNet(BasicBlock, [Conv2Plus1D] * 4, [2, 2, 2, 2], R2Plus1dStem, num_classes, width)

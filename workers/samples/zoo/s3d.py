"""torchvision's S3D (separable 3D Inception), reduced in width.

Mirrors `torchvision/models/video/s3d.py`: `features` is one nn.Sequential of TemporalSeparableConv
((1, k, k) then (k, 1, 1) Conv3dNormActivation), max pools and SepInceptionBlock3D (four branches
concatenated on channels), then `avgpool`, `classifier = Sequential(Dropout, 1 × 1 × 1 Conv3d)` and a
`torch.mean` over (T, H, W): the head is a convolution, not a Linear. Module paths match the real model
(`features.0.0.0`, `features.5.branch1.1.0.0`, `classifier.1`). Channel counts are torchvision's divided
by `div`; `avgpool_kernel` replaces (2, 7, 7), which fits 64 × 224 × 224 inputs only.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

NormLayer = Callable[..., nn.Module]


class Conv3dNormActivation(nn.Sequential):
    """torchvision.ops.misc.Conv3dNormActivation: Conv3d (no bias when normalised) → norm → ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] | None = None,
        norm_layer: NormLayer = nn.BatchNorm3d,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            padding = tuple((k - 1) // 2 for k in kernel_size) if isinstance(kernel_size, tuple) else (kernel_size - 1) // 2
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding, bias=bool(bias) if bias is not None else False),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
        )
        self.out_channels = out_channels


class TemporalSeparableConv(nn.Sequential):
    """A k × k × k convolution factorised into (1, k, k) and (k, 1, 1), each normalised and rectified."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int, padding: int, norm_layer: NormLayer) -> None:
        super().__init__(
            Conv3dNormActivation(
                in_planes, out_planes, kernel_size=(1, kernel_size, kernel_size), stride=(1, stride, stride),
                padding=(0, padding, padding), bias=False, norm_layer=norm_layer,
            ),
            Conv3dNormActivation(
                out_planes, out_planes, kernel_size=(kernel_size, 1, 1), stride=(stride, 1, 1),
                padding=(padding, 0, 0), bias=False, norm_layer=norm_layer,
            ),
        )


class SepInceptionBlock3D(nn.Module):
    """Four branches (1 × 1; 1 × 1 → separable 3; 1 × 1 → separable 3; max pool → 1 × 1) concatenated."""

    def __init__(
        self, in_planes: int, b0_out: int, b1_mid: int, b1_out: int, b2_mid: int, b2_out: int, b3_out: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        self.branch0 = Conv3dNormActivation(in_planes, b0_out, kernel_size=1, stride=1, norm_layer=norm_layer)
        self.branch1 = nn.Sequential(
            Conv3dNormActivation(in_planes, b1_mid, kernel_size=1, stride=1, norm_layer=norm_layer),
            TemporalSeparableConv(b1_mid, b1_out, kernel_size=3, stride=1, padding=1, norm_layer=norm_layer),
        )
        self.branch2 = nn.Sequential(
            Conv3dNormActivation(in_planes, b2_mid, kernel_size=1, stride=1, norm_layer=norm_layer),
            TemporalSeparableConv(b2_mid, b2_out, kernel_size=3, stride=1, padding=1, norm_layer=norm_layer),
        )
        self.branch3 = nn.Sequential(
            nn.MaxPool3d(kernel_size=(3, 3, 3), stride=1, padding=1),
            Conv3dNormActivation(in_planes, b3_out, kernel_size=1, stride=1, norm_layer=norm_layer),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.branch0(x)
        x1 = self.branch1(x)
        x2 = self.branch2(x)
        x3 = self.branch3(x)
        return torch.cat((x0, x1, x2, x3), 1)


class S3D(nn.Module):
    """features → avgpool → classifier (Dropout, 1 × 1 × 1 Conv3d) → mean over (T, H, W)."""

    def __init__(
        self,
        num_classes: int = 400,
        dropout: float = 0.2,
        div: int = 1,
        avgpool_kernel: tuple[int, int, int] = (2, 7, 7),
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.BatchNorm3d, eps=0.001, momentum=0.001)

        def c(n: int) -> int:
            return n // div

        def inception(*sizes: int) -> SepInceptionBlock3D:
            return SepInceptionBlock3D(*(c(s) for s in sizes), norm_layer=norm_layer)  # type: ignore[misc]

        self.features = nn.Sequential(
            TemporalSeparableConv(3, c(64), 7, 2, 3, norm_layer),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            Conv3dNormActivation(c(64), c(64), kernel_size=1, stride=1, norm_layer=norm_layer),
            TemporalSeparableConv(c(64), c(192), 3, 1, 1, norm_layer),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            inception(192, 64, 96, 128, 16, 32, 32),
            inception(256, 128, 128, 192, 32, 96, 64),
            nn.MaxPool3d(kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1)),
            inception(480, 192, 96, 208, 16, 48, 64),
            inception(512, 160, 112, 224, 24, 64, 64),
            inception(512, 128, 128, 256, 24, 64, 64),
            inception(512, 112, 144, 288, 32, 64, 64),
            inception(528, 256, 160, 320, 32, 128, 128),
            nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(0, 0, 0)),
            inception(832, 256, 160, 320, 32, 128, 128),
            inception(832, 384, 192, 384, 48, 128, 128),
        )
        self.avgpool = nn.AvgPool3d(kernel_size=avgpool_kernel, stride=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Conv3d(c(1024), num_classes, kernel_size=1, stride=1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = self.classifier(x)
        x = torch.mean(x, dim=(2, 3, 4))
        return x


def s3d(num_classes: int = 400, div: int = 8, avgpool_kernel: tuple[int, int, int] = (1, 1, 1)) -> S3D:
    """S3D with channels / `div` for 16 × 32 × 32 clips: the features end at 2 × 1 × 1, so the pool is 1 × 1 × 1 and
    the mean over (T, H, W) still averages time, as the real model's does after its (2, 7, 7) pool."""
    return S3D(num_classes=num_classes, div=div, avgpool_kernel=avgpool_kernel)

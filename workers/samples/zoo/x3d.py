"""pytorchvideo's X3D (create_x3d, as x3d_xs / x3d_s build it), reduced in width and depth.

Mirrors `pytorchvideo/models/x3d.py`: the stem is a Conv2plus1d of a (1, 3, 3) conv and a depthwise (5, 1, 1)
conv (pytorchvideo passes them as `conv_t=` the spatial one and `conv_xy=` the temporal one, so the paths
read the other way round: `blocks.0.conv.conv_t` is spatial); each stage's BottleneckBlock has a depthwise
3 × 3 × 3 `conv_b`, `norm_b = Sequential(BatchNorm3d, SqueezeExcitation)` on every other block (fvcore's SE:
mean over (T, H, W), 1 × 1 × 1 conv, ReLU, 1 × 1 × 1 conv, Sigmoid, multiply) and Swish (x·sigmoid(x)) as
`act_b`; the head is a ResNetBasicHead whose `pool` is a ProjectedPool (1 × 1 × 1 conv, BN, ReLU, AvgPool3d,
1 × 1 × 1 conv, ReLU), with `proj` a Linear on channels-last and a Softmax over classes before the output
pool, as X3D's Kinetics head applies it at inference. Widths follow pytorchvideo's round_width rules from
`stem_dim_in` (12 in X3D) and `width_factor`; `depth_factor` scales the (1, 2, 5, 3) stage depths.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from workers.samples.zoo.resnet3d import (
    BottleneckBlock,
    Net,
    ResBlock,
    ResNetBasicHead,
    ResNetBasicStem,
    ResStage,
    set_attributes,
)

Size3 = tuple[int, int, int]


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """pytorchvideo.layers.utils.round_width."""
    if not multiplier:
        return int(width)
    width *= multiplier
    width_out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if width_out < 0.9 * width:
        width_out += divisor
    return int(width_out)


def round_repeats(repeats: int, multiplier: float) -> int:
    """pytorchvideo.layers.utils.round_repeats."""
    return repeats if not multiplier else int(math.ceil(multiplier * repeats))


class Swish(nn.Module):
    """x · sigmoid(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class SqueezeExcitation(nn.Module):
    """fvcore.nn.squeeze_excitation.SqueezeExcitation (3D): channel gates from the (T, H, W) mean."""

    def __init__(self, num_channels: int, num_channels_reduced: int, is_3d: bool = True) -> None:
        super().__init__()
        self.is_3d = is_3d
        self.block = nn.Sequential(
            nn.Conv3d(num_channels, num_channels_reduced, kernel_size=1, bias=True),
            nn.ReLU(),
            nn.Conv3d(num_channels_reduced, num_channels, kernel_size=1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        mean_tensor = input_tensor.mean(dim=[2, 3, 4], keepdim=True)
        return torch.mul(input_tensor, self.block(mean_tensor))


class Conv2plus1d(nn.Module):
    """conv_t → norm → activation → conv_xy (whatever the two convs really are)."""

    def __init__(
        self,
        *,
        conv_t: nn.Module,
        norm: nn.Module | None = None,
        activation: nn.Module | None = None,
        conv_xy: nn.Module,
        conv_xy_first: bool = False,
    ) -> None:
        super().__init__()
        set_attributes(self, locals())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_xy(x) if self.conv_xy_first else self.conv_t(x)
        x = self.norm(x) if self.norm else x
        x = self.activation(x) if self.activation else x
        x = self.conv_t(x) if self.conv_xy_first else self.conv_xy(x)
        return x


def create_x3d_stem(*, in_channels: int, out_channels: int, conv_kernel_size: Size3 = (5, 3, 3), conv_stride: Size3 = (1, 2, 2)) -> ResNetBasicStem:
    padding = [size // 2 for size in conv_kernel_size]
    conv_xy_module = nn.Conv3d(
        in_channels, out_channels, kernel_size=(1, conv_kernel_size[1], conv_kernel_size[2]),
        stride=(1, conv_stride[1], conv_stride[2]), padding=(0, padding[1], padding[2]), bias=False,
    )
    conv_t_module = nn.Conv3d(
        out_channels, out_channels, kernel_size=(conv_kernel_size[0], 1, 1), stride=(conv_stride[0], 1, 1),
        padding=(padding[0], 0, 0), bias=False, groups=out_channels,
    )
    return ResNetBasicStem(
        conv=Conv2plus1d(conv_t=conv_xy_module, norm=None, activation=None, conv_xy=conv_t_module),
        norm=nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.1),
        activation=nn.ReLU(),
        pool=None,
    )


def create_x3d_bottleneck_block(
    *, dim_in: int, dim_inner: int, dim_out: int, conv_kernel_size: Size3 = (3, 3, 3), conv_stride: Size3 = (1, 2, 2), se_ratio: float = 0.0625
) -> BottleneckBlock:
    se: nn.Module = (
        SqueezeExcitation(num_channels=dim_inner, num_channels_reduced=round_width(dim_inner, se_ratio), is_3d=True)
        if se_ratio > 0.0
        else nn.Identity()
    )
    return BottleneckBlock(
        conv_a=nn.Conv3d(dim_in, dim_inner, kernel_size=(1, 1, 1), bias=False),
        norm_a=nn.BatchNorm3d(dim_inner, eps=1e-5, momentum=0.1),
        act_a=nn.ReLU(),
        conv_b=nn.Conv3d(
            dim_inner, dim_inner, kernel_size=conv_kernel_size, stride=conv_stride,
            padding=[size // 2 for size in conv_kernel_size], bias=False, groups=dim_inner, dilation=(1, 1, 1),
        ),
        norm_b=nn.Sequential(nn.BatchNorm3d(dim_inner, eps=1e-5, momentum=0.1), se),
        act_b=Swish(),
        conv_c=nn.Conv3d(dim_inner, dim_out, kernel_size=(1, 1, 1), bias=False),
        norm_c=nn.BatchNorm3d(dim_out, eps=1e-5, momentum=0.1),
    )


def create_x3d_res_block(
    *, dim_in: int, dim_inner: int, dim_out: int, conv_kernel_size: Size3 = (3, 3, 3), conv_stride: Size3 = (1, 2, 2), se_ratio: float = 0.0625
) -> ResBlock:
    projected = dim_in != dim_out or np.prod(conv_stride) > 1
    return ResBlock(
        branch1_conv=nn.Conv3d(dim_in, dim_out, kernel_size=(1, 1, 1), stride=conv_stride, bias=False) if projected else None,
        branch1_norm=nn.BatchNorm3d(dim_out) if dim_in != dim_out else None,
        branch2=create_x3d_bottleneck_block(
            dim_in=dim_in, dim_inner=dim_inner, dim_out=dim_out, conv_kernel_size=conv_kernel_size,
            conv_stride=conv_stride, se_ratio=se_ratio,
        ),
        activation=nn.ReLU(),
        branch_fusion=lambda x, y: x + y,
    )


def create_x3d_res_stage(
    *, depth: int, dim_in: int, dim_inner: int, dim_out: int, conv_kernel_size: Size3 = (3, 3, 3), conv_stride: Size3 = (1, 2, 2), se_ratio: float = 0.0625
) -> ResStage:
    """`depth` blocks; squeeze-excitation on the 1st, 3rd, ... block only."""
    blocks = [
        create_x3d_res_block(
            dim_in=dim_in if idx == 0 else dim_out, dim_inner=dim_inner, dim_out=dim_out, conv_kernel_size=conv_kernel_size,
            conv_stride=conv_stride if idx == 0 else (1, 1, 1), se_ratio=se_ratio if (idx + 1) % 2 else 0.0,
        )
        for idx in range(depth)
    ]
    return ResStage(res_blocks=nn.ModuleList(blocks))


class ProjectedPool(nn.Module):
    """pre_conv → pre_norm → pre_act → pool → post_conv → post_norm → post_act."""

    def __init__(
        self,
        *,
        pre_conv: nn.Module,
        pre_norm: nn.Module | None = None,
        pre_act: nn.Module | None = None,
        pool: nn.Module,
        post_conv: nn.Module,
        post_norm: nn.Module | None = None,
        post_act: nn.Module | None = None,
    ) -> None:
        super().__init__()
        set_attributes(self, locals())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_conv(x)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        if self.pre_act is not None:
            x = self.pre_act(x)
        x = self.pool(x)
        x = self.post_conv(x)
        if self.post_norm is not None:
            x = self.post_norm(x)
        if self.post_act is not None:
            x = self.post_act(x)
        return x


def create_x3d_head(
    *,
    dim_in: int,
    dim_inner: int,
    dim_out: int,
    num_classes: int,
    pool_kernel_size: Size3,
    dropout_rate: float = 0.5,
    activation: Callable[..., nn.Module] | None = nn.Softmax,
) -> ResNetBasicHead:
    projected_pool = ProjectedPool(
        pre_conv=nn.Conv3d(dim_in, dim_inner, kernel_size=(1, 1, 1), bias=False),
        pre_norm=nn.BatchNorm3d(dim_inner, eps=1e-5, momentum=0.1),
        pre_act=nn.ReLU(),
        pool=nn.AvgPool3d(pool_kernel_size, stride=1),
        post_conv=nn.Conv3d(dim_inner, dim_out, kernel_size=(1, 1, 1), bias=False),
        post_norm=None,
        post_act=nn.ReLU(),
    )
    return ResNetBasicHead(
        proj=nn.Linear(dim_out, num_classes, bias=True),
        activation=None if activation is None else activation(dim=1),
        pool=projected_pool,
        dropout=nn.Dropout(dropout_rate) if dropout_rate > 0 else None,
        output_pool=nn.AdaptiveAvgPool3d(1),
    )


def create_x3d(
    *,
    input_clip_length: int = 13,
    input_crop_size: int = 160,
    model_num_class: int = 400,
    dropout_rate: float = 0.5,
    width_factor: float = 2.0,
    depth_factor: float = 2.2,
    stem_dim_in: int = 12,
    bottleneck_factor: float = 2.25,
    se_ratio: float = 0.0625,
    head_dim_out: int = 2048,
    head_activation: Callable[..., nn.Module] | None = nn.Softmax,
) -> Net:
    """pytorchvideo.models.x3d.create_x3d (defaults: X3D-S)."""
    stem_dim_out = round_width(stem_dim_in, width_factor)
    blocks: list[nn.Module] = [create_x3d_stem(in_channels=3, out_channels=stem_dim_out)]
    stage_depths = [1, 2, 5, 3]
    stage_dim1 = stem_dim_in
    stage_dim2 = round_width(stage_dim1, 2.0, divisor=8)
    stage_dim3 = round_width(stage_dim2, 2.0, divisor=8)
    stage_dim4 = round_width(stage_dim3, 2.0, divisor=8)
    stage_dims = [stage_dim1, stage_dim2, stage_dim3, stage_dim4]
    dim_in = stem_dim_out
    dim_inner = dim_out = dim_in
    for idx in range(len(stage_depths)):
        dim_out = round_width(stage_dims[idx], width_factor)
        dim_inner = int(bottleneck_factor * dim_out)
        blocks.append(
            create_x3d_res_stage(
                depth=round_repeats(stage_depths[idx], depth_factor), dim_in=dim_in, dim_inner=dim_inner, dim_out=dim_out,
                conv_kernel_size=(3, 3, 3), conv_stride=(1, 2, 2), se_ratio=se_ratio,
            )
        )
        dim_in = dim_out
    total_spatial_stride = 2 * 2**4
    head_pool_kernel_size = (
        input_clip_length,
        int(math.ceil(input_crop_size / total_spatial_stride)),
        int(math.ceil(input_crop_size / total_spatial_stride)),
    )
    blocks.append(
        create_x3d_head(
            dim_in=dim_out, dim_inner=dim_inner, dim_out=head_dim_out, num_classes=model_num_class,
            pool_kernel_size=head_pool_kernel_size, dropout_rate=dropout_rate, activation=head_activation,
        )
    )
    return Net(blocks=nn.ModuleList(blocks))


def x3d(num_classes: int = 400, clip_length: int = 8, crop_size: int = 32, stem_dim_in: int = 4, depth_factor: float = 0.5, head_dim_out: int = 64) -> Net:
    """A reduced X3D: by default stages of depth (1, 1, 3, 2), widths 8-64, a 64-wide head projection."""
    return create_x3d(
        input_clip_length=clip_length, input_crop_size=crop_size, model_num_class=num_classes,
        stem_dim_in=stem_dim_in, depth_factor=depth_factor, head_dim_out=head_dim_out,
    )

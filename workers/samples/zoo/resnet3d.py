"""pytorchvideo's 3D ResNets: Slow (slow_r50), I3D (i3d_r50) and CSN (create_csn), reduced in width and depth.

Mirrors `pytorchvideo/models/{net,stem,resnet,head,csn}.py`: a `Net` whose `blocks` ModuleList holds a
ResNetBasicStem (`conv`, `norm`, `activation`, `pool`), ResStages (`res_blocks.N` of ResBlock with
`branch1_conv`, `branch1_norm`, `branch2` = BottleneckBlock `conv_a/norm_a/act_a/conv_b/.../norm_c`,
`activation`) and a ResNetBasicHead (`pool`, `dropout`, `proj`: a Linear applied channels-last between two
permutes, an optional `activation`, `output_pool`, then `x.view(x.shape[0], -1)`). Module paths are
pytorchvideo's (`blocks.0.conv`, `blocks.2.res_blocks.0.branch2.conv_b`, `blocks.5.proj`).

Slow: (1, 7, 7) stem, (1, 1, 1) conv_a in stages 1-2 and (3, 1, 1) in stages 3-4. I3D: (5, 7, 7) stem, a
(2, 1, 1) max pool after stage 1 and (3, 1, 1) / (1, 1, 1) conv_a kernels alternating within stages.
CSN: channel-separated, every conv_b a depthwise 3 × 3 × 3 (groups = channels), temporal strides in conv_b.
`stem_dim_out` stands for 64 (stage widths follow pytorchvideo's 4 × / 2 × rule); `stage_depths` for
(3, 4, 6, 3). Head pool kernels are the final feature size of the reduced input instead of (8, 7, 7).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

Size3 = tuple[int, int, int]


def set_attributes(module: nn.Module, params: dict[str, Any]) -> None:
    """pytorchvideo.layers.utils.set_attributes: every constructor argument becomes an attribute (None too)."""
    for key, value in params.items():
        if key not in ("self", "__class__"):
            setattr(module, key, value)


def init_net_weights(model: nn.Module, fc_init_std: float = 0.01) -> nn.Module:
    """pytorchvideo's "resnet" init: MSRA fill for convs, BN weight 1 (0 for a block's final BN), bias 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            if m.weight is not None:
                m.weight.data.fill_(0.0 if getattr(m, "block_final_bn", False) else 1.0)
            if m.bias is not None:
                m.bias.data.zero_()
        if isinstance(m, nn.Linear):
            m.weight.data.normal_(mean=0.0, std=fc_init_std)
            if m.bias is not None:
                m.bias.data.zero_()
    return model


class Net(nn.Module):
    """Runs `blocks` in order."""

    def __init__(self, *, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.blocks = blocks
        init_net_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, block in enumerate(self.blocks):
            x = block(x)
        return x


class ResNetBasicStem(nn.Module):
    """conv → norm → activation → pool (each optional but conv)."""

    def __init__(self, *, conv: nn.Module, norm: nn.Module | None = None, activation: nn.Module | None = None, pool: nn.Module | None = None) -> None:
        super().__init__()
        set_attributes(self, locals())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        if self.pool is not None:
            x = self.pool(x)
        return x


def create_res_basic_stem(
    *,
    in_channels: int,
    out_channels: int,
    conv_kernel_size: Size3 = (3, 7, 7),
    conv_stride: Size3 = (1, 2, 2),
    conv_padding: Sequence[int] = (1, 3, 3),
    pool: Callable[..., nn.Module] | None = nn.MaxPool3d,
    pool_kernel_size: Size3 = (1, 3, 3),
    pool_stride: Size3 = (1, 2, 2),
    pool_padding: Sequence[int] = (0, 1, 1),
    norm: Callable[..., nn.Module] | None = nn.BatchNorm3d,
    activation: Callable[..., nn.Module] | None = nn.ReLU,
) -> ResNetBasicStem:
    return ResNetBasicStem(
        conv=nn.Conv3d(in_channels, out_channels, kernel_size=conv_kernel_size, stride=conv_stride, padding=tuple(conv_padding), bias=False),
        norm=None if norm is None else norm(num_features=out_channels, eps=1e-5, momentum=0.1),
        activation=None if activation is None else activation(),
        pool=None if pool is None else pool(kernel_size=pool_kernel_size, stride=pool_stride, padding=tuple(pool_padding)),
    )


class BottleneckBlock(nn.Module):
    """conv_a (temporal or 1 × 1) → norm → act → conv_b (spatial) → norm → act → conv_c (1 × 1) → norm."""

    def __init__(
        self,
        *,
        conv_a: nn.Module,
        norm_a: nn.Module | None = None,
        act_a: nn.Module | None = None,
        conv_b: nn.Module,
        norm_b: nn.Module | None = None,
        act_b: nn.Module | None = None,
        conv_c: nn.Module,
        norm_c: nn.Module | None = None,
    ) -> None:
        super().__init__()
        set_attributes(self, locals())
        if self.norm_c is not None:
            self.norm_c.block_final_bn = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_a(x)
        if self.norm_a is not None:
            x = self.norm_a(x)
        if self.act_a is not None:
            x = self.act_a(x)
        x = self.conv_b(x)
        if self.norm_b is not None:
            x = self.norm_b(x)
        if self.act_b is not None:
            x = self.act_b(x)
        x = self.conv_c(x)
        if self.norm_c is not None:
            x = self.norm_c(x)
        return x


def create_bottleneck_block(
    *,
    dim_in: int,
    dim_inner: int,
    dim_out: int,
    conv_a_kernel_size: Sequence[int] = (3, 1, 1),
    conv_a_stride: Sequence[int] = (2, 1, 1),
    conv_a_padding: Sequence[int] = (1, 0, 0),
    conv_b_kernel_size: Sequence[int] = (1, 3, 3),
    conv_b_stride: Sequence[int] = (1, 2, 2),
    conv_b_padding: Sequence[int] = (0, 1, 1),
    conv_b_num_groups: int = 1,
    conv_b_dilation: Sequence[int] = (1, 1, 1),
    norm: Callable[..., nn.Module] | None = nn.BatchNorm3d,
    activation: Callable[..., nn.Module] | None = nn.ReLU,
) -> BottleneckBlock:
    def bn(n: int) -> nn.Module | None:
        return None if norm is None else norm(num_features=n, eps=1e-5, momentum=0.1)

    def act() -> nn.Module | None:
        return None if activation is None else activation()

    return BottleneckBlock(
        conv_a=nn.Conv3d(dim_in, dim_inner, kernel_size=tuple(conv_a_kernel_size), stride=tuple(conv_a_stride), padding=tuple(conv_a_padding), bias=False),
        norm_a=bn(dim_inner),
        act_a=act(),
        conv_b=nn.Conv3d(
            dim_inner, dim_inner, kernel_size=tuple(conv_b_kernel_size), stride=tuple(conv_b_stride), padding=tuple(conv_b_padding),
            bias=False, groups=conv_b_num_groups, dilation=tuple(conv_b_dilation),
        ),
        norm_b=bn(dim_inner),
        act_b=act(),
        conv_c=nn.Conv3d(dim_inner, dim_out, kernel_size=(1, 1, 1), bias=False),
        norm_c=bn(dim_out),
    )


def _trivial_sum(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + y


class ResBlock(nn.Module):
    """branch_fusion(shortcut (branch1_conv → branch1_norm, or identity), branch2(x)) → activation."""

    def __init__(
        self,
        branch1_conv: nn.Module | None = None,
        branch1_norm: nn.Module | None = None,
        branch2: nn.Module | None = None,
        activation: nn.Module | None = None,
        branch_fusion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        set_attributes(self, locals())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1_conv is None:
            x = self.branch_fusion(x, self.branch2(x))
        else:
            shortcut = self.branch1_conv(x)
            if self.branch1_norm is not None:
                shortcut = self.branch1_norm(shortcut)
            x = self.branch_fusion(shortcut, self.branch2(x))
        if self.activation is not None:
            x = self.activation(x)
        return x


class ResStage(nn.Module):
    """res_blocks in order."""

    def __init__(self, res_blocks: nn.ModuleList) -> None:
        super().__init__()
        self.res_blocks = res_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, res_block in enumerate(self.res_blocks):
            x = res_block(x)
        return x


def create_res_block(
    *,
    dim_in: int,
    dim_inner: int,
    dim_out: int,
    bottleneck: Callable[..., nn.Module],
    conv_a_kernel_size: Sequence[int],
    conv_a_stride: Sequence[int],
    conv_a_padding: Sequence[int],
    conv_b_kernel_size: Sequence[int],
    conv_b_stride: Sequence[int],
    conv_b_padding: Sequence[int],
    conv_b_num_groups: int = 1,
    conv_b_dilation: Sequence[int] = (1, 1, 1),
    norm: Callable[..., nn.Module] | None = nn.BatchNorm3d,
    activation: Callable[..., nn.Module] | None = nn.ReLU,
) -> ResBlock:
    branch1_conv_stride = tuple(a * b for a, b in zip(conv_a_stride, conv_b_stride))
    projected = dim_in != dim_out or np.prod(branch1_conv_stride) != 1
    return ResBlock(
        branch1_conv=nn.Conv3d(dim_in, dim_out, kernel_size=(1, 1, 1), stride=branch1_conv_stride, bias=False) if projected else None,
        branch1_norm=norm(num_features=dim_out, eps=1e-5, momentum=0.1) if projected and norm is not None else None,
        branch2=bottleneck(
            dim_in=dim_in, dim_inner=dim_inner, dim_out=dim_out,
            conv_a_kernel_size=conv_a_kernel_size, conv_a_stride=conv_a_stride, conv_a_padding=conv_a_padding,
            conv_b_kernel_size=conv_b_kernel_size, conv_b_stride=conv_b_stride, conv_b_padding=conv_b_padding,
            conv_b_num_groups=conv_b_num_groups, conv_b_dilation=conv_b_dilation, norm=norm, activation=activation,
        ),
        activation=None if activation is None else activation(),
        branch_fusion=_trivial_sum,
    )


def create_res_stage(
    *,
    depth: int,
    dim_in: int,
    dim_inner: int,
    dim_out: int,
    bottleneck: Callable[..., nn.Module] = create_bottleneck_block,
    conv_a_kernel_size: Any = (3, 1, 1),
    conv_a_stride: Sequence[int] = (2, 1, 1),
    conv_a_padding: Any = (1, 0, 0),
    conv_b_kernel_size: Sequence[int] = (1, 3, 3),
    conv_b_stride: Sequence[int] = (1, 2, 2),
    conv_b_padding: Sequence[int] = (0, 1, 1),
    conv_b_num_groups: int = 1,
    conv_b_dilation: Sequence[int] = (1, 1, 1),
    norm: Callable[..., nn.Module] | None = nn.BatchNorm3d,
    activation: Callable[..., nn.Module] | None = nn.ReLU,
) -> ResStage:
    """`depth` ResBlocks; only the first strides. conv_a kernels may be one size or a list cycled over blocks."""
    if isinstance(conv_a_kernel_size[0], int):
        conv_a_kernel_size = [conv_a_kernel_size]
    if isinstance(conv_a_padding[0], int):
        conv_a_padding = [conv_a_padding]
    conv_a_kernel_size = (list(conv_a_kernel_size) * depth)[:depth]
    conv_a_padding = (list(conv_a_padding) * depth)[:depth]
    blocks = [
        create_res_block(
            dim_in=dim_in if ind == 0 else dim_out, dim_inner=dim_inner, dim_out=dim_out, bottleneck=bottleneck,
            conv_a_kernel_size=conv_a_kernel_size[ind], conv_a_stride=conv_a_stride if ind == 0 else (1, 1, 1),
            conv_a_padding=conv_a_padding[ind], conv_b_kernel_size=conv_b_kernel_size,
            conv_b_stride=conv_b_stride if ind == 0 else (1, 1, 1), conv_b_padding=conv_b_padding,
            conv_b_num_groups=conv_b_num_groups, conv_b_dilation=conv_b_dilation, norm=norm, activation=activation,
        )
        for ind in range(depth)
    ]
    return ResStage(res_blocks=nn.ModuleList(blocks))


class ResNetBasicHead(nn.Module):
    """pool → dropout → proj (Linear on channels-last) → activation → output_pool → view(N, -1)."""

    def __init__(
        self,
        pool: nn.Module | None = None,
        dropout: nn.Module | None = None,
        proj: nn.Module | None = None,
        activation: nn.Module | None = None,
        output_pool: nn.Module | None = None,
    ) -> None:
        super().__init__()
        set_attributes(self, locals())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        if self.proj is not None:
            x = x.permute((0, 2, 3, 4, 1))
            x = self.proj(x)
            x = x.permute((0, 4, 1, 2, 3))
        if self.activation is not None:
            x = self.activation(x)
        if self.output_pool is not None:
            x = self.output_pool(x)
            x = x.view(x.shape[0], -1)
        return x


def create_res_basic_head(
    *,
    in_features: int,
    out_features: int,
    pool: Callable[..., nn.Module] | None = nn.AvgPool3d,
    pool_kernel_size: Size3 = (1, 7, 7),
    dropout_rate: float = 0.5,
    activation: Callable[..., nn.Module] | None = None,
) -> ResNetBasicHead:
    return ResNetBasicHead(
        proj=nn.Linear(in_features, out_features),
        activation=None if activation is None else (activation(dim=1) if activation is nn.Softmax else activation()),
        pool=None if pool is None else pool(kernel_size=pool_kernel_size, stride=(1, 1, 1), padding=(0, 0, 0)),
        dropout=nn.Dropout(dropout_rate) if dropout_rate > 0 else None,
        output_pool=nn.AdaptiveAvgPool3d(1),
    )


def create_resnet(
    *,
    model_num_class: int = 400,
    dropout_rate: float = 0.5,
    stem_dim_out: int = 64,
    stem_conv_kernel_size: Size3 = (3, 7, 7),
    stage1_pool: Callable[..., nn.Module] | None = None,
    stage1_pool_kernel_size: Size3 = (2, 1, 1),
    stage_conv_a_kernel_size: Any = ((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)),
    stage_depths: Sequence[int] = (3, 4, 6, 3),
    stage_spatial_stride: Sequence[int] = (1, 2, 2, 2),
    head_pool_kernel_size: Size3 = (4, 7, 7),
) -> Net:
    """pytorchvideo.models.resnet.create_resnet (ResNet-50 bottlenecks by default)."""
    blocks: list[nn.Module] = [
        create_res_basic_stem(
            in_channels=3, out_channels=stem_dim_out, conv_kernel_size=stem_conv_kernel_size,
            conv_padding=[size // 2 for size in stem_conv_kernel_size], pool_padding=(0, 1, 1),
        )
    ]
    stage_dim_in = stem_dim_out
    stage_dim_out = stage_dim_in * 4
    for idx, depth in enumerate(stage_depths):
        kernel = stage_conv_a_kernel_size[idx]
        padding = [size // 2 for size in kernel] if isinstance(kernel[0], int) else [[size // 2 for size in sizes] for sizes in kernel]
        blocks.append(
            create_res_stage(
                depth=depth, dim_in=stage_dim_in, dim_inner=stage_dim_out // 4, dim_out=stage_dim_out,
                conv_a_kernel_size=kernel, conv_a_stride=(1, 1, 1), conv_a_padding=padding,
                conv_b_kernel_size=(1, 3, 3), conv_b_stride=(1, stage_spatial_stride[idx], stage_spatial_stride[idx]),
                conv_b_padding=(0, 1, 1),
            )
        )
        stage_dim_in = stage_dim_out
        stage_dim_out = stage_dim_out * 2
        if idx == 0 and stage1_pool is not None:
            blocks.append(stage1_pool(kernel_size=stage1_pool_kernel_size, stride=stage1_pool_kernel_size, padding=(0, 0, 0)))
    blocks.append(
        create_res_basic_head(
            in_features=stage_dim_in, out_features=model_num_class, pool=nn.AvgPool3d,
            pool_kernel_size=head_pool_kernel_size, dropout_rate=dropout_rate,
        )
    )
    return Net(blocks=nn.ModuleList(blocks))


def slow_r50(num_classes: int = 400, stem_dim_out: int = 64, stage_depths: Sequence[int] = (3, 4, 6, 3), head_pool_kernel_size: Size3 = (8, 7, 7)) -> Net:
    """pytorchvideo.models.hub.slow_r50: (1, 7, 7) stem, temporal (3, 1, 1) conv_a from stage 3 on."""
    return create_resnet(
        model_num_class=num_classes, stem_dim_out=stem_dim_out, stem_conv_kernel_size=(1, 7, 7),
        stage_depths=stage_depths, head_pool_kernel_size=head_pool_kernel_size,
    )


def i3d_r50(num_classes: int = 400, stem_dim_out: int = 64, stage_depths: Sequence[int] = (3, 4, 6, 3), head_pool_kernel_size: Size3 = (4, 7, 7)) -> Net:
    """pytorchvideo.models.hub.i3d_r50: (5, 7, 7) stem, a temporal max pool after stage 1, alternating conv_a."""
    return create_resnet(
        model_num_class=num_classes, stem_dim_out=stem_dim_out, stem_conv_kernel_size=(5, 7, 7), stage1_pool=nn.MaxPool3d,
        stage_conv_a_kernel_size=((3, 1, 1), [(3, 1, 1), (1, 1, 1)], [(3, 1, 1), (1, 1, 1)], [(1, 1, 1), (3, 1, 1)]),
        stage_depths=stage_depths, head_pool_kernel_size=head_pool_kernel_size,
    )


def create_csn(
    *,
    model_num_class: int = 400,
    dropout_rate: float = 0.0,
    stem_dim_out: int = 64,
    stage_depths: Sequence[int] = (3, 4, 6, 3),
    stage_spatial_stride: Sequence[int] = (1, 2, 2, 2),
    stage_temporal_stride: Sequence[int] = (1, 2, 2, 2),
    bottleneck_ratio: int = 4,
    head_pool_kernel_size: Size3 = (1, 7, 7),
) -> Net:
    """pytorchvideo.models.csn.create_csn: (3, 7, 7) stem without pool, depthwise 3 × 3 × 3 conv_b."""
    blocks: list[nn.Module] = [
        create_res_basic_stem(in_channels=3, out_channels=stem_dim_out, conv_kernel_size=(3, 7, 7), conv_padding=(1, 3, 3), pool=None)
    ]
    stage_dim_in = stem_dim_out
    stage_dim_out = stage_dim_in * 4
    for idx, depth in enumerate(stage_depths):
        dim_inner = stage_dim_out // bottleneck_ratio
        blocks.append(
            create_res_stage(
                depth=depth, dim_in=stage_dim_in, dim_inner=dim_inner, dim_out=stage_dim_out,
                conv_a_kernel_size=(1, 1, 1), conv_a_stride=(1, 1, 1), conv_a_padding=[0, 0, 0],
                conv_b_kernel_size=(3, 3, 3),
                conv_b_stride=(stage_temporal_stride[idx], stage_spatial_stride[idx], stage_spatial_stride[idx]),
                conv_b_padding=[1, 1, 1], conv_b_num_groups=dim_inner, conv_b_dilation=(1, 1, 1),
            )
        )
        stage_dim_in = stage_dim_out
        stage_dim_out = stage_dim_out * 2
    blocks.append(
        create_res_basic_head(
            in_features=stage_dim_in, out_features=model_num_class, pool=nn.AvgPool3d,
            pool_kernel_size=head_pool_kernel_size, dropout_rate=dropout_rate,
        )
    )
    return Net(blocks=nn.ModuleList(blocks))


def csn_r50(num_classes: int = 400, stem_dim_out: int = 64, stage_depths: Sequence[int] = (3, 4, 6, 3), head_pool_kernel_size: Size3 = (1, 7, 7)) -> Net:
    """create_csn with ResNet-50 depths."""
    return create_csn(model_num_class=num_classes, stem_dim_out=stem_dim_out, stage_depths=stage_depths, head_pool_kernel_size=head_pool_kernel_size)

"""pytorchvideo's SlowFast (create_slowfast), reduced, with its pathways packed inside the model.

Mirrors `pytorchvideo/models/slowfast.py` and `net.py`: `blocks.0` is a MultiPathWayWithFuse of the two
ResNetBasicStems (slow (1, 7, 7), fast (5, 7, 7) at 1/β of the channels) and a FuseFastToSlow lateral
connection (a (7, 1, 1) conv with temporal stride α on the fast features, concatenated to the slow ones);
`blocks.1..4` are MultiPathWayWithFuse of two ResStages each, fused the same way; `blocks.5` a
PoolConcatPathway (one AvgPool3d per pathway, then concatenation) and `blocks.6` a ResNetBasicHead with no
pool. Module paths are pytorchvideo's (`blocks.0.multipathway_blocks.0.conv`,
`blocks.0.multipathway_fusion.conv_fast_to_slow`, `blocks.6.proj`).

The real model takes a list [slow, fast]; kernelscope analyses one-input models, so `pack` does inside the
model what pytorchvideo's PackPathway transform does to a clip: fast = the clip, slow = α-times fewer frames
picked with index_select at linspace(0, T − 1, T // α).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from workers.samples.zoo.resnet3d import (
    create_res_basic_head,
    create_res_basic_stem,
    create_res_stage,
    init_net_weights,
    set_attributes,
)

Size3 = tuple[int, int, int]


class PackPathway(nn.Module):
    """One clip (N, C, T, H, W) → [slow (N, C, T // alpha, H, W), fast (the clip)]."""

    def __init__(self, alpha: int = 4) -> None:
        super().__init__()
        self.slowfast_alpha = alpha

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        fast_pathway = frames
        index = torch.linspace(0, frames.shape[2] - 1, frames.shape[2] // self.slowfast_alpha, device=frames.device).long()
        slow_pathway = torch.index_select(frames, 2, index)
        return [slow_pathway, fast_pathway]


class MultiPathWayWithFuse(nn.Module):
    """Each pathway through its own block, then the fusion module on the list."""

    def __init__(self, *, multipathway_blocks: nn.ModuleList, multipathway_fusion: nn.Module | None, inplace: bool = True) -> None:
        super().__init__()
        set_attributes(self, locals())

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x_out = x if self.inplace else [None] * len(x)
        for pathway_idx in range(len(self.multipathway_blocks)):
            if self.multipathway_blocks[pathway_idx] is not None:
                x_out[pathway_idx] = self.multipathway_blocks[pathway_idx](x[pathway_idx])
        if self.multipathway_fusion is not None:
            x_out = self.multipathway_fusion(x_out)
        return x_out


class FuseFastToSlow(nn.Module):
    """Lateral connection: conv_fast_to_slow(fast) → norm → activation, concatenated to the slow pathway."""

    def __init__(self, conv_fast_to_slow: nn.Module, norm: nn.Module | None = None, activation: nn.Module | None = None) -> None:
        super().__init__()
        set_attributes(self, locals())

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x_s = x[0]
        x_f = x[1]
        fuse = self.conv_fast_to_slow(x_f)
        if self.norm is not None:
            fuse = self.norm(fuse)
        if self.activation is not None:
            fuse = self.activation(fuse)
        x_s_fuse = torch.cat([x_s, fuse], 1)
        return [x_s_fuse, x_f]


class PoolConcatPathway(nn.Module):
    """Pool each pathway, concatenate on channels."""

    def __init__(self, retain_list: bool = False, pool: nn.ModuleList | None = None, dim: int = 1) -> None:
        super().__init__()
        set_attributes(self, locals())

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        output = []
        for ind in range(len(x)):
            if x[ind] is not None:
                if self.pool is not None and self.pool[ind] is not None:
                    x[ind] = self.pool[ind](x[ind])
                output.append(x[ind])
        return torch.cat(output, 1)


def _fusion(fusion_dim_in: int, reduction: int, fusion_ratio: int, kernel: Size3, alpha: int) -> FuseFastToSlow:
    conv_dim_in = fusion_dim_in // reduction
    return FuseFastToSlow(
        conv_fast_to_slow=nn.Conv3d(
            conv_dim_in, conv_dim_in * fusion_ratio, kernel_size=kernel, stride=(alpha, 1, 1),
            padding=[k // 2 for k in kernel], bias=False,
        ),
        norm=nn.BatchNorm3d(conv_dim_in * fusion_ratio, eps=1e-5, momentum=0.1),
        activation=nn.ReLU(),
    )


class SlowFast(nn.Module):
    """pack (PackPathway) → blocks (pytorchvideo's Net blocks)."""

    def __init__(self, pack: PackPathway, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.pack = pack
        self.blocks = blocks
        init_net_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor | list[torch.Tensor] = self.pack(x)
        for _, block in enumerate(self.blocks):
            y = block(y)
        assert isinstance(y, torch.Tensor)
        return y


def create_slowfast(
    *,
    model_num_class: int = 400,
    dropout_rate: float = 0.5,
    alpha: int = 4,
    slowfast_channel_reduction_ratio: int = 8,
    slowfast_conv_channel_fusion_ratio: int = 2,
    slowfast_fusion_conv_kernel_size: Size3 = (7, 1, 1),
    stem_dim_out: int = 64,
    stage_depths: Sequence[int] = (3, 4, 6, 3),
    head_pool_kernel_sizes: tuple[Size3, Size3] = ((8, 7, 7), (32, 7, 7)),
) -> SlowFast:
    """pytorchvideo.models.slowfast.create_slowfast (slowfast_r50 defaults), behind a PackPathway."""
    beta = slowfast_channel_reduction_ratio
    stem_dim_outs = (stem_dim_out, stem_dim_out // beta)
    stem_kernels = ((1, 7, 7), (5, 7, 7))
    stems = [
        create_res_basic_stem(
            in_channels=3, out_channels=stem_dim_outs[p], conv_kernel_size=stem_kernels[p],
            conv_padding=[size // 2 for size in stem_kernels[p]], pool_padding=(0, 1, 1),
        )
        for p in range(2)
    ]

    def fusion(dim: int) -> FuseFastToSlow:
        return _fusion(dim, beta, slowfast_conv_channel_fusion_ratio, slowfast_fusion_conv_kernel_size, alpha)

    stages: list[nn.Module] = [MultiPathWayWithFuse(multipathway_blocks=nn.ModuleList(stems), multipathway_fusion=fusion(stem_dim_outs[0]))]
    conv_a_kernels = (((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)), ((3, 1, 1),) * 4)
    spatial_strides = (1, 2, 2, 2)
    stage_dim_in = stem_dim_outs[0]
    stage_dim_out = stage_dim_in * 4
    for idx, depth in enumerate(stage_depths):
        dims_in = [stage_dim_in + stage_dim_in * slowfast_conv_channel_fusion_ratio // beta, stage_dim_in // beta]
        dims_inner = [stage_dim_out // 4, stage_dim_out // 4 // beta]
        dims_out = [stage_dim_out, stage_dim_out // beta]
        pathway_stages = [
            create_res_stage(
                depth=depth, dim_in=dims_in[p], dim_inner=dims_inner[p], dim_out=dims_out[p],
                conv_a_kernel_size=conv_a_kernels[p][idx], conv_a_stride=(1, 1, 1),
                conv_a_padding=[size // 2 for size in conv_a_kernels[p][idx]],
                conv_b_kernel_size=(1, 3, 3), conv_b_stride=(1, spatial_strides[idx], spatial_strides[idx]),
                conv_b_padding=(0, 1, 1),
            )
            for p in range(2)
        ]
        last = idx == len(stage_depths) - 1
        stages.append(
            MultiPathWayWithFuse(
                multipathway_blocks=nn.ModuleList(pathway_stages),
                multipathway_fusion=nn.Identity() if last else fusion(stage_dim_out),
            )
        )
        stage_dim_in = stage_dim_out
        stage_dim_out = stage_dim_out * 2
    stages.append(
        PoolConcatPathway(
            retain_list=False,
            pool=nn.ModuleList([nn.AvgPool3d(kernel_size=k, stride=(1, 1, 1), padding=(0, 0, 0)) for k in head_pool_kernel_sizes]),
        )
    )
    stages.append(
        create_res_basic_head(
            in_features=stage_dim_in + stage_dim_in // beta, out_features=model_num_class, pool=None, dropout_rate=dropout_rate
        )
    )
    return SlowFast(PackPathway(alpha), nn.ModuleList(stages))


def slowfast_r50(
    num_classes: int = 400,
    stem_dim_out: int = 64,
    stage_depths: Sequence[int] = (3, 4, 6, 3),
    head_pool_kernel_sizes: tuple[Size3, Size3] = ((8, 7, 7), (32, 7, 7)),
) -> SlowFast:
    """pytorchvideo.models.hub.slowfast_r50 (α = 4, β = 8, (7, 1, 1) fusion)."""
    return create_slowfast(
        model_num_class=num_classes, stem_dim_out=stem_dim_out, stage_depths=stage_depths, head_pool_kernel_sizes=head_pool_kernel_sizes
    )

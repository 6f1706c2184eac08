"""torchvision's video transformers, Swin3D and MViT (v2), reduced in width, depth and input.

Swin3D mirrors `torchvision/models/video/swin_transformer.py` (and the 2D file's SwinTransformerBlock,
PatchMerging, MLP): a Conv3d patch embedding (`patch_embed.proj`) then channels-last tokens (B, T, H, W, C);
each block's ShiftedWindowAttention3d pads to whole windows, shifts with `torch.roll`, partitions windows
with view/permute/reshape, adds a relative position bias gathered from a table by a buffered index, and on
shifted blocks adds an attention mask built by slice assignment into `x.new_zeros(...)`; PatchMerging
concatenates the four 2 × 2 neighbours (strided slices) before a LayerNorm and a Linear; the head is
LayerNorm → permute → AdaptiveAvgPool3d → flatten → `head`.

MViT mirrors `torchvision/models/video/mvit.py` with mvit_v2_s's switches (residual pooling without the class
token, relative positions, projection after attention): `conv_proj` embeds patches, a class token is
prepended, and each MultiscaleAttention pools q, k and v with depthwise Conv3d whose input folds the heads
into the batch (`reshape((B * heads, head_dim, T, H, W))`), adds decomposed relative positions (two einsums
and a matmul, then `attn[:, :, 1:, 1:] += rel_pos`) and the pooled q as a residual; the head reads the class
token through Dropout and a Linear (`head.1`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ============================================================== shared (torchvision.ops)


class MLP(nn.Sequential):
    """torchvision.ops.misc.MLP: Linear → activation → Dropout for each hidden size, then Linear → Dropout."""

    def __init__(self, in_channels: int, hidden_channels: Sequence[int], activation_layer: Callable[..., nn.Module] = nn.GELU, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        in_dim = in_channels
        for hidden_dim in hidden_channels[:-1]:
            layers += [nn.Linear(in_dim, hidden_dim, bias=True), activation_layer(), nn.Dropout(dropout)]
            in_dim = hidden_dim
        layers += [nn.Linear(in_dim, hidden_channels[-1], bias=True), nn.Dropout(dropout)]
        super().__init__(*layers)


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth ("row"): drops whole samples' residual branches while training."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


# ============================================================== Swin3D


def _get_window_and_shift_size(shift_size: list[int], size_dhw: list[int], window_size: list[int]) -> tuple[list[int], list[int]]:
    for i in range(3):
        if size_dhw[i] <= window_size[i]:
            window_size[i] = size_dhw[i]
            shift_size[i] = 0
    return window_size, shift_size


def _get_relative_position_bias(table: Tensor, index: Tensor, window_size: list[int]) -> Tensor:
    window_vol = window_size[0] * window_size[1] * window_size[2]
    bias = table[index[:window_vol, :window_vol].flatten()]
    bias = bias.view(window_vol, window_vol, -1)
    return bias.permute(2, 0, 1).contiguous().unsqueeze(0)


def _compute_pad_size_3d(size_dhw: tuple[int, int, int], patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
    pad = [(patch_size[i] - size_dhw[i] % patch_size[i]) % patch_size[i] for i in range(3)]
    return pad[0], pad[1], pad[2]


def _compute_attention_mask_3d(x: Tensor, size_dhw: tuple[int, int, int], window_size: tuple[int, int, int], shift_size: tuple[int, int, int]) -> Tensor:
    attn_mask = x.new_zeros(*size_dhw)
    num_windows = (size_dhw[0] // window_size[0]) * (size_dhw[1] // window_size[1]) * (size_dhw[2] // window_size[2])
    slices = [((0, -window_size[i]), (-window_size[i], -shift_size[i]), (-shift_size[i], None)) for i in range(3)]
    count = 0
    for d in slices[0]:
        for h in slices[1]:
            for w in slices[2]:
                attn_mask[d[0] : d[1], h[0] : h[1], w[0] : w[1]] = count
                count += 1
    attn_mask = attn_mask.view(
        size_dhw[0] // window_size[0], window_size[0], size_dhw[1] // window_size[1], window_size[1],
        size_dhw[2] // window_size[2], window_size[2],
    )
    attn_mask = attn_mask.permute(0, 2, 4, 1, 3, 5).reshape(num_windows, window_size[0] * window_size[1] * window_size[2])
    attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))


def shifted_window_attention_3d(
    input: Tensor,
    qkv_weight: Tensor,
    proj_weight: Tensor,
    relative_position_bias: Tensor,
    window_size: list[int],
    num_heads: int,
    shift_size: list[int],
    qkv_bias: Optional[Tensor] = None,
    proj_bias: Optional[Tensor] = None,
) -> Tensor:
    """(shifted) window multi-head self-attention on (B, T, H, W, C) tokens, as torchvision computes it."""
    b, t, h, w, c = input.shape
    pad_size = _compute_pad_size_3d((t, h, w), (window_size[0], window_size[1], window_size[2]))
    x = F.pad(input, (0, 0, 0, pad_size[2], 0, pad_size[1], 0, pad_size[0]))
    _, tp, hp, wp, _ = x.shape
    padded_size = (tp, hp, wp)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1], -shift_size[2]), dims=(1, 2, 3))
    num_windows = (padded_size[0] // window_size[0]) * (padded_size[1] // window_size[1]) * (padded_size[2] // window_size[2])
    x = x.view(
        b, padded_size[0] // window_size[0], window_size[0], padded_size[1] // window_size[1], window_size[1],
        padded_size[2] // window_size[2], window_size[2], c,
    )
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b * num_windows, window_size[0] * window_size[1] * window_size[2], c)
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (c // num_heads) ** -0.5
    attn = q.matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift_size) > 0:
        attn_mask = _compute_attention_mask_3d(
            x, (padded_size[0], padded_size[1], padded_size[2]), (window_size[0], window_size[1], window_size[2]),
            (shift_size[0], shift_size[1], shift_size[2]),
        )
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))
    attn = F.softmax(attn, dim=-1)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), c)
    x = F.linear(x, proj_weight, proj_bias)
    x = x.view(
        b, padded_size[0] // window_size[0], padded_size[1] // window_size[1], padded_size[2] // window_size[2],
        window_size[0], window_size[1], window_size[2], c,
    )
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, tp, hp, wp, c)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1], shift_size[2]), dims=(1, 2, 3))
    return x[:, :t, :h, :w, :].contiguous()


class ShiftedWindowAttention3d(nn.Module):
    """qkv and proj Linears, a relative position bias table and its index buffer."""

    def __init__(self, dim: int, window_size: list[int], shift_size: list[int], num_heads: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1), num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(*(torch.arange(window_size[i]) for i in range(3)), indexing="ij"))
        coords_flatten = torch.flatten(coords, 1)
        relative = (coords_flatten[:, :, None] - coords_flatten[:, None, :]).permute(1, 2, 0).contiguous()
        for i in range(3):
            relative[:, :, i] += window_size[i] - 1
        relative[:, :, 0] *= (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
        relative[:, :, 1] *= 2 * window_size[2] - 1
        self.register_buffer("relative_position_index", relative.sum(-1))

    def forward(self, x: Tensor) -> Tensor:
        _, t, h, w, _ = x.shape
        window_size, shift_size = _get_window_and_shift_size(self.shift_size.copy(), [t, h, w], self.window_size.copy())
        bias = _get_relative_position_bias(self.relative_position_bias_table, self.relative_position_index, window_size)  # type: ignore[arg-type]
        return shifted_window_attention_3d(
            x, self.qkv.weight, self.proj.weight, bias, window_size, self.num_heads, shift_size=shift_size,
            qkv_bias=self.qkv.bias, proj_bias=self.proj.bias,
        )


class SwinTransformerBlock(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, window_size: list[int], shift_size: list[int], mlp_ratio: float = 4.0, stochastic_depth_prob: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = ShiftedWindowAttention3d(dim, window_size, shift_size, num_heads)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = MLP(dim, [int(dim * mlp_ratio), dim], activation_layer=nn.GELU)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        x = x + self.stochastic_depth(self.mlp(self.norm2(x)))
        return x


def _patch_merging_pad(x: Tensor) -> Tensor:
    H, W, _ = x.shape[-3:]
    x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    x0 = x[..., 0::2, 0::2, :]
    x1 = x[..., 1::2, 0::2, :]
    x2 = x[..., 0::2, 1::2, :]
    x3 = x[..., 1::2, 1::2, :]
    return torch.cat([x0, x1, x2, x3], -1)


class PatchMerging(nn.Module):
    """2 × 2 spatial neighbours concatenated (4C) → LayerNorm → Linear to 2C."""

    def __init__(self, dim: int, norm_layer: Callable[..., nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = _patch_merging_pad(x)
        x = self.norm(x)
        return self.reduction(x)


class PatchEmbed3d(nn.Module):
    """Pad to whole patches → Conv3d with stride = kernel = patch → channels-last → LayerNorm."""

    def __init__(self, patch_size: list[int], in_channels: int = 3, embed_dim: int = 96, norm_layer: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        self.tuple_patch_size = (patch_size[0], patch_size[1], patch_size[2])
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.tuple_patch_size, stride=self.tuple_patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        _, _, t, h, w = x.size()
        pad_size = _compute_pad_size_3d((t, h, w), self.tuple_patch_size)
        x = F.pad(x, (0, pad_size[2], 0, pad_size[1], 0, pad_size[0]))
        x = self.proj(x)
        x = x.permute(0, 2, 3, 4, 1)
        return self.norm(x)


class SwinTransformer3d(nn.Module):
    """patch_embed → pos_drop → features (stages and patch merging) → norm → avgpool → head."""

    def __init__(
        self,
        patch_size: list[int],
        embed_dim: int,
        depths: list[int],
        num_heads: list[int],
        window_size: list[int],
        mlp_ratio: float = 4.0,
        stochastic_depth_prob: float = 0.1,
        num_classes: int = 400,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-5)
        self.patch_embed = PatchEmbed3d(patch_size=patch_size, embed_dim=embed_dim, norm_layer=norm_layer)
        self.pos_drop = nn.Dropout(p=0.0)
        layers: list[nn.Module] = []
        total_stage_blocks = sum(depths)
        stage_block_id = 0
        for i_stage in range(len(depths)):
            dim = embed_dim * 2**i_stage
            stage: list[nn.Module] = []
            for i_layer in range(depths[i_stage]):
                sd_prob = stochastic_depth_prob * float(stage_block_id) / max(total_stage_blocks - 1, 1)
                stage.append(
                    SwinTransformerBlock(
                        dim, num_heads[i_stage], window_size=list(window_size),
                        shift_size=[0 if i_layer % 2 == 0 else w // 2 for w in window_size], mlp_ratio=mlp_ratio,
                        stochastic_depth_prob=sd_prob,
                    )
                )
                stage_block_id += 1
            layers.append(nn.Sequential(*stage))
            if i_stage < len(depths) - 1:
                layers.append(PatchMerging(dim, norm_layer))
        self.features = nn.Sequential(*layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = norm_layer(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = self.pos_drop(x)
        x = self.features(x)
        x = self.norm(x)
        x = x.permute(0, 4, 1, 2, 3)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.head(x)


def swin3d(num_classes: int = 400, embed_dim: int = 16, depths: Sequence[int] = (2, 2), num_heads: Sequence[int] = (2, 4), window_size: Sequence[int] = (2, 4, 4)) -> SwinTransformer3d:
    """swin3d_t's layout (patch 2 × 4 × 4) with fewer, narrower stages and smaller windows for 8 × 32 × 32 clips."""
    return SwinTransformer3d(
        patch_size=[2, 4, 4], embed_dim=embed_dim, depths=list(depths), num_heads=list(num_heads),
        window_size=list(window_size), num_classes=num_classes,
    )


# ============================================================== MViT


@dataclass
class MSBlockConfig:
    num_heads: int
    input_channels: int
    output_channels: int
    kernel_q: list[int]
    kernel_kv: list[int]
    stride_q: list[int]
    stride_kv: list[int]


def _prod(s: Sequence[int]) -> int:
    product = 1
    for v in s:
        product *= v
    return product


def _unsqueeze(x: Tensor, target_dim: int, expand_dim: int) -> tuple[Tensor, int]:
    tensor_dim = x.dim()
    if tensor_dim == target_dim - 1:
        x = x.unsqueeze(expand_dim)
    elif tensor_dim != target_dim:
        raise ValueError(f"Unsupported input dimension {x.shape}")
    return x, tensor_dim


def _squeeze(x: Tensor, target_dim: int, expand_dim: int, tensor_dim: int) -> Tensor:
    return x.squeeze(expand_dim) if tensor_dim == target_dim - 1 else x


class Pool(nn.Module):
    """Pool the tokens (not the class token) as a (B·heads, C, T, H, W) video, then normalise."""

    def __init__(self, pool: nn.Module, norm: nn.Module | None, activation: nn.Module | None = None, norm_before_pool: bool = False) -> None:
        super().__init__()
        self.pool = pool
        layers = [m for m in (norm, activation) if m is not None]
        self.norm_act = nn.Sequential(*layers) if layers else None
        self.norm_before_pool = norm_before_pool

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        x, tensor_dim = _unsqueeze(x, 4, 1)
        class_token, x = torch.tensor_split(x, indices=(1,), dim=2)
        x = x.transpose(2, 3)
        B, N, C = x.shape[:3]
        x = x.reshape((B * N, C) + thw).contiguous()
        if self.norm_before_pool and self.norm_act is not None:
            x = self.norm_act(x)
        x = self.pool(x)
        T, H, W = x.shape[2:]
        x = x.reshape(B, N, C, -1).transpose(2, 3)
        x = torch.cat((class_token, x), dim=2)
        if not self.norm_before_pool and self.norm_act is not None:
            x = self.norm_act(x)
        x = _squeeze(x, 4, 1, tensor_dim)
        return x, (T, H, W)


def _interpolate(embedding: Tensor, d: int) -> Tensor:
    if embedding.shape[0] == d:
        return embedding
    return F.interpolate(embedding.permute(1, 0).unsqueeze(0), size=d, mode="linear").squeeze(0).permute(1, 0)


def _add_rel_pos(
    attn: Tensor, q: Tensor, q_thw: tuple[int, int, int], k_thw: tuple[int, int, int], rel_pos_h: Tensor, rel_pos_w: Tensor, rel_pos_t: Tensor
) -> Tensor:
    q_t, q_h, q_w = q_thw
    k_t, k_h, k_w = k_thw
    dh = int(2 * max(q_h, k_h) - 1)
    dw = int(2 * max(q_w, k_w) - 1)
    dt = int(2 * max(q_t, k_t) - 1)
    q_h_ratio = max(k_h / q_h, 1.0)
    k_h_ratio = max(q_h / k_h, 1.0)
    dist_h = torch.arange(q_h)[:, None] * q_h_ratio - (torch.arange(k_h)[None, :] + (1.0 - k_h)) * k_h_ratio
    q_w_ratio = max(k_w / q_w, 1.0)
    k_w_ratio = max(q_w / k_w, 1.0)
    dist_w = torch.arange(q_w)[:, None] * q_w_ratio - (torch.arange(k_w)[None, :] + (1.0 - k_w)) * k_w_ratio
    q_t_ratio = max(k_t / q_t, 1.0)
    k_t_ratio = max(q_t / k_t, 1.0)
    dist_t = torch.arange(q_t)[:, None] * q_t_ratio - (torch.arange(k_t)[None, :] + (1.0 - k_t)) * k_t_ratio
    rel_pos_h = _interpolate(rel_pos_h, dh)
    rel_pos_w = _interpolate(rel_pos_w, dw)
    rel_pos_t = _interpolate(rel_pos_t, dt)
    Rh = rel_pos_h[dist_h.long()]
    Rw = rel_pos_w[dist_w.long()]
    Rt = rel_pos_t[dist_t.long()]
    B, n_head, _, dim = q.shape
    r_q = q[:, :, 1:].reshape(B, n_head, q_t, q_h, q_w, dim)
    rel_h_q = torch.einsum("bythwc,hkc->bythwk", r_q, Rh)
    rel_w_q = torch.einsum("bythwc,wkc->bythwk", r_q, Rw)
    r_q = r_q.permute(2, 0, 1, 3, 4, 5).reshape(q_t, B * n_head * q_h * q_w, dim)
    rel_q_t = torch.matmul(r_q, Rt.transpose(1, 2)).transpose(0, 1)
    rel_q_t = rel_q_t.view(B, n_head, q_h, q_w, q_t, k_t).permute(0, 1, 4, 2, 3, 5)
    rel_pos = (
        rel_h_q[:, :, :, :, :, None, :, None] + rel_w_q[:, :, :, :, :, None, None, :] + rel_q_t[:, :, :, :, :, :, None, None]
    ).reshape(B, n_head, q_t * q_h * q_w, k_t * k_h * k_w)
    attn[:, :, 1:, 1:] += rel_pos
    return attn


def _add_shortcut(x: Tensor, shortcut: Tensor, residual_with_cls_embed: bool) -> Tensor:
    if residual_with_cls_embed:
        x.add_(shortcut)
    else:
        x[:, :, 1:, :] += shortcut[:, :, 1:, :]
    return x


def _pool_conv(head_dim: int, kernel: list[int], stride: list[int], norm_layer: Callable[..., nn.Module]) -> Pool:
    return Pool(
        nn.Conv3d(head_dim, head_dim, kernel, stride=stride, padding=[int(k // 2) for k in kernel], groups=head_dim, bias=False),  # type: ignore[arg-type]
        norm_layer(head_dim),
    )


class MultiscaleAttention(nn.Module):
    """qkv Linear, depthwise Conv3d pooling of q / k / v per head, relative positions, residual pooling."""

    def __init__(
        self,
        input_size: list[int],
        embed_dim: int,
        output_dim: int,
        num_heads: int,
        kernel_q: list[int],
        kernel_kv: list[int],
        stride_q: list[int],
        stride_kv: list[int],
        residual_pool: bool,
        residual_with_cls_embed: bool,
        rel_pos_embed: bool,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.output_dim = output_dim
        self.num_heads = num_heads
        self.head_dim = output_dim // num_heads
        self.scaler = 1.0 / math.sqrt(self.head_dim)
        self.residual_pool = residual_pool
        self.residual_with_cls_embed = residual_with_cls_embed
        self.qkv = nn.Linear(embed_dim, 3 * output_dim)
        self.project = nn.Sequential(nn.Linear(output_dim, output_dim))
        self.pool_q: Optional[nn.Module] = None
        if _prod(kernel_q) > 1 or _prod(stride_q) > 1:
            self.pool_q = _pool_conv(self.head_dim, kernel_q, stride_q, norm_layer)
        self.pool_k: Optional[nn.Module] = None
        self.pool_v: Optional[nn.Module] = None
        if _prod(kernel_kv) > 1 or _prod(stride_kv) > 1:
            self.pool_k = _pool_conv(self.head_dim, kernel_kv, stride_kv, norm_layer)
            self.pool_v = _pool_conv(self.head_dim, kernel_kv, stride_kv, norm_layer)
        self.rel_pos_h: Optional[nn.Parameter] = None
        self.rel_pos_w: Optional[nn.Parameter] = None
        self.rel_pos_t: Optional[nn.Parameter] = None
        if rel_pos_embed:
            size = max(input_size[1:])
            q_size = size // stride_q[1] if len(stride_q) > 0 else size
            kv_size = size // stride_kv[1] if len(stride_kv) > 0 else size
            spatial_dim = 2 * max(q_size, kv_size) - 1
            temporal_dim = 2 * input_size[0] - 1
            self.rel_pos_h = nn.Parameter(torch.zeros(spatial_dim, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(spatial_dim, self.head_dim))
            self.rel_pos_t = nn.Parameter(torch.zeros(temporal_dim, self.head_dim))
            for p in (self.rel_pos_h, self.rel_pos_w, self.rel_pos_t):
                nn.init.trunc_normal_(p, std=0.02)

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(dim=2)
        if self.pool_k is not None:
            k, k_thw = self.pool_k(k, thw)
        else:
            k_thw = thw
        if self.pool_v is not None:
            v = self.pool_v(v, thw)[0]
        if self.pool_q is not None:
            q, thw = self.pool_q(q, thw)
        attn = torch.matmul(self.scaler * q, k.transpose(2, 3))
        if self.rel_pos_h is not None and self.rel_pos_w is not None and self.rel_pos_t is not None:
            attn = _add_rel_pos(attn, q, thw, k_thw, self.rel_pos_h, self.rel_pos_w, self.rel_pos_t)
        attn = attn.softmax(dim=-1)
        x = torch.matmul(attn, v)
        if self.residual_pool:
            _add_shortcut(x, q, self.residual_with_cls_embed)
        x = x.transpose(1, 2).reshape(B, -1, self.output_dim)
        x = self.project(x)
        return x, thw


class MultiscaleBlock(nn.Module):
    """norm1 → attention (+ pooled skip) → norm2 → MLP (+ projection when the width changes)."""

    def __init__(
        self,
        input_size: list[int],
        cnf: MSBlockConfig,
        residual_pool: bool,
        residual_with_cls_embed: bool,
        rel_pos_embed: bool,
        proj_after_attn: bool,
        stochastic_depth_prob: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.proj_after_attn = proj_after_attn
        self.pool_skip: Optional[nn.Module] = None
        if _prod(cnf.stride_q) > 1:
            kernel_skip = [s + 1 if s > 1 else s for s in cnf.stride_q]
            padding_skip = [int(k // 2) for k in kernel_skip]
            self.pool_skip = Pool(nn.MaxPool3d(kernel_skip, stride=cnf.stride_q, padding=padding_skip), None)  # type: ignore[arg-type]
        attn_dim = cnf.output_channels if proj_after_attn else cnf.input_channels
        self.norm1 = norm_layer(cnf.input_channels)
        self.norm2 = norm_layer(attn_dim)
        self.needs_transposal = isinstance(self.norm1, nn.BatchNorm1d)
        self.attn = MultiscaleAttention(
            input_size, cnf.input_channels, attn_dim, cnf.num_heads, kernel_q=cnf.kernel_q, kernel_kv=cnf.kernel_kv,
            stride_q=cnf.stride_q, stride_kv=cnf.stride_kv, rel_pos_embed=rel_pos_embed, residual_pool=residual_pool,
            residual_with_cls_embed=residual_with_cls_embed, norm_layer=norm_layer,
        )
        self.mlp = MLP(attn_dim, [4 * attn_dim, cnf.output_channels], activation_layer=nn.GELU)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.project: Optional[nn.Module] = None
        if cnf.input_channels != cnf.output_channels:
            self.project = nn.Linear(cnf.input_channels, cnf.output_channels)

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        x_norm1 = self.norm1(x.transpose(1, 2)).transpose(1, 2) if self.needs_transposal else self.norm1(x)
        x_attn, thw_new = self.attn(x_norm1, thw)
        x = x if self.project is None or not self.proj_after_attn else self.project(x_norm1)
        x_skip = x if self.pool_skip is None else self.pool_skip(x, thw)[0]
        x = x_skip + self.stochastic_depth(x_attn)
        x_norm2 = self.norm2(x.transpose(1, 2)).transpose(1, 2) if self.needs_transposal else self.norm2(x)
        x_proj = x if self.project is None or self.proj_after_attn else self.project(x_norm2)
        return x_proj + self.stochastic_depth(self.mlp(x_norm2)), thw_new


class PositionalEncoding(nn.Module):
    """Prepends the class token (absolute positions are off with relative positions on, as in v2)."""

    def __init__(self, embed_size: int, spatial_size: tuple[int, int], temporal_size: int, rel_pos_embed: bool) -> None:
        super().__init__()
        self.spatial_size = spatial_size
        self.temporal_size = temporal_size
        self.class_token = nn.Parameter(torch.zeros(embed_size))
        self.spatial_pos: Optional[nn.Parameter] = None
        self.temporal_pos: Optional[nn.Parameter] = None
        self.class_pos: Optional[nn.Parameter] = None
        if not rel_pos_embed:
            self.spatial_pos = nn.Parameter(torch.zeros(spatial_size[0] * spatial_size[1], embed_size))
            self.temporal_pos = nn.Parameter(torch.zeros(temporal_size, embed_size))
            self.class_pos = nn.Parameter(torch.zeros(embed_size))

    def forward(self, x: Tensor) -> Tensor:
        class_token = self.class_token.expand(x.size(0), -1).unsqueeze(1)
        x = torch.cat((class_token, x), dim=1)
        if self.spatial_pos is not None and self.temporal_pos is not None and self.class_pos is not None:
            hw_size, embed_size = self.spatial_pos.shape
            pos_embedding = torch.repeat_interleave(self.temporal_pos, hw_size, dim=0)
            pos_embedding.add_(self.spatial_pos.unsqueeze(0).expand(self.temporal_size, -1, -1).reshape(-1, embed_size))
            pos_embedding = torch.cat((self.class_pos.unsqueeze(0), pos_embedding), dim=0).unsqueeze(0)
            x.add_(pos_embedding)
        return x


class MViT(nn.Module):
    """conv_proj → flatten/transpose → pos_encoding → blocks → norm → class token → head (Dropout, Linear)."""

    def __init__(
        self,
        spatial_size: tuple[int, int],
        temporal_size: int,
        block_setting: Sequence[MSBlockConfig],
        residual_pool: bool,
        residual_with_cls_embed: bool,
        rel_pos_embed: bool,
        proj_after_attn: bool,
        dropout: float = 0.5,
        stochastic_depth_prob: float = 0.0,
        num_classes: int = 400,
        patch_embed_kernel: tuple[int, int, int] = (3, 7, 7),
        patch_embed_stride: tuple[int, int, int] = (2, 4, 4),
        patch_embed_padding: tuple[int, int, int] = (1, 3, 3),
    ) -> None:
        super().__init__()
        total_stage_blocks = len(block_setting)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.conv_proj = nn.Conv3d(
            3, block_setting[0].input_channels, kernel_size=patch_embed_kernel, stride=patch_embed_stride, padding=patch_embed_padding
        )
        input_size = [size // stride for size, stride in zip((temporal_size,) + spatial_size, self.conv_proj.stride)]
        self.pos_encoding = PositionalEncoding(
            block_setting[0].input_channels, (input_size[1], input_size[2]), input_size[0], rel_pos_embed
        )
        self.blocks = nn.ModuleList()
        for stage_block_id, cnf in enumerate(block_setting):
            sd_prob = stochastic_depth_prob * stage_block_id / max(total_stage_blocks - 1.0, 1.0)
            self.blocks.append(
                MultiscaleBlock(
                    input_size, cnf, residual_pool, residual_with_cls_embed, rel_pos_embed, proj_after_attn,
                    stochastic_depth_prob=sd_prob, norm_layer=norm_layer,
                )
            )
            if len(cnf.stride_q) > 0:
                input_size = [size // stride for size, stride in zip(input_size, cnf.stride_q)]
        self.norm = norm_layer(block_setting[-1].output_channels)
        self.head = nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(block_setting[-1].output_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)
            elif isinstance(m, PositionalEncoding):
                for weights in m.parameters():
                    nn.init.trunc_normal_(weights, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        x = _unsqueeze(x, 5, 2)[0]
        x = self.conv_proj(x)
        x = x.flatten(2).transpose(1, 2)
        x = self.pos_encoding(x)
        thw = (self.pos_encoding.temporal_size,) + self.pos_encoding.spatial_size
        for block in self.blocks:
            x, thw = block(x, thw)
        x = self.norm(x)
        x = x[:, 0]
        return self.head(x)


def mvit_v2(num_classes: int = 400, temporal_size: int = 8, spatial_size: int = 32, width: int = 16) -> MViT:
    """mvit_v2_s's switches and block pattern (q pooled everywhere, q stride 2 at the widening block, kv strides
    shrinking with q) in three blocks of 1, 2, 2 heads; width `width` then 2 × width, for 8 × 32 × 32 clips."""
    config = {
        "num_heads": [1, 2, 2],
        "input_channels": [width, width, 2 * width],
        "output_channels": [width, 2 * width, 2 * width],
        "kernel_q": [[3, 3, 3]] * 3,
        "kernel_kv": [[3, 3, 3]] * 3,
        "stride_q": [[1, 1, 1], [1, 2, 2], [1, 1, 1]],
        "stride_kv": [[1, 4, 4], [1, 2, 2], [1, 2, 2]],
    }
    blocks = [MSBlockConfig(**{key: values[i] for key, values in config.items()}) for i in range(3)]  # type: ignore[arg-type]
    return MViT(
        spatial_size=(spatial_size, spatial_size), temporal_size=temporal_size, block_setting=blocks, residual_pool=True,
        residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True, stochastic_depth_prob=0.2, num_classes=num_classes,
    )

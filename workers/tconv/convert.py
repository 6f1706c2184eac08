"""Inflate a 2D CNN into a 3TConv video network, as Ras et al. did to start 3TConvs from pretrained 2D weights.

Every Conv2d with a spatial kernel becomes a TConv3d whose base slice K_0 is the 2D weight and whose
transforms are identity (so every slice starts as a copy of K_0); 1×1 convs become plain 1×1×1 Conv3d
(there is nothing to warp); the other 2D layers get their 3D counterparts acting per frame. Temporal
padding k_t // 2 keeps the number of frames.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from workers.tconv.layer import TConv3d


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv(conv: nn.Conv2d, temporal_kernel: int, rescale: bool) -> nn.Module:
    if isinstance(conv.padding, str):
        raise ValueError(f"cannot inflate a Conv2d with padding={conv.padding!r}; give explicit padding")
    if conv.padding_mode != "zeros":
        raise ValueError(f"cannot inflate a Conv2d with padding_mode={conv.padding_mode!r}")
    k_h, k_w = _pair(conv.kernel_size)
    s_h, s_w = _pair(conv.stride)
    p_h, p_w = _pair(conv.padding)
    weight = conv.weight.detach()
    has_bias = conv.bias is not None
    if k_h == 1 and k_w == 1:
        out = nn.Conv3d(conv.in_channels, conv.out_channels, 1, stride=(1, s_h, s_w), groups=conv.groups, bias=has_bias)
        with torch.no_grad():
            out.weight.copy_(weight[:, :, None])
            if has_bias:
                out.bias.copy_(conv.bias.detach())  # type: ignore[union-attr]
        return out
    if conv.groups != 1 or _pair(conv.dilation) != (1, 1):
        raise ValueError("TConv3d has no groups or dilation: cannot inflate a grouped or dilated Conv2d")
    layer = TConv3d(
        conv.in_channels, conv.out_channels, (temporal_kernel, k_h, k_w),
        stride=(1, s_h, s_w), padding=(temporal_kernel // 2, p_h, p_w), bias=has_bias,
    )
    with torch.no_grad():
        layer.first_weight.copy_(weight[:, :, None] / (temporal_kernel if rescale else 1))
        if has_bias:
            layer.bias.copy_(conv.bias.detach())  # type: ignore[union-attr]
    return layer.to(device=weight.device, dtype=weight.dtype)


def _per_frame(v: int | tuple[int, ...], temporal: int) -> tuple[int, int, int]:
    """A 2D size as a 3D one acting on each frame alone: `temporal` along time (1 for sizes, 0 for padding)."""
    h, w = _pair(v)
    return (temporal, h, w)


def _inflate_one(m: nn.Module, temporal_kernel: int, rescale: bool) -> nn.Module | None:
    """The 3D replacement of a 2D layer, or None when the layer works on 5D input unchanged."""
    if isinstance(m, nn.Conv2d):
        return _conv(m, temporal_kernel, rescale)
    if isinstance(m, nn.BatchNorm2d):
        bn = nn.BatchNorm3d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
        bn.load_state_dict(m.state_dict())
        return bn
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise ValueError("cannot inflate MaxPool2d(return_indices=True)")
        stride = m.stride if m.stride is not None else m.kernel_size
        return nn.MaxPool3d(_per_frame(m.kernel_size, 1), _per_frame(stride, 1), _per_frame(m.padding, 0),
                            _per_frame(m.dilation, 1), ceil_mode=m.ceil_mode)
    if isinstance(m, nn.AvgPool2d):
        stride = m.stride if m.stride is not None else m.kernel_size
        return nn.AvgPool3d(_per_frame(m.kernel_size, 1), _per_frame(stride, 1), _per_frame(m.padding, 0),
                            ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        h, w = _pair(m.output_size) if m.output_size is not None else (None, None)  # type: ignore[arg-type]
        return nn.AdaptiveAvgPool3d(1 if (h, w) == (1, 1) else (1, h, w))
    if isinstance(m, nn.AdaptiveMaxPool2d):
        h, w = _pair(m.output_size)  # type: ignore[arg-type]
        return nn.AdaptiveMaxPool3d(1 if (h, w) == (1, 1) else (1, h, w))
    if isinstance(m, nn.Dropout2d):
        return nn.Dropout3d(m.p)
    return None


def inflate_2d(module: nn.Module, temporal_kernel: int = 3, rescale: bool = False) -> nn.Module:
    """A copy of `module` that takes (N, C, T, H, W): 2D convs become TConv3d (K_0 = the 2D weight,
    identity transforms), 1×1 convs 1×1×1 Conv3d, 2D norms/pools their 3D per-frame counterparts.

    rescale=True divides K_0 by k_t (I3D's trick: a static video then reproduces the 2D activations away
    from the temporal borders); the paper's choice, and the default, keeps K_0 equal to the 2D weight.
    """
    if temporal_kernel < 1:
        raise ValueError("temporal_kernel must be >= 1")
    root = copy.deepcopy(module)
    replaced = _inflate_one(root, temporal_kernel, rescale)
    if replaced is not None:
        return replaced
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            new = _inflate_one(child, temporal_kernel, rescale)
            if new is not None:
                setattr(parent, name, new)
    return root

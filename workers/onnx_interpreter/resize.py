"""ONNX Resize as separable 1-D resampling, axis by axis, with ONNX's own coordinate arithmetic.

F.interpolate implements a few of ONNX's combinations (and differs at the edges of others), so each
resized axis maps every output index to a source coordinate exactly as onnxruntime does (float32,
the formula of `coordinate_transformation_mode`), then gathers the source rows (nearest), blends two
(linear) or four (cubic) of them. Gathers and blends are differentiable, so gradients reach the input.
"""

from __future__ import annotations

import math
from typing import Any

import torch

Tensor = torch.Tensor


def resize(node: Any, x: Tensor, *rest: Tensor | None) -> Tensor:
    """Resize (opset 10: X, scales; opset 11+: X, roi, scales, sizes)."""
    if node.opset < 11:
        roi, scales, sizes = None, rest[0] if rest else None, None
        transform = "asymmetric"
        nearest = "simple"
    else:
        padded = list(rest) + [None] * 3
        roi, scales, sizes = padded[0], padded[1], padded[2]
        transform = str(node.attrs.get("coordinate_transformation_mode", "half_pixel"))
        nearest = str(node.attrs.get("nearest_mode", "round_prefer_floor"))
    mode = str(node.attrs.get("mode", "nearest"))
    rank = x.dim()
    axes = [a + rank if a < 0 else a for a in (int(v) for v in node.attrs.get("axes", range(rank)))]
    in_sizes = [int(x.shape[a]) for a in axes]
    if sizes is not None and sizes.numel() > 0:
        out_sizes = [int(v) for v in sizes.reshape(-1).tolist()]
        axis_scales = _size_scales(node, in_sizes, out_sizes)
        if str(node.attrs.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
            out_sizes = [int(s * n + 0.5) for s, n in zip(axis_scales, in_sizes)]
    elif scales is not None and scales.numel() > 0:
        axis_scales = [float(v) for v in scales.reshape(-1).float().tolist()]
        out_sizes = [int(math.floor(n * s)) for n, s in zip(in_sizes, axis_scales)]
    else:
        raise ValueError("Resize needs scales or sizes")
    if bool(node.attrs.get("antialias", 0)) and mode != "nearest" and any(s < 1 for s in axis_scales):
        raise ValueError("Resize with antialias when downscaling is not supported")
    roi_values = [] if roi is None or roi.numel() == 0 else [float(v) for v in roi.reshape(-1).float().tolist()]
    for i, axis in enumerate(axes):
        start, end = (roi_values[i], roi_values[i + len(axes)]) if roi_values else (0.0, 1.0)
        if axis_scales[i] == 1.0 and out_sizes[i] == in_sizes[i] and transform != "tf_crop_and_resize":
            continue
        coords = _coordinates(transform, out_sizes[i], in_sizes[i], axis_scales[i], start, end, x.device)
        x = _resample(node, x, axis, coords, mode, nearest, axis_scales[i] < 1, transform == "tf_crop_and_resize")
    return x


def _size_scales(node: Any, in_sizes: list[int], out_sizes: list[int]) -> list[float]:
    scales = [float(torch.tensor(o, dtype=torch.float32) / torch.tensor(n, dtype=torch.float32)) for o, n in zip(out_sizes, in_sizes)]
    policy = str(node.attrs.get("keep_aspect_ratio_policy", "stretch"))
    if policy == "not_larger":
        return [min(scales)] * len(scales)
    if policy == "not_smaller":
        return [max(scales)] * len(scales)
    return scales


def _coordinates(transform: str, out_len: int, in_len: int, scale: float, start: float, end: float, device: Any) -> Tensor:
    """Source coordinate of every output index along one axis (float32, as onnxruntime computes it)."""
    i = torch.arange(out_len, dtype=torch.float32, device=device)
    s = torch.tensor(scale, dtype=torch.float32)
    if transform == "half_pixel":
        return (i + 0.5) / s - 0.5
    if transform == "pytorch_half_pixel":
        return (i + 0.5) / s - 0.5 if out_len > 1 else torch.zeros_like(i)
    if transform == "half_pixel_symmetric":
        adjustment = torch.tensor(out_len, dtype=torch.float32) / (s * in_len)
        offset = (in_len / 2) * (1 - adjustment)
        return offset + (i + 0.5) / s - 0.5
    if transform == "align_corners":
        return i * (in_len - 1) / (out_len - 1) if out_len > 1 else torch.zeros_like(i)
    if transform == "asymmetric":
        return i / s
    if transform == "tf_half_pixel_for_nn":
        return (i + 0.5) / s
    if transform == "tf_crop_and_resize":
        if out_len > 1:
            return start * (in_len - 1) + (i * (end - start) * (in_len - 1)) / (out_len - 1)
        return torch.full_like(i, 0.5 * (start + end) * (in_len - 1))
    raise ValueError(f"Resize coordinate_transformation_mode {transform!r} is not supported")


def _resample(
    node: Any, x: Tensor, axis: int, coords: Tensor, mode: str, nearest: str, downsample: bool, extrapolate: bool
) -> Tensor:
    in_len = x.shape[axis]
    shape = [1] * x.dim()
    shape[axis] = -1
    if mode == "nearest":
        index = _nearest(coords, nearest, downsample).clamp(0, in_len - 1)
        out = x.index_select(axis, index)
    elif mode == "linear":
        c = coords.clamp(0, in_len - 1)
        low = c.floor().long().clamp(0, in_len - 1)
        high = (low + 1).clamp(max=in_len - 1)
        w = (c - low.float()).to(x.dtype).reshape(shape)
        out = x.index_select(axis, low) * (1 - w) + x.index_select(axis, high) * w
    elif mode == "cubic":
        out = _cubic(node, x, axis, coords, shape)
    else:
        raise ValueError(f"Resize mode {mode!r} is not supported")
    if extrapolate:
        outside = ((coords < 0) | (coords > in_len - 1)).reshape(shape)
        out = torch.where(outside, torch.full_like(out, float(node.attrs.get("extrapolation_value", 0.0))), out)
    return out


def _nearest(coords: Tensor, mode: str, downsample: bool) -> Tensor:
    if mode == "round_prefer_floor":
        return torch.ceil(coords - 0.5).long()
    if mode == "round_prefer_ceil":
        return torch.floor(coords + 0.5).long()
    if mode == "floor":
        return torch.floor(coords).long()
    if mode == "ceil":
        return torch.ceil(coords).long()
    if mode == "simple":  # Resize-10: onnxruntime rounds up when downsampling, truncates otherwise
        return (torch.ceil(coords) if downsample else torch.trunc(coords)).long()
    raise ValueError(f"Resize nearest_mode {mode!r} is not supported")


def _cubic(node: Any, x: Tensor, axis: int, coords: Tensor, shape: list[int]) -> Tensor:
    """Keys' cubic convolution with coefficient A over the 4 neighbours (clamped, or dropped with exclude_outside)."""
    a = float(node.attrs.get("cubic_coeff_a", -0.75))
    in_len = x.shape[axis]
    base = coords.floor()
    t = coords - base
    distances = [t + 1, t, 1 - t, 2 - t]
    weights = [_keys(d, a) for d in distances]
    indices = [base.long() + k for k in (-1, 0, 1, 2)]
    if bool(node.attrs.get("exclude_outside", 0)):
        weights = [torch.where((idx >= 0) & (idx < in_len), w, torch.zeros_like(w)) for w, idx in zip(weights, indices)]
        total = sum(weights)
        weights = [w / total for w in weights]
    out = None
    for w, idx in zip(weights, indices):
        term = x.index_select(axis, idx.clamp(0, in_len - 1)) * w.to(x.dtype).reshape(shape)
        out = term if out is None else out + term
    assert out is not None
    return out


def _keys(d: Tensor, a: float) -> Tensor:
    d = d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))

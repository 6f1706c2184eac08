"""TConv3d: the 3TConv layer of Ras et al. (2020), device-agnostic and exportable.

A 3TConv filter stores one 2D base slice K_0 and, for every later time step t = 1..k_t-1, four numbers
(scale s, rotation r in radians, translation tx, ty in normalised units) shared by its input channels.
Slice t is slice t-1 resampled through A_t = s·R(r)·[I | t] (affine_grid + grid_sample, bilinear, zero
padding, align_corners=True), exactly the sequential warps of the authors' `ConvTTN3d`, so their
checkpoints and ours read the same way. Parameter names are the authors': `first_weight`
(C_out, C_in, 1, k_h, k_w), `scale`, `rotate`, `translate_x`, `translate_y` (k_t-1, C_out), `bias`.

What the warp does to the kernel's content from slice t-1 to slice t (derived from affine_grid: slice t
at output position p reads slice t-1 at s·R(r)·(p + t)): content is scaled by 1/s, rotated by -r in the
(x right, y down) array frame (counter-clockwise on screen for r > 0) and then translated by -t. One
normalised unit is (k-1)/2 pixels of the layer's input along that axis.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Size3 = int | Sequence[int]


def _triple(value: Size3) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"expected an int or three ints, got {value!r}")
    return out  # type: ignore[return-value]


def affine_matrix(scale: torch.Tensor, rotate: torch.Tensor, translate_x: torch.Tensor, translate_y: torch.Tensor) -> torch.Tensor:
    """(..., 2, 3) matrices s·R(r)·[I | t], the authors' `make_affine_matrix` for any batch shape."""
    cos, sin = torch.cos(rotate), torch.sin(rotate)
    a, b = scale * cos, scale * sin
    row0 = torch.stack([a, -b, a * translate_x - b * translate_y], dim=-1)
    row1 = torch.stack([b, a, b * translate_x + a * translate_y], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def build_kernel(
    first_weight: torch.Tensor,
    scale: torch.Tensor,
    rotate: torch.Tensor,
    translate_x: torch.Tensor,
    translate_y: torch.Tensor,
) -> torch.Tensor:
    """The full (C_out, C_in, k_t, k_h, k_w) kernel: K_0 followed by k_t-1 sequential affine warps."""
    c_out, c_in = first_weight.shape[0], first_weight.shape[1]
    k_h, k_w = first_weight.shape[-2], first_weight.shape[-1]
    slices = [first_weight[:, :, 0]]
    for step in range(scale.shape[0]):
        theta = affine_matrix(scale[step], rotate[step], translate_x[step], translate_y[step])
        grid = F.affine_grid(theta, [c_out, c_in, k_h, k_w], align_corners=True)
        warped = F.grid_sample(slices[-1], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        slices.append(warped)
    return torch.stack(slices, dim=2)


class TConv3d(nn.Module):
    """A 3D convolution whose kernel is a 2D slice plus a learned affine transform per time step."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Size3 = (3, 3, 3),
        stride: Size3 = 1,
        padding: Size3 = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        self.padding = _triple(padding)
        k_t, k_h, k_w = self.kernel_size
        if k_t < 1:
            raise ValueError("temporal kernel size must be at least 1")
        self.first_weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, k_h, k_w))
        self.scale = nn.Parameter(torch.ones(k_t - 1, out_channels))
        self.rotate = nn.Parameter(torch.zeros(k_t - 1, out_channels))
        self.translate_x = nn.Parameter(torch.zeros(k_t - 1, out_channels))
        self.translate_y = nn.Parameter(torch.zeros(k_t - 1, out_channels))
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Conv2d's default init for the base slice (fan-in of one slice), identity transforms."""
        nn.init.kaiming_uniform_(self.first_weight, a=math.sqrt(5))
        with torch.no_grad():
            self.scale.fill_(1.0)
            self.rotate.zero_()
            self.translate_x.zero_()
            self.translate_y.zero_()
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size[1] * self.kernel_size[2]
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def kernel(self) -> torch.Tensor:
        """The full 5D kernel this layer convolves with (differentiable in every parameter)."""
        return build_kernel(self.first_weight, self.scale, self.rotate, self.translate_x, self.translate_y)

    @property
    def weight(self) -> torch.Tensor:
        """The full kernel, so that code reading `module.weight` of 3D convs sees what is applied."""
        return self.kernel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, self.kernel(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.bias is not None}"
        )

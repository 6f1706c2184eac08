"""A batch of videos parameterised by their 3D spectrum, with decorrelated colour, in raw value space.

Why Fourier: optimising pixels directly lets high frequencies grow fastest (the gradient of a
conv stack is dominated by them), which gives noise; scaling each coefficient by 1/|f| makes
every frequency band equally easy to change, so the optimum looks like the kernel's preferred
pattern. Extended here from Lucent's 2D images to (T, H, W): the spectrum is an rfftn over time,
height and width, scaled by 1 / max(|f|, 1 / max dim). Colour is mixed through the square root
of natural images' colour correlation (for 3-channel inputs) and a sigmoid maps the result into
the model's own [value_min, value_max], never ImageNet's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from workers.kernel_viz import defaults

# Square root of the colour correlation of natural images (Lucent's ImageNet estimate), rows = output.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
# Lucent divides its Fourier image by this so that the initial video sits near mid-range.
_FOURIER_DAMPING = 4.0


def spectrum_scale(size: Sequence[int]) -> torch.Tensor:
    """1 / max(|f|, 1 / max(T, H, W)) on the rfftn grid of a (T, H, W) video: shape (T, H, W//2+1)."""
    t, h, w = (int(s) for s in size)
    ft = torch.fft.fftfreq(t)[:, None, None]
    fy = torch.fft.fftfreq(h)[None, :, None]
    fx = torch.fft.rfftfreq(w)[None, None, :]
    freq = torch.sqrt(ft**2 + fy**2 + fx**2)
    return 1.0 / torch.clamp(freq, min=1.0 / max(t, h, w))


def wrap_margin(size: int) -> int:
    """Extra samples on an axis of this size so that a periodic spectrum need not wrap inside the canvas.

    Why: a drifting pattern over T frames is rarely periodic in T; forced to be, the optimiser
    bends its speed until a whole number of periods fits (a grating at 1 px/frame came out at
    1.3). Half the axis (at least 2) decouples the ends; a single frame (an image model) has none.
    """
    return 0 if size <= 1 else max(2, size // 2)


def colour_mixing(channels: int) -> torch.Tensor:
    """The (C, C) matrix that turns decorrelated channels into correlated colour (identity unless C = 3)."""
    if channels != 3:
        return torch.eye(channels)
    return _COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()


class FourierVideo(nn.Module):
    """B videos (B, C, T, H, W) in [value_min, value_max]; the only parameter is their spectrum.

    Each video's initial spectrum is drawn from its own generator (CPU), so a video starts the
    same whether it is optimised alone or in a batch, on CPU or on CUDA.
    """

    def __init__(
        self,
        channels: int,
        size: Sequence[int],
        value_range: tuple[float, float],
        generators: Sequence[torch.Generator],
        device: torch.device | str = "cpu",
        init_std: float = defaults.SPECTRUM_INIT_STD,
    ) -> None:
        super().__init__()
        self.size = tuple(int(s) for s in size)
        self.value_min, self.value_max = float(value_range[0]), float(value_range[1])
        # The spectrum describes a video periodic in every axis; a longer one is cropped so that the
        # wrap from the last frame (column, row) back to the first falls outside the canvas.
        self.padded = tuple(s + wrap_margin(s) for s in self.size)
        t, h, w = self.padded
        shape = (channels, t, h, w // 2 + 1, 2)
        init = torch.stack([torch.randn(shape, generator=g) * init_std for g in generators])
        self.spectrum = nn.Parameter(init.to(device))
        self.register_buffer("scale", spectrum_scale(self.padded).to(device), persistent=False)
        self.register_buffer("mixing", colour_mixing(channels).to(device), persistent=False)

    def forward(self) -> torch.Tensor:
        coefficients = torch.view_as_complex(self.spectrum) * self.scale
        video = torch.fft.irfftn(coefficients, s=self.padded, dim=(-3, -2, -1), norm="ortho") / _FOURIER_DAMPING
        t, h, w = self.size
        video = video[:, :, :t, :h, :w]
        video = torch.einsum("dc,bcthw->bdthw", self.mixing, video)
        return self.value_min + (self.value_max - self.value_min) * torch.sigmoid(video)

"""Random transformations applied to the video at every optimisation step (robustness priors).

Why centred: the reference code jitters one-sided and scales about a corner, so one border is
always cut and the other always padded, which leaves edge artefacts. Here the shift is drawn
symmetrically in [-shift, +shift] per axis (t, y, x) and the scale is about the canvas centre,
both in one affine resampling. Shifts are whole pixels (frames), so without a scale change the
resampling is exact and adds no blur. The renderer keeps `shift` within the room the canvas has
around the receptive field, so the target unit never sees padded pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Jitter:
    """shift: largest |shift| per axis (t, y, x) in frames/pixels; scale: largest |factor - 1| (spatial)."""

    shift: tuple[int, int, int] = (0, 0, 0)
    scale: float = 0.0

    @property
    def is_identity(self) -> bool:
        return not any(self.shift) and self.scale == 0.0

    def draw(self, steps: int, generator: torch.Generator) -> torch.Tensor:
        """(steps, 4) rows of (dt, dy, dx, factor): one transformation per step from `generator`."""
        columns = [torch.randint(-s, s + 1, (steps,), generator=generator).float() for s in self.shift]
        factor = 1.0 + self.scale * (2.0 * torch.rand(steps, generator=generator) - 1.0)
        return torch.stack([*columns, factor], dim=1)


def apply(video: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Shift video b (B, C, T, H, W) by params[b, :3] (t, y, x) and scale its frames by params[b, 3] about the centre.

    Content at p moves to p + shift (so a positive x shift moves the picture right). Pixels
    that come from outside the canvas repeat the border.
    """
    params = params.to(device=video.device, dtype=video.dtype)
    if bool((params[:, :3] == 0).all()) and bool((params[:, 3] == 1).all()):
        return video
    b, _, t, h, w = video.shape
    theta = torch.zeros(b, 3, 4, device=video.device, dtype=video.dtype)
    inverse = 1.0 / params[:, 3]
    theta[:, 0, 0] = inverse
    theta[:, 1, 1] = inverse
    theta[:, 2, 2] = 1.0
    # affine_grid's last column is (x, y, z) in normalised units (2 / size per pixel, align_corners=False).
    theta[:, 0, 3] = -2.0 * params[:, 2] / w
    theta[:, 1, 3] = -2.0 * params[:, 1] / h
    theta[:, 2, 3] = -2.0 * params[:, 0] / t
    grid = F.affine_grid(theta, list(video.shape), align_corners=False)
    return F.grid_sample(video, grid, mode="bilinear", padding_mode="border", align_corners=False)

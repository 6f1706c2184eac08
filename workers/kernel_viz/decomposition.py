"""Stage 2: explain each video as one static texture I warped by per-frame motion, network-free, batched.

Model: V_t(p) ≈ I(p − D_t(p)) with D_0 = 0 and D_t = Σ_{s<t} v_s, so v_t is the velocity (pixels
per frame, x = column to the right, y = row down) that carries frame t to frame t + 1, and content
at p in frame 0 is at p + D_t in frame t. The reference code renormalised the sampling grid
cumulatively and swapped x and y, so it recovers ~0 px/frame on a texture translating 2 px/frame;
here the warp is one grid_sample per frame with pixel ↔ grid units matched to align_corners=False.

Loss = mean (V̂ − V)² + tv·TV(v over x, y, t) + tv·share·TV(I) + anchor·mean (I − V_0)², optimised
with Adam coarse-to-fine (half resolution first, then full) from I = V_0. TV is applied to the
velocities, not to D: the temporal TV of D would be the speed itself and bias it towards 0.

Why a global start: a dense gradient fit only reaches shifts within the texture's correlation
length (from v = 0 it found ~0 px/frame on a 2 px/frame texture). Each frame pair's global
translation in the focus window (pyramidal Lucas–Kanade), then one velocity fitted to all pairs
at once, starts the velocities in the right basin; that one velocity is also the "dominant
motion" the summary reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.kernel_viz import defaults

# Lucas–Kanade's 2x2 system is damped by this share of its trace: a direction with little
# structure moves slowly instead of being amplified without bound.
_DAMPING = 0.05
# A pattern whose weaker structure-tensor eigenvalue is below this share of the stronger is one-oriented.
_ONE_ORIENTATION = 0.05
# Gauss–Newton iterations of Lucas–Kanade per pyramid level.
_ITERATIONS = 10
# Standard deviation in pixels of the Gaussian that smooths frames before global motion is measured.
_SMOOTHING = 1.0


@dataclass
class Decomposition:
    """texture (B, C, H, W) raw values; velocity (B, T−1, 2, H, W) px/frame as (x, y); shifts (B, T−1, 2):
    each frame pair's global translation in the focus window; dominant (B, 2): the one velocity that
    best explains all frame pairs there; reconstruction (B, C, T, H, W) raw;
    error (B,) relative reconstruction error ‖V̂ − V‖ / ‖V − mean V‖."""

    texture: torch.Tensor
    velocity: torch.Tensor
    shifts: torch.Tensor
    dominant: torch.Tensor
    reconstruction: torch.Tensor
    error: torch.Tensor


def displacement(velocity: torch.Tensor) -> torch.Tensor:
    """(B, T−1, 2, H, W) velocities → (B, T, 2, H, W) displacements with D_0 = 0 and D_t = Σ_{s<t} v_s."""
    zero = torch.zeros_like(velocity[:, :1])
    return torch.cat([zero, velocity.cumsum(dim=1)], dim=1)


def warp(texture: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Frame t samples the texture (B, C, H, W) at p − D_t(p): (B, C, T, H, W). Border padding."""
    b, c, h, w = texture.shape
    t = displacement.shape[1]
    ys = (2.0 * torch.arange(h, device=texture.device, dtype=texture.dtype) + 1.0) / h - 1.0
    xs = (2.0 * torch.arange(w, device=texture.device, dtype=texture.dtype) + 1.0) / w - 1.0
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    # One pixel is 2 / size grid units with align_corners=False; x is the column, y the row.
    sample_x = grid_x - displacement[:, :, 0] * (2.0 / w)  # (B, T, H, W)
    sample_y = grid_y - displacement[:, :, 1] * (2.0 / h)
    grid = torch.stack([sample_x, sample_y], dim=-1).reshape(b * t, h, w, 2)
    frames = texture.unsqueeze(1).expand(b, t, c, h, w).reshape(b * t, c, h, w)
    out = F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(b, t, c, h, w).transpose(1, 2)


def hann_window(h: int, w: int, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """(H, W) separable Hann window over `box` = (top, bottom, left, right), inclusive (default: everything), 0 outside."""
    top, bottom, left, right = box if box is not None else (0, h - 1, 0, w - 1)
    window = torch.zeros(h, w)
    hy = torch.hann_window(bottom - top + 3, periodic=False)[1:-1]
    hx = torch.hann_window(right - left + 3, periodic=False)[1:-1]
    window[top : bottom + 1, left : right + 1] = torch.outer(hy, hx)
    return window


def global_translation(first: torch.Tensor, second: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 2) translation (x, y) in pixels that best carries first (N, C, H, W) onto second: second(p) ≈ first(p − d).

    Lucas–Kanade weighted by `window` (H, W) (default: Hann over the whole image), started from
    every depth of the image pyramid (a coarse start reaches large shifts but aliases fine
    stripes); the result with the smallest misfit wins, ties going to the smaller shift. The
    2x2 system is damped and a one-oriented pattern keeps only its normal component, so a
    grating (the aperture problem) gets its normal velocity, never a slide along its stripes.
    """
    n, _, h, w = first.shape
    window = (hann_window(h, w) if window is None else window).to(first)
    factors = _levels(h, w, 8)
    best = first.new_zeros(n, 2)
    best_score = _misfit(first, second, best, window)
    for depth in range(len(factors)):
        shift = first.new_zeros(n, 2)
        previous: int | None = None
        for factor in factors[len(factors) - 1 - depth :]:
            if previous is not None:
                shift = shift * (previous / factor)
            shift = _lucas_kanade(_pool(first, factor), _pool(second, factor), shift, _pool(window[None, None], factor)[0, 0])
            previous = factor
        shift = _normal_part(first, shift, window)
        score = _misfit(first, second, shift, window)
        better = score < best_score
        best = torch.where(better[:, None], shift, best)
        best_score = torch.where(better, score, best_score)
    return best


def dominant_velocity(video: torch.Tensor, shifts: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 2) the one velocity (x, y) in px/frame that best carries every frame of video (B, C, T, H, W) to the next.

    Lucas–Kanade with the normal equations of all frame pairs summed, started from the mean of
    the pairs' own translations `shifts` (B, T−1, 2). Summing is what makes it robust: a pair whose
    content has little structure along one axis (an estimate there is unreliable) adds little
    to that axis, where a mean of per-pair estimates would let it pull the result as much as any.
    """
    b, _, t, h, w = video.shape
    window = (hann_window(h, w) if window is None else window).to(video)
    frames = video.float().transpose(1, 2)
    first, second = frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1)
    velocity = _lucas_kanade(first, second, shifts.float().mean(dim=1), window, pairs=t - 1)
    return _normal_part(first, velocity, window, pairs=t - 1)


def decompose(
    video: torch.Tensor,
    value_range: tuple[float, float] = (0.0, 1.0),
    *,
    focus: torch.Tensor | None = None,
    tv_weight: float = defaults.TV_WEIGHT,
    steps: int = defaults.DECOMPOSITION_STEPS,
    levels: int = 2,
) -> Decomposition:
    """Texture + per-frame velocities of each video (B, C, T, H, W) in `value_range` (T ≥ 2).

    focus (H, W): where the global shifts are measured (e.g. a Hann window over the unit's
    receptive field; default: Hann over the whole canvas).
    """
    lo, hi = float(value_range[0]), float(value_range[1])
    target = (video.detach().float() - lo) / max(hi - lo, 1e-12)  # in [0, 1], so the weights mean the same for any range
    b, _, t, h, w = target.shape
    if t < 2:
        raise ValueError("a decomposition needs at least 2 frames")
    # Global motion is measured on slightly smoothed frames (as Lucas–Kanade usually is): the
    # staircase edges of a saturated oblique grating otherwise look like 2D structure and
    # let the estimate slide along the stripes (a planted 250° grating came out at 299°).
    smooth = _smooth(target.transpose(1, 2).flatten(0, 1), _SMOOTHING).view(b, t, -1, h, w)
    shifts = global_translation(smooth[:, :-1].flatten(0, 1), smooth[:, 1:].flatten(0, 1), focus).view(b, t - 1, 2)
    dominant = dominant_velocity(smooth.transpose(1, 2), shifts, focus)
    # The dense fit starts from the dominant velocity everywhere: per-pair shifts can carry a
    # slide along stripes that the data cannot correct, the joint estimate does not.
    velocity = dominant.view(b, 1, 2, 1, 1).expand(b, t - 1, 2, 1, 1)
    texture = target[:, :, 0]
    for factor in _levels(h, w, levels):
        level = target if factor == 1 else F.avg_pool3d(target, (1, factor, factor))
        lh, lw = level.shape[-2:]
        # Velocities carry over in this level's pixels; the texture restarts from this level's V_0.
        start = F.interpolate(velocity.flatten(0, 1), size=(lh, lw), mode="bilinear", align_corners=False)
        scale = lw / (w if velocity.shape[-1] == 1 else velocity.shape[-1])
        velocity, texture = _fit(level, start.unflatten(0, (b, t - 1)) * scale, tv_weight, steps)
    with torch.no_grad():
        recon = warp(texture, displacement(velocity))
        spread = (target - target.mean(dim=(1, 2, 3, 4), keepdim=True)).flatten(1).norm(dim=1)
        error = (recon - target).flatten(1).norm(dim=1) / spread.clamp_min(1e-12)
    return Decomposition(
        texture=lo + (hi - lo) * texture,
        velocity=velocity,
        shifts=shifts,
        dominant=dominant,
        reconstruction=lo + (hi - lo) * recon,
        error=error,
    )


def _fit(target: torch.Tensor, velocity: torch.Tensor, tv_weight: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on (velocity, texture) at one pyramid level, the texture starting from V_0."""
    first = target[:, :, 0]
    params = [velocity.clone().requires_grad_(True), first.clone().requires_grad_(True)]
    rates = [defaults.VELOCITY_LEARNING_RATE, defaults.TEXTURE_LEARNING_RATE]
    adam = _Adam(params, rates)
    for _ in range(steps):
        recon = warp(params[1], displacement(params[0]))
        loss = (
            (recon - target).pow(2).mean()
            + tv_weight * _tv(params[0], (1, 3, 4))
            + tv_weight * defaults.TEXTURE_TV_SHARE * _tv(params[1], (2, 3))
            + defaults.ANCHOR_WEIGHT * (params[1] - first).pow(2).mean()
        )
        # Adam is scale-free, and each video's terms touch only its own parameters: batching changes nothing.
        adam.step(torch.autograd.grad(loss, params))
    return params[0].detach(), params[1].detach()


class _Adam:
    """Plain Adam (descent). torch.optim's first step imports torch._dynamo, seconds per worker process."""

    def __init__(self, params: list[torch.Tensor], rates: list[float], betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.params, self.rates, self.betas = params, rates, betas
        self.first = [torch.zeros_like(p) for p in params]
        self.second = [torch.zeros_like(p) for p in params]
        self.count = 0

    @torch.no_grad()
    def step(self, grads: tuple[torch.Tensor, ...]) -> None:
        self.count += 1
        b1, b2 = self.betas
        for p, g, m, v, rate in zip(self.params, grads, self.first, self.second, self.rates):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat = m / (1 - b1**self.count)
            v_hat = v / (1 - b2**self.count)
            p.sub_(rate * m_hat / (v_hat.sqrt() + 1e-8))


def _tv(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mean squared difference of neighbours along each of `dims` (nothing for an axis of size 1)."""
    total = x.new_zeros(())
    for d in dims:
        if x.shape[d] > 1:
            total = total + x.diff(dim=d).pow(2).mean()
    return total


def _levels(h: int, w: int, levels: int) -> list[int]:
    """Downsampling factors, coarsest first (e.g. [2, 1]); a level's shorter side stays ≥ MIN_PYRAMID_SIZE."""
    factors = [1]
    while len(factors) < levels and min(h, w) // (factors[-1] * 2) >= defaults.MIN_PYRAMID_SIZE:
        factors.append(factors[-1] * 2)
    return factors[::-1]


def _smooth(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images (N, C, H, W), borders replicated."""
    radius = max(1, math.ceil(2 * sigma))
    taps = torch.exp(-torch.arange(-radius, radius + 1.0, device=images.device) ** 2 / (2 * sigma**2))
    taps = (taps / taps.sum()).to(images.dtype)
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    return x if factor == 1 else F.avg_pool2d(x, factor)


def _shifted(image: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    n, _, h, w = image.shape
    return warp(image, shift.view(n, 1, 2, 1, 1).expand(n, 1, 2, h, w))[:, :, 0]


def _structure(gx: torch.Tensor, gy: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Windowed structure-tensor entries (sxx, sxy, syy), each (N,)."""
    return tuple((window * a * b).sum(dim=(1, 2, 3)) for a, b in ((gx, gx), (gx, gy), (gy, gy)))


def _lucas_kanade(
    first: torch.Tensor, second: torch.Tensor, shift: torch.Tensor, window: torch.Tensor, pairs: int = 1
) -> torch.Tensor:
    """Refine `shift` (G, 2) so that second ≈ first moved by it; each group of `pairs` consecutive images
    (N = G * pairs) shares one shift, its normal equations summed over the group."""
    groups = shift.shape[0]
    for _ in range(_ITERATIONS):
        moved = _shifted(first, shift.repeat_interleave(pairs, dim=0))
        gy, gx = torch.gradient(moved, dim=(-2, -1))
        gt = second - moved
        sxx, sxy, syy = (e.view(groups, pairs).sum(dim=1) for e in _structure(gx, gy, window))
        bx = (window * gx * gt).sum(dim=(1, 2, 3)).view(groups, pairs).sum(dim=1)
        by = (window * gy * gt).sum(dim=(1, 2, 3)).view(groups, pairs).sum(dim=1)
        damp = _DAMPING * (sxx + syy) + 1e-12
        a11, a22 = sxx + damp, syy + damp
        det = a11 * a22 - sxy * sxy
        # second ≈ moved − ∇moved · δ  ⇒  δ = −A⁻¹ Σ ∇moved · (second − moved)
        step = torch.stack([-(a22 * bx - sxy * by) / det, -(a11 * by - sxy * bx) / det], dim=1)
        # At most one pixel per iteration, keeping the step's direction (the linearisation holds within ~1 px).
        shift = shift + step / step.norm(dim=1, keepdim=True).clamp_min(1.0)
    return shift


def _normal_part(image: torch.Tensor, shift: torch.Tensor, window: torch.Tensor, pairs: int = 1) -> torch.Tensor:
    """`shift` (G, 2) without its slide along the stripes where the images (G * pairs, C, H, W) have one orientation only.

    Along such a pattern's stripes the data say nothing and interpolation error alone would
    pick a slide; where the structure tensor's smaller eigenvalue is below _ONE_ORIENTATION of
    the larger, only the component along the stripes' normal is kept.
    """
    gy, gx = torch.gradient(image, dim=(-2, -1))
    sxx, sxy, syy = (e.view(shift.shape[0], pairs).sum(dim=1) for e in _structure(gx, gy, window))
    tensor = torch.stack([torch.stack([sxx, sxy], -1), torch.stack([sxy, syy], -1)], -2)
    values, vectors = torch.linalg.eigh(tensor)  # ascending eigenvalues
    normal = vectors[..., :, 1]
    one_orientation = values[:, 0] < _ONE_ORIENTATION * values[:, 1].clamp_min(1e-30)
    projected = (shift * normal).sum(dim=1, keepdim=True) * normal
    return torch.where(one_orientation[:, None], projected, shift)


def _misfit(first: torch.Tensor, second: torch.Tensor, shift: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(N,) windowed squared error of second vs first moved by `shift`, relative, plus a tiny preference for small shifts."""
    error = (window * (second - _shifted(first, shift)).pow(2)).sum(dim=(1, 2, 3))
    spread = (window * (second - second.mean(dim=(1, 2, 3), keepdim=True)).pow(2)).sum(dim=(1, 2, 3))
    return error / spread.clamp_min(1e-12) + 1e-3 * shift.pow(2).sum(dim=1)

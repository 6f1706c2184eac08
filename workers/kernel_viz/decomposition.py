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

Why only the frames the unit sees (`frames`): the canvas holds jitter frames and frames beyond
the unit's temporal receptive field that carry almost no motion; weighting their pairs like the
others under-reported the speed of a 5-frame kernel on a 7-frame canvas by 20-35 %. Frames may
be non-adjacent (a network that subsamples time): a pair of frames g apart moves g·v.

Why a held-out gain: the best translation always explains some of the change between two
unrelated frames (noise gave 1-4 px/frame "motion"). The velocity is fitted on some frame pairs
and judged on the others, and fitted on one half of the window and judged on the other half;
motion_gain = the smallest 1 − error(v) / error(−v) on held-out data. The reversed velocity,
not a static model, is the yardstick because it costs the same interpolation blur, so for
frames with no motion (noise, independent frames, a static or flickering pattern) the gain is
about 0 or below, and for a translation near 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

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
# Starting points of the joint fit (besides the mean and the median of the pairs' own estimates).
_STARTS = 2
# Frame pairs the held-out motion gain uses at most (evenly spread over the video).
_GAIN_PAIRS = 8
# Standard deviation in pixels of the Gaussian that smooths frames before global motion is measured.
_SMOOTHING = 1.0


@dataclass
class Decomposition:
    """Of the S frames used (`frames`, indices into the input video's T): texture (B, C, H, W) raw
    values; velocity (B, S−1, 2, H, W) px/frame as (x, y) from each used frame to the next;
    shifts (B, S−1, 2): each pair's global translation in the focus window, px/frame; dominant
    (B, 2): the one velocity that best explains all pairs there; gain (B,): held-out motion gain
    (see the module docstring; ~0 without motion, ~1 for a translation); reach: the fastest
    motion, px/frame, the focus window can measure (half its smaller extent per frame pair: content
    moving further leaves the window between two frames); reconstruction
    (B, C, S, H, W) raw; error (B,) relative reconstruction error ‖V̂ − V‖ / ‖V − mean V‖."""

    frames: list[int]
    texture: torch.Tensor
    velocity: torch.Tensor
    shifts: torch.Tensor
    dominant: torch.Tensor
    gain: torch.Tensor
    reach: float
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


def dominant_velocity(
    video: torch.Tensor, shifts: torch.Tensor, window: torch.Tensor | None = None, gaps: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, 2) the one velocity (x, y) in px/frame that best carries every frame of video (B, C, S, H, W) to the next.

    gaps (S−1,): frames of the original clip between consecutive frames here (default 1), so
    pair s moves gaps[s]·v. Lucas–Kanade with the normal equations of all frame pairs summed,
    started from the mean of the pairs' own velocities `shifts` (B, S−1, 2). Summing is what
    makes it robust: a pair whose content has little structure along one axis (an estimate
    there is unreliable) adds little to that axis, where a mean of per-pair estimates would let
    it pull the result as much as any.
    """
    b, _, t, h, w = video.shape
    pairs = t - 1
    window = (hann_window(h, w) if window is None else window).to(video)
    frames = video.float().transpose(1, 2)
    first, second = frames[:, :-1], frames[:, 1:]  # (B, P, C, H, W)
    gaps = torch.ones(pairs) if gaps is None else gaps.float()
    # Several starts (a pair whose own estimate went astray drags the mean off; a minority of such
    # pairs leaves the median and the good pairs' own estimates in the right basin); the best fit wins.
    shifts = shifts.float()
    picks = torch.linspace(0, pairs - 1, min(pairs, _STARTS)).round().long().unique()
    starts = torch.cat([shifts.mean(dim=1, keepdim=True), shifts.median(dim=1, keepdim=True).values, shifts[:, picks]], dim=1)
    k = starts.shape[1]
    many_first = first[:, None].expand(b, k, *first.shape[1:]).flatten(0, 2)
    many_second = second[:, None].expand(b, k, *second.shape[1:]).flatten(0, 2)
    per_image = gaps.to(video).repeat(b * k)
    velocity = _lucas_kanade(many_first, many_second, starts.flatten(0, 1), window, pairs=pairs, gaps=per_image)
    velocity = _normal_part(many_first, velocity, window, pairs=pairs)
    error = _error(many_first, many_second, velocity.repeat_interleave(pairs, dim=0) * per_image[:, None], window)
    spread = (window * (many_second - many_second.mean(dim=(1, 2, 3), keepdim=True)).pow(2)).sum(dim=(1, 2, 3))
    score = error.view(b, k, pairs).sum(dim=2) / spread.view(b, k, pairs).sum(dim=2).clamp_min(1e-12)
    score = score + 1e-3 * velocity.view(b, k, 2).pow(2).sum(dim=2)  # ties go to the slower motion
    best = score.argmin(dim=1)
    return velocity.view(b, k, 2)[torch.arange(b), best]


def motion_gain(
    video: torch.Tensor,
    shifts: torch.Tensor,
    window: torch.Tensor | None = None,
    gaps: torch.Tensor | None = None,
    folds: int = defaults.MOTION_FOLDS,
) -> torch.Tensor:
    """(B,) the smallest held-out gain 1 − error(v) / error(−v) of one velocity per video (B, C, S, H, W), S ≥ 2.

    Folds: with two or more frame pairs, the pairs are dealt into up to `folds` interleaved
    groups, each judged with the velocity fitted on the other pairs; and always, each half of
    the window (left, right, top, bottom) is judged with the velocity fitted on the opposite
    half. Fits are Lucas–Kanade started from the mean of the fitted data's own velocities
    (`shifts`, px/frame, for the pair folds). Motion must hold out in every fold: a translation
    does, chance agreement between unrelated frames rarely does in all of them. A fold whose
    held-out frames do not change (a static pattern) scores 0.
    """
    b, _, s, h, w = video.shape
    window = (hann_window(h, w) if window is None else window).to(video)
    gaps = (torch.ones(s - 1) if gaps is None else gaps.float()).to(video)
    frames = video.float().transpose(1, 2)
    # At most _GAIN_PAIRS pairs, evenly spread: the cost stays bounded on long canvases.
    use = torch.linspace(0, s - 2, min(s - 1, _GAIN_PAIRS)).round().long().unique()
    first, second, gaps, shifts = frames[:, :-1][:, use], frames[:, 1:][:, use], gaps[use], shifts[:, use]  # (B, P, C, H, W)
    pairs = len(use)
    fit_windows, test_windows, starts = [], [], []
    if pairs >= 2:
        k = min(folds, pairs)
        held = ((torch.arange(pairs) % k)[None, :] == torch.arange(k)[:, None]).to(video)  # (K, P)
        fit_windows.append((1.0 - held)[:, :, None, None] * window)
        test_windows.append(held[:, :, None, None] * window)
        share = (1.0 - held) / (1.0 - held).sum(dim=1, keepdim=True)
        starts.append(torch.einsum("kp,bpd->bkd", share, shifts.float().to(video)))
    ys, xs = torch.meshgrid(torch.arange(h, device=video.device), torch.arange(w, device=video.device), indexing="ij")
    cy, cx = _centre(window)
    halves = torch.stack([xs < cx, xs >= cx, ys < cy, ys >= cy]).to(video)  # (4, H, W)
    fit_windows.append((halves * window)[:, None].expand(-1, pairs, -1, -1))
    test_windows.append(((1.0 - halves) * window)[:, None].expand(-1, pairs, -1, -1))
    # Each half's start comes from that half alone (a few pairs' own translations, averaged).
    few = torch.linspace(0, pairs - 1, min(pairs, _STARTS)).round().long().unique()
    pair_first, pair_second = first[:, few].flatten(0, 1), second[:, few].flatten(0, 1)
    starts.append(
        torch.stack(
            [
                (global_translation(pair_first, pair_second, half * window).view(b, len(few), 2) / gaps[few][None, :, None]).mean(dim=1)
                for half in halves
            ],
            dim=1,
        )
    )
    fit_all, test_all, start_all = torch.cat(fit_windows), torch.cat(test_windows), torch.cat(starts, dim=1)
    k = fit_all.shape[0]
    # Every fold of every video sees all pairs; what it may use is in its windows.
    fold_first = first[:, None].expand(b, k, *first.shape[1:]).flatten(0, 2)  # (B·K·P, C, H, W)
    fold_second = second[:, None].expand(b, k, *second.shape[1:]).flatten(0, 2)
    per_image = gaps.repeat(b * k)
    fit = fit_all[None].expand(b, *fit_all.shape).flatten(0, 2)[:, None]  # (B·K·P, 1, H, W)
    test = test_all[None].expand(b, *test_all.shape).flatten(0, 2)[:, None]
    velocity = _lucas_kanade(fold_first, fold_second, start_all.flatten(0, 1), fit, pairs=pairs, gaps=per_image)
    velocity = _normal_part(fold_first, velocity, fit, pairs=pairs)
    shift = velocity.repeat_interleave(pairs, dim=0) * per_image[:, None]

    def held_out(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, k, pairs).sum(dim=2)

    forward = held_out(_error(fold_first, fold_second, shift, test))
    backward = held_out(_error(fold_first, fold_second, -shift, test))
    change = held_out(_error(fold_first, fold_second, torch.zeros_like(shift), test))
    spread = held_out((test * (fold_second - fold_second.mean(dim=(1, 2, 3), keepdim=True)).pow(2)).sum(dim=(1, 2, 3)))
    gain = 1.0 - forward / backward.clamp_min(1e-30)
    # No change between the held-out frames (a static pattern): nothing moved, whatever the ratio of two tiny errors says.
    gain = torch.where(change > defaults.STATIC_CHANGE * spread, gain, torch.zeros_like(gain))
    return gain.min(dim=1).values


def decompose(
    video: torch.Tensor,
    value_range: tuple[float, float] = (0.0, 1.0),
    *,
    focus: torch.Tensor | None = None,
    frames: Sequence[int] | None = None,
    tv_weight: float = defaults.TV_WEIGHT,
    steps: int = defaults.DECOMPOSITION_STEPS,
    levels: int = 2,
) -> Decomposition:
    """Texture + velocities of each video (B, C, T, H, W) in `value_range`, over the frames it is about.

    focus (H, W): where the global motion is measured (e.g. a Hann window over the unit's
    receptive field; default: Hann over the whole canvas). frames: increasing indices of the
    frames to explain (those the unit sees; default all, at least 2); the others are ignored.
    """
    lo, hi = float(value_range[0]), float(value_range[1])
    frames = list(range(video.shape[2])) if frames is None else [int(f) for f in frames]
    if len(frames) < 2:
        raise ValueError("a decomposition needs at least 2 frames")
    if any(b <= a for a, b in zip(frames, frames[1:])) or frames[0] < 0 or frames[-1] >= video.shape[2]:
        raise ValueError(f"frames must be increasing indices into {video.shape[2]} frames, got {frames}")
    gaps = torch.tensor(frames).diff().float().to(video.device)
    per_step = gaps.view(1, -1, 1, 1, 1)  # velocities per used pair are gaps·(px/frame)
    # In [0, 1], so the weights mean the same for any range.
    target = (video.detach()[:, :, frames].float() - lo) / max(hi - lo, 1e-12)
    b, _, t, h, w = target.shape
    # Global motion is measured on slightly smoothed frames (as Lucas–Kanade usually is): the
    # staircase edges of a saturated oblique grating otherwise look like 2D structure and
    # let the estimate slide along the stripes (a planted 250° grating came out at 299°).
    smooth = _smooth(target.transpose(1, 2).flatten(0, 1), _SMOOTHING).view(b, t, -1, h, w)
    steps_shift = global_translation(smooth[:, :-1].flatten(0, 1), smooth[:, 1:].flatten(0, 1), focus).view(b, t - 1, 2)
    shifts = steps_shift / gaps.view(1, -1, 1)
    dominant = dominant_velocity(smooth.transpose(1, 2), shifts, focus, gaps)
    gain = motion_gain(smooth.transpose(1, 2), shifts, focus, gaps)
    # The dense fit starts from the dominant velocity everywhere: per-pair shifts can carry a
    # slide along stripes that the data cannot correct, the joint estimate does not.
    velocity = dominant.view(b, 1, 2, 1, 1).expand(b, t - 1, 2, 1, 1) * per_step
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
        frames=frames,
        texture=lo + (hi - lo) * texture,
        velocity=velocity / per_step,
        shifts=shifts,
        dominant=dominant,
        gain=gain,
        reach=_reach(hann_window(h, w) if focus is None else focus) / float(gaps.max()),
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
    first: torch.Tensor,
    second: torch.Tensor,
    shift: torch.Tensor,
    window: torch.Tensor,
    pairs: int = 1,
    gaps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Refine `shift` (G, 2) so that second ≈ first moved by it; each group of `pairs` consecutive images
    (N = G * pairs) shares one shift, its normal equations summed over the group. gaps (N,): image n
    moves gaps[n]·shift (default 1). window: (H, W) for all images or (N, 1, H, W) one each."""
    groups = shift.shape[0]
    gaps = first.new_ones(first.shape[0]) if gaps is None else gaps.to(first)
    scale = gaps.view(-1, 1, 1, 1)
    for _ in range(_ITERATIONS):
        moved = _shifted(first, shift.repeat_interleave(pairs, dim=0) * gaps[:, None])
        gy, gx = torch.gradient(moved, dim=(-2, -1))
        gy, gx = gy * scale, gx * scale  # d(moved)/d(shift) for an image that moves gaps·shift
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


def _error(first: torch.Tensor, second: torch.Tensor, shift: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(N,) windowed squared error of second vs first moved by `shift` (N, 2); window (H, W) or (N, 1, H, W)."""
    return (window * (second - _shifted(first, shift)).pow(2)).sum(dim=(1, 2, 3))


def _reach(window: torch.Tensor) -> float:
    """Half the smaller extent, in pixels, of where a window (H, W) is positive."""
    support = window > 0
    rows = int(support.any(dim=1).sum())
    columns = int(support.any(dim=0).sum())
    return 0.5 * min(rows, columns)


def _centre(window: torch.Tensor) -> tuple[float, float]:
    """The (row, column) centroid of a window (H, W): where its halves are split."""
    total = window.sum().clamp_min(1e-30)
    ys = torch.arange(window.shape[0], dtype=window.dtype, device=window.device)
    xs = torch.arange(window.shape[1], dtype=window.dtype, device=window.device)
    return float((window.sum(dim=1) * ys).sum() / total), float((window.sum(dim=0) * xs).sum() / total)


def _misfit(first: torch.Tensor, second: torch.Tensor, shift: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(N,) windowed squared error of second vs first moved by `shift`, relative, plus a tiny preference for small shifts."""
    error = (window * (second - _shifted(first, shift)).pow(2)).sum(dim=(1, 2, 3))
    spread = (window * (second - second.mean(dim=(1, 2, 3), keepdim=True)).pow(2)).sum(dim=(1, 2, 3))
    return error / spread.clamp_min(1e-12) + 1e-3 * shift.pow(2).sum(dim=1)

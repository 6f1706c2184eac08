"""Per-channel motion summary: dominant direction, speed, how coherent the flow is, and how much it matters.

Conventions (the project's): x = column (right), y = row (down); 0° = +x, 90° = +y (down);
speeds in pixels of the model's input per frame.

Direction and speed come from stage 2's dominant velocity: the one translation per frame that
best explains the receptive field's content over all frame pairs the unit sees, which is what
"the kernel's motion" means for a translating pattern. They are reported only where the motion
is significant: its held-out gain (decomposition.motion_gain) reaches MOTION_GAIN_MIN
(higher with only two or three frames: MOTION_GAIN_MIN_FEW_PAIRS), the speed
MIN_SPEED, and the speed is within the window's reach (content moving further than half the
window between two frames cannot be followed in it); otherwise the best translation is fitting
noise, and any speed would be made up. Coherence comes from the
dense flow, each velocity counting in proportion to the image structure it moves (in flat
regions a flow is not measured, only interpolated by the TV prior: the aperture problem).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workers.kernel_viz import defaults


@dataclass(frozen=True)
class MotionSummary:
    """significant: held-out gain >= gain_threshold(pairs) and MIN_SPEED <= speed <= reach; direction_deg in [0, 360) and
    speed in px/frame, both None unless significant; gain: the held-out motion gain (None if not finite);
    coherence = |weighted mean velocity| / weighted mean |velocity| in [0, 1] (1: one uniform motion)."""

    direction_deg: float | None
    speed: float | None
    coherence: float | None
    gain: float | None = None
    significant: bool = False


def structure_weights(video: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T−1, H, W) weight of velocity v_t: squared spatial gradient of frame t+1 of video (B, C, T, H, W), times region (H, W)."""
    frames = video[:, :, 1:].float()
    gy, gx = torch.gradient(frames, dim=(-2, -1))
    weights = (gx.pow(2) + gy.pow(2)).sum(dim=1)
    if region is not None:
        weights = weights * region.to(weights)
    return weights


def gain_threshold(pairs: int) -> float:
    """The held-out gain that makes motion over this many frame pairs significant."""
    return defaults.MOTION_GAIN_MIN_FEW_PAIRS.get(pairs, defaults.MOTION_GAIN_MIN)


def summarise(
    dominant: torch.Tensor,
    velocity: torch.Tensor,
    weights: torch.Tensor,
    gain: torch.Tensor | None = None,
    reach: float = math.inf,
) -> list[MotionSummary]:
    """One summary per video from dominant velocities (B, 2), dense velocities (B, S−1, 2, H, W), their
    weights (B, S−1, H, W), held-out motion gains (B,) (None: every motion with a speed counts) and the
    fastest measurable speed `reach` (px/frame; Decomposition.reach)."""
    summaries = []
    threshold = gain_threshold(velocity.shape[1])
    gains = [None] * len(dominant) if gain is None else [float(g) for g in gain]
    for mean, v, w, g in zip(dominant.float(), velocity.float(), weights.float(), gains):
        speed = float(mean.norm())
        direction = math.degrees(math.atan2(float(mean[1]), float(mean[0]))) % 360.0
        total = float(w.sum())
        coherence = None
        if total > 0.0:
            flow_mean = (v * w[:, None]).sum(dim=(0, 2, 3)) / total
            magnitude = float((v.norm(dim=1) * w).sum()) / total
            coherence = float(flow_mean.norm()) / magnitude if magnitude > 1e-12 else None
        finite = g is not None and math.isfinite(g)
        significant = defaults.MIN_SPEED <= speed <= reach and (g is None or (finite and g >= threshold))
        summaries.append(
            MotionSummary(
                direction_deg=direction if significant else None,
                speed=speed if significant else None,
                coherence=coherence,
                gain=g if finite else None,
                significant=significant,
            )
        )
    return summaries


def direction_selectivity(preferred: float, null: float) -> float | None:
    """(R_pref − R_null) / (|R_pref| + |R_null|): 1 when the time-reversed video (same frames, opposite
    motion) leaves the unit silent, 0 when it drives it as much; None when both are zero."""
    scale = abs(preferred) + abs(null)
    if scale <= 1e-12:
        return None
    return (preferred - null) / scale


def motion_dependence(static: float, optimal: float) -> float | None:
    """1 − act(static texture) / act(optimal video): the share of the response that needs the motion.

    None when the optimal activation is not positive (the ratio has no meaning then)."""
    if optimal <= 1e-12:
        return None
    return 1.0 - static / optimal

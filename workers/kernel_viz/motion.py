"""Per-channel motion summary: dominant direction, speed, how coherent the flow is, and how much it matters.

Conventions (the project's): x = column (right), y = row (down); 0° = +x, 90° = +y (down);
speeds in pixels of the model's input per frame.

Direction and speed come from stage 2's dominant velocity: the one translation per frame that
best explains the receptive field's content over all frame pairs, which is what "the kernel's
motion" means for a translating pattern. Coherence comes from the
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
    """direction_deg in [0, 360) or None when slower than MIN_SPEED; speed in px/frame; coherence =
    |weighted mean velocity| / weighted mean |velocity| in [0, 1] (1: one uniform motion)."""

    direction_deg: float | None
    speed: float
    coherence: float | None


def structure_weights(video: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T−1, H, W) weight of velocity v_t: squared spatial gradient of frame t+1 of video (B, C, T, H, W), times region (H, W)."""
    frames = video[:, :, 1:].float()
    gy, gx = torch.gradient(frames, dim=(-2, -1))
    weights = (gx.pow(2) + gy.pow(2)).sum(dim=1)
    if region is not None:
        weights = weights * region.to(weights)
    return weights


def summarise(dominant: torch.Tensor, velocity: torch.Tensor, weights: torch.Tensor) -> list[MotionSummary]:
    """One summary per video from dominant velocities (B, 2), dense velocities (B, T−1, 2, H, W) and their weights (B, T−1, H, W)."""
    summaries = []
    for mean, v, w in zip(dominant.float(), velocity.float(), weights.float()):
        speed = float(mean.norm())
        direction = math.degrees(math.atan2(float(mean[1]), float(mean[0]))) % 360.0
        total = float(w.sum())
        coherence = None
        if total > 0.0:
            flow_mean = (v * w[:, None]).sum(dim=(0, 2, 3)) / total
            magnitude = float((v.norm(dim=1) * w).sum()) / total
            coherence = float(flow_mean.norm()) / magnitude if magnitude > 1e-12 else None
        summaries.append(
            MotionSummary(
                direction_deg=direction if speed >= defaults.MIN_SPEED else None,
                speed=speed,
                coherence=coherence,
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

"""Stage 2 of kernel_viz on videos whose motion is planted: translating textures and drifting gratings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from workers.kernel_viz.decomposition import decompose, displacement, global_translation, hann_window, warp
from workers.kernel_viz.motion import direction_selectivity, motion_dependence, structure_weights, summarise
from workers.samples.motion import drifting_grating, translating_texture


def _texture(seed: int, size: int = 32) -> np.ndarray:
    """Smooth random colour texture (C, H, W) in [0, 1], periodic so translating_texture wraps cleanly."""
    rng = np.random.default_rng(seed)
    tex = gaussian_filter(rng.random((3, size, size)), sigma=(0, 1.5, 1.5), mode="wrap")
    return ((tex - tex.min()) / (tex.max() - tex.min())).astype(np.float32)


def _angle_error(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def test_warp_moves_content_by_the_displacement_with_x_as_column_and_y_as_row() -> None:
    texture = torch.from_numpy(_texture(0))[None]
    d = torch.zeros(1, 2, 2, 32, 32)
    d[:, 1, 0] = 3.0  # frame 1: 3 px right
    d[:, 1, 1] = -2.0  # and 2 px up
    frames = warp(texture, d)
    expected = torch.roll(texture, shifts=(-2, 3), dims=(-2, -1))
    assert torch.equal(frames[:, :, 0], texture)  # D_0 = 0 is the identity, exactly
    assert torch.allclose(frames[0, :, 1, 4:-4, 4:-4], expected[0, :, 4:-4, 4:-4], atol=1e-5)


def test_displacement_starts_at_zero_and_sums_earlier_velocities() -> None:
    v = torch.arange(1.0, 4.0).view(1, 3, 1, 1, 1).expand(1, 3, 2, 1, 1)
    d = displacement(v)
    assert d[0, :, 0, 0, 0].tolist() == [0.0, 1.0, 3.0, 6.0]


@pytest.mark.parametrize("velocity", [(2.0, 0.0), (2.0 / math.sqrt(2), 2.0 / math.sqrt(2)), (0.0, -2.0)])
def test_a_texture_translating_2px_per_frame_is_recovered_within_10_percent(velocity: tuple[float, float]) -> None:
    video = torch.from_numpy(translating_texture(_texture(1), velocity, frames=8))[None]
    result = decompose(video, steps=60)
    truth = torch.tensor(velocity)
    assert torch.linalg.vector_norm(result.dominant[0] - truth) <= 0.1 * truth.norm()
    assert float(result.gain[0]) > 0.9  # and it is significant motion
    # The dense flow agrees away from the borders, where wrapped-in content has no source in the texture.
    inner = result.velocity[0, :, :, 8:-8, 8:-8].mean(dim=(0, 2, 3))
    assert torch.linalg.vector_norm(inner - truth) <= 0.1 * truth.norm()
    assert result.reconstruction.shape == video.shape


def test_the_reference_codes_failure_mode_is_gone_for_a_batch_of_different_motions() -> None:
    """The reference recovers ~0 px/frame on this case; a batch must also keep each video's own answer."""
    velocities = [(2.0, 0.0), (-1.0, 1.5), (0.0, 0.0)]
    video = torch.stack([torch.from_numpy(translating_texture(_texture(2 + k), v, frames=6)) for k, v in enumerate(velocities)])
    result = decompose(video, steps=30)
    for k, v in enumerate(velocities):
        assert torch.linalg.vector_norm(result.dominant[k] - torch.tensor(v)) <= 0.1 * max(1.0, math.hypot(*v))


@pytest.mark.parametrize("direction", [30.0, 200.0])
def test_a_drifting_grating_gives_its_normal_velocity_not_a_slide_along_its_stripes(direction: float) -> None:
    video = torch.from_numpy(drifting_grating(direction, 1.0, frames=8, size=24, wavelength=8.0))[None]
    summary = summarise(*_summary_inputs(video))[0]
    assert summary.direction_deg is not None
    assert _angle_error(summary.direction_deg, direction) <= 5.0
    assert summary.speed == pytest.approx(1.0, rel=0.1)


def test_a_static_video_has_no_motion() -> None:
    video = torch.from_numpy(_texture(3, 24))[None, :, None].expand(1, 3, 6, 24, 24).contiguous()
    summary = summarise(*_summary_inputs(video))[0]
    assert not summary.significant
    assert summary.speed is None and summary.direction_deg is None


def test_global_translation_reaches_shifts_beyond_the_texture_correlation_length() -> None:
    tex = torch.from_numpy(_texture(4, 32))[None]
    moved = torch.roll(tex, shifts=(3, -5), dims=(-2, -1))  # 5 px left, 3 px down
    shift = global_translation(tex, moved)
    assert torch.allclose(shift[0], torch.tensor([-5.0, 3.0]), atol=0.15)


def test_focus_window_ignores_motion_outside_it() -> None:
    """Only the top-left quadrant moves; with the focus there, that is the motion reported."""
    tex = _texture(5, 32)
    moving = translating_texture(tex, (1.5, 0.0), frames=6)
    video = np.broadcast_to(tex[:, None], moving.shape).copy()
    video[:, :, :16, :16] = moving[:, :, :16, :16]
    result = decompose(torch.from_numpy(video)[None], focus=hann_window(32, 32, (2, 13, 2, 13)), steps=10)
    assert float(result.dominant[0, 0]) == pytest.approx(1.5, rel=0.1)
    assert abs(float(result.dominant[0, 1])) < 0.15


def test_selectivity_and_dependence_formulas() -> None:
    assert direction_selectivity(2.0, 0.0) == 1.0
    assert direction_selectivity(2.0, 2.0) == 0.0
    assert direction_selectivity(0.0, 0.0) is None
    assert motion_dependence(static=0.5, optimal=2.0) == 0.75
    assert motion_dependence(static=0.5, optimal=0.0) is None


def _summary_inputs(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    result = decompose(video, steps=30)
    return result.dominant, result.velocity, structure_weights(video)

"""kernel_viz motion tells the truth: over the frames the unit sees, and only where there is motion.

Known answers: first-layer kernels built as drifting gratings SHORTER in time than their canvas
(temporal padding and jitter frames around the receptive field), with a temporal stride, behind a
second conv (a deeper layer), and behind a network that skips frames; stage 2 alone on noise,
independent frames, static and flickering patterns (no motion) and planted translations (motion).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.workers.test_kernel_viz_task import _angle_error, _run, grating_kernel
from workers.input_spec import InputSpec
from workers.kernel_viz.decomposition import decompose, hann_window
from workers.kernel_viz.motion import gain_threshold, structure_weights, summarise
from workers.samples.motion import random_texture, translating_texture


SPEC = InputSpec(shape=(3, 16, 32, 32), value_min=0.0, value_max=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)
# (direction in degrees, speed in px/frame) of each planted kernel: every quadrant, 0.5 to 3 px/frame.
PLANTED = [(0.0, 1.0), (45.0, 2.0), (135.0, 0.5), (250.0, 1.5), (300.0, 3.0)]


def _wavelength(speed: float) -> float:
    """At most a quarter cycle per frame: a faster grating's direction is ambiguous once stage 1 saturates it."""
    return max(8.0, 4.0 * speed)


class ShortGratings(nn.Module):
    """conv1: the planted kernels, k_t frames with temporal padding and stride; `deep` adds conv2, which
    sums each conv1 channel along its own planted trajectory over 3 of conv1's time steps."""

    def __init__(self, planted: list[tuple[float, float]], frames: int = 5, padding: int = 2, stride: int = 1, deep: bool = False) -> None:
        super().__init__()
        n = len(planted)
        self.conv1 = nn.Conv3d(3, n, (frames, 9, 9), padding=(padding, 4, 4), stride=(stride, 1, 1))
        self.deep = deep
        self.conv2 = nn.Conv3d(n, n, (3, 7, 7), padding=(1, 3, 3), groups=n) if deep else None
        self.fc = nn.Linear(n, 2)
        with torch.no_grad():
            self.conv1.bias.zero_()
            for k, (direction, speed) in enumerate(planted):
                self.conv1.weight[k] = grating_kernel(direction, speed, frames=frames, wavelength=_wavelength(speed))
            if self.conv2 is not None:
                self.conv2.weight.zero_()
                self.conv2.bias.zero_()
                for k, (direction, speed) in enumerate(planted):
                    _trajectory(self.conv2.weight[k, 0], direction, speed * stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        if self.conv2 is not None:
            x = self.conv2(x)
        return self.fc(x.mean(dim=(2, 3, 4)))


def _trajectory(weight: torch.Tensor, direction: float, step: float) -> None:
    """weight (3, k, k): tap dt at the point `step`·(dt − 1) px along `direction` from the centre, bilinearly spread."""
    r = weight.shape[-1] // 2
    ux, uy = math.cos(math.radians(direction)), math.sin(math.radians(direction))
    for dt in range(weight.shape[0]):
        x, y = r + step * ux * (dt - 1), r + step * uy * (dt - 1)
        x0, y0 = math.floor(x), math.floor(y)
        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                weight[dt, yy, xx] += wy * wx


class EveryOtherFrame(nn.Module):
    """A network that drops every other frame before its first conv: its units never see the odd frames."""

    def __init__(self, planted: list[tuple[float, float]]) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, len(planted), (4, 9, 9), padding=(0, 4, 4))
        self.fc = nn.Linear(len(planted), 2)
        with torch.no_grad():
            self.conv1.bias.zero_()
            for k, (direction, speed) in enumerate(planted):  # speed per input frame: 2·speed per kept frame
                self.conv1.weight[k] = grating_kernel(direction, 2 * speed, frames=4, wavelength=_wavelength(2 * speed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv1(x[:, :, ::2])).mean(dim=(2, 3, 4)))


def _check(layer: dict[str, Any], planted: list[tuple[float, float]]) -> list[tuple[float, float]]:
    found = []
    for (direction, speed), channel in zip(planted, layer["channels"]):
        assert channel["motion_significant"] is True, channel
        assert channel["motion_gain"] >= 0.5, channel
        found.append((channel["direction_deg"], channel["speed_px_per_frame"]))
    for (direction, speed), (got_direction, got_speed) in zip(planted, found):
        assert _angle_error(got_direction, direction) <= 15.0, (planted, found)
        assert got_speed == pytest.approx(speed, rel=0.2), (planted, found)
    return found


@pytest.mark.slow
def test_a_kernel_shorter_than_its_canvas_gives_its_speed_over_the_frames_it_sees(tmp_path: Path) -> None:
    """k_t = 5 with temporal padding 2 on a 7-frame canvas (one jitter frame each side): all pairs counted alike read 0.65-0.79 of the speed."""
    summary = _run(ShortGratings(PLANTED), SPEC, tmp_path, steps=256)
    (layer,) = summary["layers"]
    assert layer["receptive_field"][0] == 5 and layer["canvas"][0] > 5
    assert layer["motion_frames"] == [1, 2, 3, 4, 5]  # the field, not the jitter frames
    _check(layer, PLANTED)


@pytest.mark.slow
def test_a_temporally_strided_kernel_gives_its_speed_per_input_frame(tmp_path: Path) -> None:
    summary = _run(ShortGratings(PLANTED, stride=2), SPEC, tmp_path, steps=256)
    (layer,) = summary["layers"]
    assert len(layer["motion_frames"]) == 5 and layer["canvas"][0] > 5
    _check(layer, PLANTED)


@pytest.mark.slow
def test_a_deeper_layer_gives_the_speed_of_its_trajectory(tmp_path: Path) -> None:
    planted = [(0.0, 1.0), (135.0, 2.0), (250.0, 0.5), (300.0, 1.5)]
    summary = _run(ShortGratings(planted, deep=True), SPEC, tmp_path, steps=192, layers=["conv2"])
    (layer,) = summary["layers"]
    assert layer["receptive_field"][0] == 7 and len(layer["motion_frames"]) == 7
    _check(layer, planted)


@pytest.mark.slow
def test_frames_the_network_skips_are_not_measured_and_speed_stays_per_input_frame(tmp_path: Path) -> None:
    planted = [(30.0, 0.75), (120.0, 0.5), (225.0, 0.75), (315.0, 1.0)]
    summary = _run(EveryOtherFrame(planted), SPEC, tmp_path, steps=256)
    (layer,) = summary["layers"]
    frames = layer["motion_frames"]
    assert len(frames) == 4 and {b - a for a, b in zip(frames, frames[1:])} == {2}
    _check(layer, planted)


def test_summary_states_its_conventions_and_matches_the_schema(tmp_path: Path) -> None:
    import jsonschema

    from sdk import schemas

    summary = _run(ShortGratings(PLANTED[:2]), SPEC, tmp_path, steps=4)
    jsonschema.validate(json.loads(json.dumps(summary)), schemas.load("kernel_viz"))
    conventions = summary["conventions"]
    assert "0 = +x (right)" in conventions["direction_deg"] and "90 = +y (down" in conventions["direction_deg"]
    assert "per input frame" in conventions["speed_px_per_frame"]
    channel = summary["layers"][0]["channels"][0]
    assert {"motion_significant", "motion_gain"} <= set(channel)
    if not channel["motion_significant"]:
        assert channel["direction_deg"] is None and channel["speed_px_per_frame"] is None


# Stage 2 alone ---------------------------------------------------------------------------

def _summaries(video: torch.Tensor, focus: torch.Tensor | None = None, frames: list[int] | None = None) -> list[Any]:
    result = decompose(video, focus=focus, frames=frames, steps=5)
    return summarise(result.dominant, result.velocity, structure_weights(video[:, :, result.frames]), result.gain, result.reach)


def _independent_frames(kind: str, frames: int, size: int, seed: int) -> np.ndarray:
    if kind == "noise":
        return np.random.default_rng(seed).random((3, frames, size, size)).astype(np.float32)
    smoothness = float(kind.removeprefix("smooth"))
    return np.stack([random_texture(size, seed=1000 * seed + t, smoothness=smoothness) for t in range(frames)], axis=1)


# (size, focus box) pairs: the whole canvas, and a 9x9 receptive field inside a 13x13 canvas.
WINDOWS = [(24, None), (13, (2, 10, 2, 10))]


@pytest.mark.parametrize("kind", ["noise", "smooth2", "smooth4"])
@pytest.mark.parametrize("frames", [2, 3, 6])
def test_noise_and_independent_frames_report_no_motion(kind: str, frames: int) -> None:
    """Before: 1.1-4.1 px/frame in random directions, gated by the 0.05 px/frame floor only."""
    for size, box in WINDOWS:
        video = torch.from_numpy(np.stack([_independent_frames(kind, frames, size, seed) for seed in range(10)]))
        for summary in _summaries(video, hann_window(size, size, box)):
            assert not summary.significant, summary
            assert summary.direction_deg is None and summary.speed is None
            assert summary.gain is not None and summary.gain < gain_threshold(frames - 1)


@pytest.mark.parametrize("frames", [2, 3, 6])
def test_planted_translations_all_report_their_motion(frames: int) -> None:
    velocities = [(2.0, 0.0), (0.0, -0.5), (-1.0, 1.0), (2.1, -2.1), (-3.0, 0.0), (0.35, 0.35), (-1.2, -0.9), (0.0, 2.5)]
    video = torch.stack(
        [torch.from_numpy(translating_texture(random_texture(24, seed=50 + k), v, frames)) for k, v in enumerate(velocities)]
    )
    for v, summary in zip(velocities, _summaries(video)):
        assert summary.significant and summary.gain is not None and summary.gain > 0.8, (v, summary)
        assert _angle_error(summary.direction_deg, math.degrees(math.atan2(v[1], v[0])) % 360) <= 5.0, (v, summary)
        assert summary.speed == pytest.approx(math.hypot(*v), rel=0.1), (v, summary)


def test_static_and_flickering_patterns_have_no_motion() -> None:
    texture = random_texture(24, seed=7)
    static = np.repeat(texture[:, None], 6, axis=1)
    x = np.arange(24, dtype=np.float32)
    t = np.arange(6, dtype=np.float32)[:, None, None]
    flicker = 0.5 + 0.4 * np.cos(2 * np.pi * x / 8)[None, None, :] * np.cos(2 * np.pi * t / 4)  # a standing wave
    video = torch.from_numpy(np.stack([static, np.broadcast_to(flicker, (3, 6, 24, 24)).astype(np.float32)]))
    result = decompose(video, steps=5)
    assert float(result.gain[0]) == 0.0  # nothing changes
    for summary in _summaries(video):
        assert not summary.significant and summary.speed is None and summary.direction_deg is None


def test_only_the_frames_named_are_measured_and_gaps_count_as_frames() -> None:
    """Frames 1-5 translate 1.5 px/frame; frames 0 and 6 are unrelated noise (jitter frames)."""
    moving = translating_texture(random_texture(24, seed=3), (1.5, 0.0), 7)
    noise = np.random.default_rng(0).random((3, 2, 24, 24)).astype(np.float32)
    moving[:, 0], moving[:, 6] = noise[:, 0], noise[:, 1]
    video = torch.from_numpy(moving)[None]
    inside = decompose(video, frames=[1, 2, 3, 4, 5], steps=5)
    assert float(inside.dominant[0, 0]) == pytest.approx(1.5, rel=0.05) and abs(float(inside.dominant[0, 1])) < 0.1
    assert inside.velocity.shape[1] == 4 and inside.reconstruction.shape[2] == 5
    # Every other frame: pairs 2 frames apart, still 1.5 px per frame.
    skipping = decompose(video, frames=[1, 3, 5], steps=5)
    assert float(skipping.dominant[0, 0]) == pytest.approx(1.5, rel=0.05)
    assert float(skipping.velocity[0, :, 0, 8:-8, 8:-8].mean()) == pytest.approx(1.5, rel=0.1)
    with pytest.raises(ValueError):
        decompose(video, frames=[3])
    with pytest.raises(ValueError):
        decompose(video, frames=[4, 2])

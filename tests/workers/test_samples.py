"""Known-answer checks for the sample clips and the sample model.

The motion estimators below are independent of the generators: a phase-at-peak-frequency
estimate for gratings (whose only measurable velocity is along the wave vector) and classic
phase correlation for textures, both written with x = column and y = row (down).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from workers.samples import motion
from workers.samples.motion import (
    class_names_for,
    drifting_grating,
    motion_clips,
    random_texture,
    translating_texture,
)
from workers.samples.models import (
    INPUT_SPEC,
    C3DSmall,
    export_onnx,
    export_pt2,
    sample_input,
    train_c3d,
)


def _direction_error_deg(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def grating_velocity(video: np.ndarray) -> tuple[float, float]:
    """(vx, vy) px/frame of a drifting grating from the phase advance at its peak spatial frequency."""
    frames = video[0].astype(np.float64)  # (T, H, W)
    _, height, width = frames.shape
    window = np.outer(np.hanning(height), np.hanning(width))
    frames = frames - (frames * window).sum(axis=(1, 2), keepdims=True) / window.sum()
    pad = 16 * max(height, width)
    power = np.abs(np.fft.fft2(frames[0] * window, s=(pad, pad)))
    iy, ix = np.unravel_index(np.argmax(power), power.shape)
    ky, kx = np.fft.fftfreq(pad)[iy], np.fft.fftfreq(pad)[ix]  # cycles per pixel
    y, x = np.mgrid[0:height, 0:width]
    basis = np.exp(-2j * np.pi * (kx * x + ky * y))
    amplitude = np.array([(frame * window * basis).sum() for frame in frames])
    # I_t(p) = I_0(p - v t)  =>  amplitude_t ∝ exp(-2πi k·v t)
    step = np.angle(np.sum(amplitude[1:] * np.conj(amplitude[:-1])))
    k_dot_v = -step / (2.0 * np.pi)
    k2 = kx * kx + ky * ky
    return float(k_dot_v * kx / k2), float(k_dot_v * ky / k2)


def phase_correlation_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(dx, dy) such that b(p) ≈ a(p - d) for periodic 2D images, sub-pixel by a parabola fit."""
    cross = np.fft.fft2(b) * np.conj(np.fft.fft2(a))
    surface = np.fft.ifft2(cross / (np.abs(cross) + 1e-12)).real
    height, width = surface.shape
    iy, ix = np.unravel_index(np.argmax(surface), surface.shape)

    def refine(minus: float, centre: float, plus: float) -> float:
        denom = minus - 2.0 * centre + plus
        return 0.0 if denom == 0 else 0.5 * (minus - plus) / denom

    dy = iy + refine(surface[(iy - 1) % height, ix], surface[iy, ix], surface[(iy + 1) % height, ix])
    dx = ix + refine(surface[iy, (ix - 1) % width], surface[iy, ix], surface[iy, (ix + 1) % width])
    dy = (dy + height / 2) % height - height / 2
    dx = (dx + width / 2) % width - width / 2
    return float(dx), float(dy)


# --- drifting_grating -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "direction,speed,wavelength",
    [(0, 1.0, 8.0), (45, 1.5, 8.0), (90, 1.0, 8.0), (135, 0.7, 10.0), (200, 2.0, 9.0), (300, 1.2, 6.0)],
)
def test_grating_moves_in_its_direction_at_its_speed(direction: float, speed: float, wavelength: float) -> None:
    video = drifting_grating(direction, speed, frames=6, size=32, wavelength=wavelength, phase=0.3)
    vx, vy = grating_velocity(video)
    assert _direction_error_deg(np.degrees(np.arctan2(vy, vx)), direction) < 5.0
    assert np.hypot(vx, vy) == pytest.approx(speed, rel=0.05)


@pytest.mark.parametrize(
    "direction,speed,shift_rows,shift_cols",
    [(90, 2.0, 2, 0), (0, 1.0, 0, 1), (45, np.sqrt(2.0), 1, 1), (270, 1.0, -1, 0), (180, 3.0, 0, -3)],
)
def test_grating_frame_is_previous_frame_shifted_with_y_down(
    direction: float, speed: float, shift_rows: int, shift_cols: int
) -> None:
    """90° moves content DOWN the rows: frame t+1 at (row + 2) equals frame t at row."""
    video = drifting_grating(direction, speed, frames=3, size=24, wavelength=7.0)
    shifted = np.roll(video[:, :-1], (shift_rows, shift_cols), axis=(2, 3))
    interior = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # away from wrap-around rows/cols
    np.testing.assert_allclose(video[:, 1:][interior], shifted[interior], atol=1e-5)


def test_grating_shape_range_and_bars_perpendicular_to_motion() -> None:
    video = drifting_grating(0, 1.0, frames=4, size=16, channels=2)
    assert video.shape == (2, 4, 16, 16) and video.dtype == np.float32
    assert video.min() >= 0.0 and video.max() <= 1.0
    # moving right: the bars are vertical, so every column is constant down the rows
    assert np.ptp(video[0, 0], axis=0).max() < 1e-6
    assert np.ptp(video[0, 0], axis=1).min() > 0.5


# --- translating_texture and random_texture ---------------------------------------------------


@pytest.mark.parametrize("velocity", [(2, -1), (0, 3), (-1, 0)])
def test_translating_texture_integer_velocity_is_an_exact_roll(velocity: tuple[int, int]) -> None:
    texture = random_texture(24, channels=3, seed=5)
    video = translating_texture(texture, velocity, frames=4)
    vx, vy = velocity
    for t in range(4):
        np.testing.assert_allclose(video[:, t], np.roll(texture, (vy * t, vx * t), axis=(1, 2)), atol=1e-5)


def test_translating_texture_subpixel_steps_add_up() -> None:
    """Two half-pixel steps equal one whole-pixel roll; phase correlation sees the fractional shift."""
    texture = random_texture(32, channels=1, seed=2)
    video = translating_texture(texture, (0.5, -0.25), frames=5)
    np.testing.assert_allclose(video[:, 4], np.roll(texture, (-1, 2), axis=(1, 2)), atol=1e-5)
    video = translating_texture(texture, (0.7, 0.3), frames=4)
    dx, dy = phase_correlation_shift(video[0, 0], video[0, 3])
    assert dx == pytest.approx(2.1, abs=0.15) and dy == pytest.approx(0.9, abs=0.15)


def test_random_texture_is_seeded_smooth_periodic_and_in_range() -> None:
    a = random_texture(32, channels=3, seed=1)
    assert a.shape == (3, 32, 32) and a.dtype == np.float32
    assert a.min() == pytest.approx(0.0, abs=1e-6) and a.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(a, random_texture(32, channels=3, seed=1))
    assert not np.allclose(a, random_texture(32, channels=3, seed=2))

    def roughness(texture: np.ndarray) -> float:
        return float(np.abs(np.diff(texture, axis=-1)).mean())

    assert roughness(random_texture(32, seed=1, smoothness=3.0)) < 0.5 * roughness(random_texture(32, seed=1, smoothness=0.5))
    # periodic: the wrap-around seam is no rougher than the interior
    seam = float(np.abs(a[..., 0] - a[..., -1]).mean())
    assert seam < 2.0 * roughness(a)


# --- motion_clips -----------------------------------------------------------------------------


def test_motion_clips_are_deterministic_balanced_and_in_range() -> None:
    x, y, names = motion_clips(6, seed=3)
    assert x.shape == (24, 3, 8, 32, 32) and x.dtype == np.float32
    assert y.dtype == np.int64 and np.bincount(y).tolist() == [6, 6, 6, 6]
    assert names == ["right", "down", "left", "up"]
    assert x.min() >= 0.0 and x.max() <= 1.0
    x2, y2, _ = motion_clips(6, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, y3, _ = motion_clips(6, seed=4)
    assert not np.array_equal(x, x3)
    assert not np.array_equal(y, np.sort(y)), "clips are shuffled"


def test_motion_clips_other_directions_and_sizes() -> None:
    x, y, names = motion_clips(2, directions=(0, 45, 22.5), frames=4, size=16, channels=1, seed=0)
    assert x.shape == (6, 1, 4, 16, 16)
    assert names == ["dir000", "dir045", "dir022.5"]
    assert class_names_for((180, 0)) == ["left", "right"]


def test_every_clip_moves_towards_its_label() -> None:
    """Of the four one-pixel moves, the labelled direction best explains each next frame."""
    x, y, _ = motion_clips(8, speed=1.0, seed=7)
    moves = [(0, 1), (1, 0), (0, -1), (-1, 0)]  # (rows, cols) for right, down, left, up
    for clip, label in zip(x, y):
        errors = []
        for rows, cols in moves:
            shifted = np.roll(clip[:, :-1], (rows, cols), axis=(2, 3))
            errors.append(float(np.abs(clip[:, 1:, 3:-3, 3:-3] - shifted[:, :, 3:-3, 3:-3]).mean()))
        assert int(np.argmin(errors)) == int(label), errors


def test_motion_module_does_not_import_torch() -> None:
    code = "import sys, workers.samples.motion as m; m.motion_clips(1); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert motion.__name__ == "workers.samples.motion"


# --- the model, training and exports ----------------------------------------------------------


@pytest.fixture
def model() -> C3DSmall:
    torch.manual_seed(0)
    return C3DSmall().eval()


def test_c3d_small_shapes_and_stable_layer_names(model: C3DSmall) -> None:
    names = {name for name, _ in model.named_modules()}
    assert {"conv1", "pool1", "conv2", "pool2", "conv3", "fc"} <= names
    assert model(torch.zeros(2, *INPUT_SPEC.shape)).shape == (2, 4)
    wide = C3DSmall(num_classes=8, width=8)
    assert wide.conv3.out_channels == 32 and wide(torch.zeros(1, *INPUT_SPEC.shape)).shape == (1, 8)


def test_sample_input_is_normalised_and_seeded() -> None:
    x = sample_input(5, seed=1)
    assert x.shape == (5, *INPUT_SPEC.shape) and x.dtype == torch.float32
    raw = x * 0.25 + 0.5
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert torch.equal(x, sample_input(5, seed=1))


def test_reduced_training_is_deterministic_and_reports_metrics() -> None:
    caller_rng = torch.get_rng_state()
    first, metrics = train_c3d(seed=0, n_per_class=4, epochs=1, eval_per_class=2)
    assert torch.equal(torch.get_rng_state(), caller_rng), "training must not reseed the caller's RNG"
    second, _ = train_c3d(seed=0, n_per_class=4, epochs=1, eval_per_class=2)
    other, _ = train_c3d(seed=1, n_per_class=4, epochs=1, eval_per_class=2)
    assert not first.training
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert not torch.equal(first.fc.weight, other.fc.weight)
    assert {"train_accuracy", "eval_accuracy", "seconds", "samples"} <= set(metrics)
    assert metrics["samples"] == 16 and 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["seconds"] > 0


def test_export_pt2_round_trips_at_any_batch(model: C3DSmall, tmp_path) -> None:
    path = tmp_path / "c3d.pt2"
    export_pt2(model, path)
    loaded = torch.export.load(path).module()
    for batch in (1, 3):
        x = sample_input(batch, seed=batch)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)


def test_export_onnx_is_valid_self_contained_and_agrees_with_onnxruntime(model: C3DSmall, tmp_path) -> None:
    import onnx
    import onnxruntime

    path = tmp_path / "c3d.onnx"
    export_onnx(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c3d.onnx"], "weights must be inline"
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 20
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = sample_input(batch, seed=batch)
        (logits,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(x).numpy(), rtol=0, atol=1e-4)

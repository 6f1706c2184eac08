"""Synthetic motion clips whose answer is known: drifting gratings and translating textures.

Every known-answer test and the demo model are built from these, so the geometry is fixed here once:

    x = column index (to the right), y = row index (DOWN the image).
    direction 0° = +x (right), 90° = +y (down), 180° = left, 270° = up.
    velocity (vx, vy) = speed · (cos θ, sin θ) in pixels per frame.
    Content at (x, y) in frame 0 is at (x + vx·t, y + vy·t) in frame t.

Arrays are float32 (C, T, H, W) in [0, 1]; numpy only, so importing this never pulls in torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_CARDINAL_NAMES = {0: "right", 90: "down", 180: "left", 270: "up"}


def _coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) pixel grids of shape (size, size): x varies along columns, y along rows."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return x, y


def drifting_grating(
    direction_deg: float,
    speed: float,
    frames: int,
    size: int,
    wavelength: float = 8.0,
    phase: float = 0.0,
    channels: int = 3,
) -> np.ndarray:
    """A sinusoidal grating drifting `speed` px/frame towards `direction_deg`, shape (C, T, H, W) in [0, 1].

    Convention: x = column (right), y = row (down); 0° = right, 90° = down; velocity =
    speed·(cos θ, sin θ). The wave vector points along the motion, so the bars are perpendicular
    to it and the grating's only measurable (normal) velocity is the full velocity.
    Frame t is 0.5 + 0.5·cos(2π/λ · u·(p − v·t) + phase) with u the unit direction and p = (x, y).
    """
    if frames < 1 or size < 1 or channels < 1:
        raise ValueError(f"frames, size and channels must be positive, got {frames}, {size}, {channels}")
    if wavelength <= 0:
        raise ValueError(f"wavelength must be positive, got {wavelength}")
    theta = np.deg2rad(direction_deg)
    ux, uy = np.cos(theta), np.sin(theta)
    x, y = _coordinates(size)
    along = ux * x + uy * y  # position along the motion direction, (H, W)
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    video = 0.5 + 0.5 * np.cos(2.0 * np.pi / wavelength * (along[None] - speed * t) + phase)
    return np.broadcast_to(video[None], (channels, frames, size, size)).astype(np.float32)


def translating_texture(texture: np.ndarray, velocity: tuple[float, float], frames: int) -> np.ndarray:
    """Frame t = `texture` (C, H, W) shifted by t·(vx, vy) px with wrap-around; returns (C, T, H, W).

    The shift is a Fourier phase ramp, an exact translation of the periodic texture for any
    sub-pixel velocity (no bilinear blur), and bit-for-bit a roll for integer shifts up to
    float error. Content at (x, y) in frame 0 appears at (x + vx·t, y + vy·t) in frame t.
    """
    texture = np.asarray(texture)
    if texture.ndim != 3:
        raise ValueError(f"texture must be (C, H, W), got shape {texture.shape}")
    if frames < 1:
        raise ValueError(f"frames must be positive, got {frames}")
    vx, vy = (float(v) for v in velocity)
    _, height, width = texture.shape
    spectrum = np.fft.fft2(texture.astype(np.float64), axes=(-2, -1))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    # I_t(p) = I_0(p - v t)  <=>  F_t(k) = F_0(k) · exp(-2πi k·v t)
    ramp = np.exp(-2j * np.pi * (fx * vx + fy * vy)[None] * t)  # (T, H, W)
    video = np.fft.ifft2(spectrum[:, None] * ramp[None], axes=(-2, -1)).real
    lo, hi = float(texture.min()), float(texture.max())
    # A sub-pixel shift can ring a hair outside the texture's range; keep the range it came with.
    return np.clip(video, lo, hi).astype(np.float32)


def random_texture(size: int, channels: int = 3, seed: int = 0, smoothness: float = 2.0) -> np.ndarray:
    """Smooth, periodic random texture (C, H, W) in [0, 1]: Gaussian noise low-passed in Fourier space.

    `smoothness` is the blur's standard deviation in pixels (larger = coarser blobs). The texture
    is periodic so that `translating_texture` wraps it without a seam. Channels share a luminance
    pattern plus their own colour variation, like natural images.
    """
    if size < 2 or channels < 1:
        raise ValueError(f"size must be >= 2 and channels >= 1, got {size}, {channels}")
    if smoothness < 0:
        raise ValueError(f"smoothness must be >= 0, got {smoothness}")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((channels + 1, size, size))
    noise = 0.8 * noise[:1] + 0.6 * noise[1:]  # shared luminance + per-channel colour
    f = np.fft.fftfreq(size)
    radius2 = f[:, None] ** 2 + f[None, :] ** 2
    lowpass = np.exp(-2.0 * (np.pi * smoothness) ** 2 * radius2)  # Fourier transform of a Gaussian blur
    smooth = np.fft.ifft2(np.fft.fft2(noise, axes=(-2, -1)) * lowpass, axes=(-2, -1)).real
    lo, hi = smooth.min(), smooth.max()
    return ((smooth - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def class_names_for(directions: Sequence[float]) -> list[str]:
    """"right"/"down"/"left"/"up" when every direction is cardinal, else "dir045", "dir022.5", ..."""
    normalised = [float(d) % 360.0 for d in directions]
    if all(d in _CARDINAL_NAMES for d in normalised):
        return [_CARDINAL_NAMES[int(d)] for d in normalised]
    return [f"dir{int(d):03d}" if d.is_integer() else f"dir{d:05.1f}" for d in normalised]


def motion_clips(
    n_per_class: int,
    directions: Sequence[float] = (0, 90, 180, 270),
    speed: float = 1.0,
    frames: int = 8,
    size: int = 32,
    channels: int = 3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A shuffled, seeded, balanced set of clips whose class k is motion towards directions[k].

    Half of each class are drifting gratings (random wavelength and phase), half translating
    random textures; speed jitters ±20 %, brightness and contrast jitter, light pixel noise.
    Returns x float32 (N, C, T, H, W) in [0, 1], y int64 (N,), class_names (see `class_names_for`).
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be positive, got {n_per_class}")
    if len(directions) < 1:
        raise ValueError("need at least one direction")
    rng = np.random.default_rng(seed)
    clips: list[np.ndarray] = []
    labels: list[int] = []
    for label, direction in enumerate(directions):
        for i in range(n_per_class):
            clip_speed = speed * rng.uniform(0.8, 1.2)
            if i % 2 == 0:
                clip = drifting_grating(
                    direction,
                    clip_speed,
                    frames,
                    size,
                    wavelength=rng.uniform(5.0, 12.0),
                    phase=rng.uniform(0.0, 2.0 * np.pi),
                    channels=channels,
                )
                clip = clip * rng.uniform(0.7, 1.0, size=(channels, 1, 1, 1))  # a random tint
            else:
                texture = random_texture(
                    size, channels, seed=int(rng.integers(2**31)), smoothness=rng.uniform(1.0, 2.5)
                )
                theta = np.deg2rad(direction)
                clip = translating_texture(texture, (clip_speed * np.cos(theta), clip_speed * np.sin(theta)), frames)
            contrast = rng.uniform(0.6, 1.0)
            brightness = rng.uniform(-0.1, 0.1)
            clip = 0.5 + brightness + contrast * (clip - 0.5)
            clip = clip + rng.normal(0.0, 0.02, size=clip.shape)
            clips.append(np.clip(clip, 0.0, 1.0).astype(np.float32))
            labels.append(label)
    order = rng.permutation(len(clips))
    x = np.stack(clips)[order]
    y = np.asarray(labels, dtype=np.int64)[order]
    return x, y, class_names_for(directions)

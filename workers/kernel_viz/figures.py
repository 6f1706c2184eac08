"""Pictures of stage 1 and 2: the optimal video (GIF), its texture (PNG), its motion (HSV flow GIF
with arrows and a colour-wheel legend) and a per-layer contact sheet.

Why one brightness scale per layer: the reference tuned each flow map's brightness by hand, so
a slow kernel looked as bright as a fast one; here value = speed / (the layer's largest speed),
so maps of one layer compare at a glance. Hue = direction with the project's convention
(0° = right, 90° = down, as on screen). Small canvases are upscaled with nearest neighbour, so
every model pixel stays visible as a block.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.colors import hsv_to_rgb
from PIL import Image, ImageDraw

from workers.kernel_viz import defaults

_LEGEND = 40  # colour-wheel panel width in pixels
_LABEL = 12  # contact-sheet label strip height in pixels


def to_rgb(video: torch.Tensor, value_range: tuple[float, float]) -> np.ndarray:
    """(C, T, H, W) raw values → (T, H, W, 3) uint8: grey for 1 channel, RGB for 3, the first 3 (or 2 + their mean) otherwise."""
    lo, hi = value_range
    x = ((video.detach().float().cpu() - lo) / max(hi - lo, 1e-12)).clamp(0, 1).numpy()
    c = x.shape[0]
    if c == 1:
        x = np.repeat(x, 3, axis=0)
    elif c == 2:
        x = np.concatenate([x, x.mean(axis=0, keepdims=True)], axis=0)
    else:
        x = x[:3]
    return (np.moveaxis(x, 0, -1) * 255.0 + 0.5).astype(np.uint8)


def upscale(frames: np.ndarray, size: int = defaults.FIGURE_SIZE) -> np.ndarray:
    """(T, H, W, 3) → nearest-neighbour upscaled by the integer factor that brings the longer side near `size`."""
    factor = max(1, round(size / max(frames.shape[1:3])))
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def flow_to_rgb(velocity: torch.Tensor, max_speed: float) -> np.ndarray:
    """(T−1, 2, H, W) px/frame → (T−1, H, W, 3) uint8: hue = direction, value = speed / max_speed."""
    v = velocity.detach().float().cpu().numpy()
    vx, vy = v[:, 0], v[:, 1]
    hue = (np.degrees(np.arctan2(vy, vx)) % 360.0) / 360.0
    value = np.clip(np.hypot(vx, vy) / max(max_speed, 1e-12), 0.0, 1.0)
    hsv = np.stack([hue, np.ones_like(hue), value], axis=-1)
    return (hsv_to_rgb(hsv) * 255.0 + 0.5).astype(np.uint8)


def colour_wheel(size: int) -> np.ndarray:
    """(size, size, 3) uint8 legend: hue = direction (0° right, 90° down), brightness = speed up to the layer's maximum."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (size - 1) / 2.0
    dx, dy = x - c, y - c
    radius = np.hypot(dx, dy) / c
    hue = (np.degrees(np.arctan2(dy, dx)) % 360.0) / 360.0
    hsv = np.stack([hue, np.ones_like(hue), np.clip(radius, 0, 1)], axis=-1)
    rgb = hsv_to_rgb(hsv)
    rgb[radius > 1.0] = 1.0
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def save_gif(path: Path, frames: Sequence[np.ndarray], frame_ms: int = defaults.FRAME_MS) -> None:
    """Looping GIF of (H, W, 3) uint8 frames (a fast octree palette per frame: median cut took 20 ms a frame)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f).quantize(colors=255, method=Image.Quantize.FASTOCTREE) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)


def save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, optimize=True)


def flow_frames(velocity: torch.Tensor, max_speed: float, size: int = defaults.FIGURE_SIZE) -> list[np.ndarray]:
    """One HSV frame per velocity field (T−1, 2, H, W) with arrows on a coarse grid and a colour-wheel panel."""
    colours = flow_to_rgb(velocity, max_speed)
    t, h, w = colours.shape[:3]
    big = upscale(colours, size)
    factor = big.shape[1] // h
    step = max(1, round(max(h, w) / defaults.ARROWS_PER_SIDE))
    # An arrow of the layer's top speed spans one grid cell.
    length = step * factor / max(max_speed, 1e-12) * 0.9
    wheel = colour_wheel(_LEGEND - 8)
    v = velocity.detach().float().cpu().numpy()
    frames = []
    for i in range(t):
        canvas = Image.new("RGB", (big.shape[2] + _LEGEND, max(big.shape[1], _LEGEND)), (255, 255, 255))
        canvas.paste(Image.fromarray(big[i]), (0, 0))
        canvas.paste(Image.fromarray(wheel), (big.shape[2] + 4, 4))
        draw = ImageDraw.Draw(canvas)
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                _arrow(draw, ((x + 0.5) * factor, (y + 0.5) * factor), v[i, 0, y, x] * length, v[i, 1, y, x] * length)
        frames.append(np.asarray(canvas))
    return frames


def flow_gif(path: Path, velocity: torch.Tensor, max_speed: float) -> None:
    """The motion (T−1, 2, H, W) as a looping GIF, brightness on the layer's scale `max_speed`."""
    save_gif(path, flow_frames(velocity, max_speed))


def contact_sheet(
    path: Path,
    tiles: Sequence[tuple[str, Sequence[np.ndarray]]],
    columns: int = 4,
    size: int = defaults.TILE_SIZE,
) -> None:
    """One PNG with a cell per channel: its label above its panels ((H, W, 3) uint8 each, e.g. a
    video frame, the texture and the mean flow), `columns` cells per row."""
    if not tiles:
        return
    panels = [[upscale(p[None], size)[0] for p in images] for _, images in tiles]
    count = max(len(row) for row in panels)
    ph = max(p.shape[0] for row in panels for p in row)
    pw = max(p.shape[1] for row in panels for p in row)
    cell_w, cell_h = count * (pw + 2) + 6, ph + _LABEL + 4
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, ((label, _), images) in enumerate(zip(tiles, panels)):
        x0, y0 = (k % columns) * cell_w, (k // columns) * cell_h
        draw.text((x0 + 2, y0), label, fill=(0, 0, 0))
        for j, image in enumerate(images):
            sheet.paste(Image.fromarray(image), (x0 + j * (pw + 2), y0 + _LABEL))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def _arrow(draw: ImageDraw.ImageDraw, origin: tuple[float, float], dx: float, dy: float) -> None:
    """A black-outlined white arrow from `origin` by (dx, dy) screen pixels (y down); nothing when shorter than 2 px."""
    if math.hypot(dx, dy) < 2.0:
        return
    x0, y0 = origin
    x1, y1 = x0 + dx, y0 + dy
    angle = math.atan2(dy, dx)
    head = min(6.0, 0.4 * math.hypot(dx, dy))
    barbs = [(x1 - head * math.cos(angle + s), y1 - head * math.sin(angle + s)) for s in (0.5, -0.5)]
    for colour, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=width)
        for bx, by in barbs:
            draw.line([(x1, y1), (bx, by)], fill=colour, width=width)

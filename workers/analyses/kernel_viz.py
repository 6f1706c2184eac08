"""The `kernel_viz` task: texture and motion of every requested 3D (or 2D) convolution kernel.

Options: KernelVizOptions, read into Options below (each field's default and unit).

Summary (also written to kernel_viz/kernel_viz.json):

    {"objective", "steps", "seed", "tv_weight", "device",
     "conventions": {axes, angles, units: see CONVENTIONS below},
     "layers": [{
        "name", "kind" ("conv3d" | "conv2d" | module type),
        "canvas": [T, H, W], "receptive_field": [T, H, W] (of the centre unit, in input pixels/frames),
        "jitter": [t, y, x] (largest shift per axis), "placed_in_full_input" (the network refused the
        canvas alone, so it was placed inside a full-size mid-grey input),
        "flow_scale_px_per_frame" (speed shown at full brightness in this layer's flow maps),
        "motion_frames" (canvas frames the motion is measured over: those the centre unit sees for the
            NEURON objective, every frame for CHANNEL; fewer than 2 means no motion stage),
        "channels": [{
            "index", "activation" (reached by the optimal video),
            "random_activation" (the optimal video's values randomly permuted: same norm and value
                distribution, no structure), "ratio" (activation / |random_activation|),
            "motion_significant" (the held-out motion gain reaches 0.5 (0.7 over 3 frames, 0.8 over 2), the
                speed 0.05 px/frame, and the speed is at most half the receptive field's smaller side per
                frame; None without a motion stage),
            "motion_gain" (the smallest 1 − error(v) / error(−v) of the dominant velocity v on frame pairs
                and window halves it was not fitted on: ~0 or below for noise, independent frames or a
                static pattern, ~1 for a translation),
            "direction_deg" (0 = right, 90 = down; None unless motion_significant),
            "speed_px_per_frame" (dominant motion, pixels of the model's input per frame; None unless
                motion_significant),
            "direction_selectivity" ((R − R_reversed) / (|R| + |R_reversed|), R_reversed = the video played backwards),
            "motion_dependence" (1 − act(static texture) / act(optimal)),
            "order_dependence" (1 − act(time-shuffled frames) / act(optimal)),
            "flow_coherence" (|mean flow| / mean |flow| in the receptive field, 1 = one uniform motion),
            "reconstruction_error" (‖warped texture − video‖ / ‖video − its mean‖),
            "reconstruction_activation", "static_activation", "shuffled_activation", "reversed_activation",
            "dead" (the optimisation could not raise the channel above a random input)}],
        "timing": {"receptive_field_s", "stage1_s", "stage2_s", "evaluation_s", "figures_s", "total_s",
                   "channels_per_s" (stage 1)}}]}

Motion fields are None for 2D layers (T = 1), for layers whose centre unit sees one frame, and for
dead channels; direction and speed also where the motion is not significant. Ratios are None where their
denominator is ~0.
Artifacts: kernel_viz/<layer>/chNNN_video.gif, chNNN_texture.png, chNNN_flow.gif (3D layers),
kernel_viz/<layer>/contact_sheet.png, kernel_viz/kernel_viz.json.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from workers import layers
from workers.analysis import Analysis, Outcome, plain
from workers.context import TaskContext
from workers.errors import BadOptions, ModelUnusable
from workers.kernel_viz import defaults, figures
from workers.kernel_viz.decomposition import decompose, hann_window
from workers.kernel_viz.motion import direction_selectivity, motion_dependence, structure_weights, summarise
from workers.kernel_viz.objective import Objective
from workers.kernel_viz.receptive_field import CanvasPlan, plan_canvas
from workers.kernel_viz.renderer import Rendering, channel_generator, evaluate, memory_budget, render
from workers.kernel_viz.target import LayerTarget, Size3, input_size
from workers.kernel_viz.transforms import Jitter
from workers.options import TaskOptions, option

_MAX_STEPS = 100_000
# How to read every figure of the summary (the same as workers/samples/motion.py's).
CONVENTIONS = {
    "video_axes": "(C, T, H, W) of the model's raw input; canvas, receptive_field and jitter are [T, H, W]",
    "x": "column index, increasing to the right",
    "y": "row index, increasing down the image",
    "direction_deg": "0 = +x (right), 90 = +y (down, image rows), 180 = left, 270 = up; in [0, 360)",
    "velocity": "(vx, vy) = speed * (cos, sin) of direction_deg; content at (x, y) in frame t is at (x + vx, y + vy) in frame t + 1",
    "speed_px_per_frame": "pixels of the model's input (canvas) per input frame, whatever the layer's strides",
    "motion_frames": "indices into the canvas's frames, counted from 0",
    "motion_gain": "smallest held-out 1 - error(v) / error(-v); significant at >= 0.5 (0.7 over 3 frames, 0.8 over 2) with speed >= 0.05 px/frame",
    "activation": "the layer's raw output (before any later nonlinearity): centre unit (NEURON) or channel mean (CHANNEL)",
}


@dataclass(frozen=True)
class Options(TaskOptions):
    """KernelVizOptions."""

    TASK = "kernel_viz"

    layers: tuple[str, ...] = option((), "module paths; empty = every Conv3d, Conv2d and TConv3d")
    channels: tuple[int, ...] = option((), "output channel indices; empty = all")
    steps: int = option(defaults.STEPS, "stage-1 optimisation steps per channel, in [1, 100000]")
    seed: int = option(0, "seed of the random start, jitter and permutations")
    objective: str = option("NEURON", "NEURON (the centre unit) or CHANNEL (the channel mean)")
    canvas: tuple[int, ...] = option((), "[T, H, W] in input frames/pixels; empty = receptive field + jitter margin")
    tv_weight: float = option(defaults.TV_WEIGHT, "weight of the stage-2 total variation, >= 0")

    def check(self) -> None:
        try:
            Objective.parse(self.objective)
        except ValueError as exc:
            raise BadOptions(f"objective must be NEURON or CHANNEL, got {self.objective!r}", reason="BAD_OBJECTIVE") from exc
        if not 1 <= self.steps <= _MAX_STEPS:
            raise BadOptions(f"steps must be in [1, {_MAX_STEPS}], got {self.steps}", reason="BAD_STEPS")
        if not (math.isfinite(self.tv_weight) and self.tv_weight >= 0):
            raise BadOptions(f"tv_weight must be a finite number >= 0, got {self.tv_weight}", reason="BAD_TV_WEIGHT")
        if any(c < 0 for c in self.channels):
            raise BadOptions(f"channel indices must be >= 0, got {list(self.channels)}", reason="CHANNEL_OUT_OF_RANGE")


@dataclass(frozen=True)
class _Settings:
    """The options as a run uses them: channels without repeats, the objective parsed, the canvas checked."""

    channels: list[int]
    steps: int
    seed: int
    objective: Objective
    canvas: Size3 | None
    tv_weight: float


class KernelViz(Analysis[Options]):
    options = Options
    summary_json = {"indent": 1}

    def run(self, ctx: TaskContext, options: Options) -> Outcome:
        """Visualise every requested channel of every requested layer; see the module docstring for the summary."""
        settings = _Settings(
            list(dict.fromkeys(options.channels)), options.steps, options.seed, Objective.parse(options.objective),
            _canvas(list(options.canvas), ctx), options.tv_weight,
        )
        module = ctx.model.require_module(self.name)
        layers = list(options.layers) or conv_layers(module)
        known = dict(module.named_modules())
        for name in layers:
            if not name or name not in known:
                raise BadOptions(
                    f"no layer named {name!r}; convolution layers: {', '.join(conv_layers(module)[:50])}",
                    reason="UNKNOWN_LAYER",
                )
        if not layers:
            raise ModelUnusable(
                "the model has no convolution layer to visualise; name the layers to visualise in `layers`",
                reason="NO_CONV_LAYERS",
            )
        summary: dict[str, Any] = {
            "objective": settings.objective.value,
            "steps": settings.steps,
            "seed": settings.seed,
            "tv_weight": settings.tv_weight,
            "device": str(ctx.device),
            "conventions": dict(CONVENTIONS),
            "layers": [],
        }
        for i, name in enumerate(layers):

            def progress(stage: str, fraction: float, i: int = i, name: str = name) -> None:
                ctx.progress(f"{name}: {stage}", min(1.0, (i + fraction) / len(layers)))

            summary["layers"].append(_layer(ctx, settings, name, _kind(known[name]), ctx.out_dir / _safe(name), progress))
        ctx.progress("done", 1.0)
        return Outcome(summary)


ANALYSIS = KernelViz()


def conv_layers(module: nn.Module) -> list[str]:
    """Names of the 2D and 3D convolution layers (Conv3d / Conv2d / TConv3d), by what each computes
    (workers.layers.kind: the rule describe lists them by)."""
    return [name for name, m in module.named_modules() if name and layers.kind(m) in layers.VISUAL_KINDS]


def _kind(module: nn.Module) -> str:
    """The layer's kind by what it computes (workers.layers.kind), as describe reports it."""
    return layers.kind(module) or type(module).__name__


def _layer(
    ctx: TaskContext,
    options: _Settings,
    name: str,
    kind: str,
    out_dir: Path,
    progress: Callable[[str, float], None],
) -> dict[str, Any]:
    started = time.perf_counter()
    timing: dict[str, float] = {}
    progress("receptive field", 0.0)
    target = LayerTarget(ctx.model, name, ctx.device)
    plan = plan_canvas(target, options.canvas)
    placed = target.placed(plan.offset)
    with torch.no_grad(), placed.frozen():
        out_channels = int(placed(torch.zeros((1, target.channels, *plan.size))).shape[1])
    channels = options.channels or list(range(out_channels))
    bad = [c for c in channels if c >= out_channels]
    if bad:
        raise BadOptions(
            f"channels {bad} out of range for layer {name!r} with {out_channels} channels", reason="CHANNEL_OUT_OF_RANGE"
        )
    timing["receptive_field_s"] = time.perf_counter() - started

    rendering = render(
        placed,
        channels,
        plan.size,
        objective=options.objective,
        steps=options.steps,
        seed=options.seed,
        jitter=Jitter(plan.jitter, defaults.SCALE_JITTER),
        progress=lambda f: progress("stage 1", 0.05 + 0.7 * f),
    )
    timing["stage1_s"] = rendering.seconds
    videos = rendering.videos

    mark = time.perf_counter()
    random = evaluate(placed, _permuted(videos, channels, options.seed), channels, options.objective)
    timing["evaluation_s"] = time.perf_counter() - mark

    frames = motion_frames(plan, options.objective)
    if len(frames) >= 2:
        motion = _motion(ctx, options, placed, plan, rendering, frames, progress)
    else:  # an image model, or a unit that sees one frame: nothing it sees can move
        still = videos[:, :, frames[0] if frames else 0]
        motion = _Motion(textures=still, rows=[dict.fromkeys(_MOTION_KEYS) for _ in channels])
    timing["stage2_s"] = motion.seconds
    timing["evaluation_s"] += motion.evaluation_seconds
    rows = motion.rows

    gains = [a - r for a, r in zip(rendering.activations, random)]
    top_gain = max(gains) if gains else 0.0
    for k, (channel, row) in enumerate(zip(channels, rows)):
        act, rnd = rendering.activations[k], random[k]
        dead = rendering.max_gradient[k] == 0.0 or top_gain <= 0.0 or gains[k] <= defaults.DEAD_GAIN_FRACTION * top_gain
        if dead:  # its video is the untouched random start: motion measured on it would mean nothing
            row = {key: None for key in row}
        rows[k] = {
            "index": int(channel),
            "activation": act,
            "random_activation": rnd,
            "ratio": act / abs(rnd) if abs(rnd) > 1e-12 else None,
            **row,
            "dead": bool(dead),
        }

    progress("figures", 0.95)
    mark = time.perf_counter()
    _figures(out_dir, channels, videos, motion.textures, motion.velocity, motion.flow_scale, rows, target.value_range)
    timing["figures_s"] = time.perf_counter() - mark
    timing["total_s"] = time.perf_counter() - started
    timing["channels_per_s"] = len(channels) / rendering.seconds if rendering.seconds > 0 else None
    progress("done", 1.0)
    return plain(
        {
            "name": name,
            "kind": {"Conv3d": "conv3d", "Conv2d": "conv2d"}.get(kind, kind),
            "canvas": list(plan.size),
            "receptive_field": list(plan.full_field.size),
            "jitter": list(plan.jitter),
            "placed_in_full_input": plan.offset is not None,
            "flow_scale_px_per_frame": motion.flow_scale,
            "motion_frames": frames,
            "channels": rows,
            "timing": timing,
        }
    )


_MOTION_KEYS = (
    "motion_significant",
    "motion_gain",
    "direction_deg",
    "speed_px_per_frame",
    "direction_selectivity",
    "motion_dependence",
    "order_dependence",
    "flow_coherence",
    "reconstruction_error",
    "reconstruction_activation",
    "static_activation",
    "shuffled_activation",
    "reversed_activation",
)


@dataclass
class _Motion:
    """Stage 2 of one layer: textures (K, C, H, W), velocities (K, T−1, 2, H, W) or None, and each channel's motion fields."""

    textures: torch.Tensor
    rows: list[dict[str, Any]]
    velocity: torch.Tensor | None = None
    flow_scale: float | None = None
    seconds: float = 0.0
    evaluation_seconds: float = 0.0


def motion_frames(plan: CanvasPlan, objective: Objective) -> list[int]:
    """The canvas frames whose motion is the unit's: those the centre unit sees (NEURON), or all (CHANNEL: the
    channel mean sees every frame). Jitter frames and frames beyond the temporal receptive field carry
    almost no motion; counted like the others they under-reported a 5-frame kernel's speed by 20-35 %."""
    if objective is Objective.CHANNEL:
        return list(range(plan.size[0]))
    return list(plan.field.seen_frames)


def _motion(
    ctx: TaskContext,
    options: _Settings,
    placed: LayerTarget,
    plan: CanvasPlan,
    rendering: Rendering,
    frames: list[int],
    progress: Callable[[str, float], None],
) -> _Motion:
    """Decompose every optimal video over `frames`, push its variants back through the network, summarise the motion."""
    started = time.perf_counter()
    videos, channels = rendering.videos, rendering.channels
    if options.objective is Objective.CHANNEL:  # every unit of the channel counts: the whole canvas
        box = (0, plan.size[1] - 1, 0, plan.size[2] - 1)
    else:
        box = (plan.field.lo[1], plan.field.hi[1], plan.field.lo[2], plan.field.hi[2])
    focus = hann_window(*plan.size[1:], box)
    # Stage 2 keeps ~24 copies of a video alive (warps, gradients, Adam moments): chunk to the budget.
    per_video = 24 * videos[0].numel() * videos.element_size()
    chunk = max(1, min(len(channels), memory_budget(torch.device(ctx.device)) // per_video))
    parts = []
    reach = math.inf
    for s in range(0, len(channels), chunk):
        part = decompose(
            videos[s : s + chunk].to(ctx.device), placed.value_range, focus=focus, frames=frames, tv_weight=options.tv_weight
        )
        parts.append([x.cpu() for x in (part.texture, part.velocity, part.dominant, part.gain, part.reconstruction, part.error)])
        reach = part.reach
        progress("stage 2", 0.75 + 0.15 * min(1.0, (s + chunk) / len(channels)))
    textures, velocity, dominant, gain, reconstruction, errors = (torch.cat(column) for column in zip(*parts))
    seconds = time.perf_counter() - started

    progress("evaluation", 0.9)
    started = time.perf_counter()
    # Each variant changes only the frames the motion was measured over; the others stay as they were.
    order = [frames[i] for i in _shuffled_order(len(frames), options.seed)]
    variants = {
        "reconstruction": _replaced(videos, frames, reconstruction),
        "static": _replaced(videos, frames, textures[:, :, None].expand(-1, -1, len(frames), -1, -1)),
        "shuffled": _replaced(videos, frames, videos[:, :, order]),
        "reversed": _replaced(videos, frames, videos[:, :, frames[::-1]]),
    }
    act = {label: evaluate(placed, variant, channels, options.objective) for label, variant in variants.items()}
    region = torch.zeros(plan.size[1:])
    region[box[0] : box[1] + 1, box[2] : box[3] + 1] = 1.0
    motions = summarise(dominant, velocity, structure_weights(videos[:, :, frames], region), gain, reach)
    speeds = velocity.norm(dim=2).flatten().float()
    # One brightness scale for the layer's flow maps: its 99th-percentile speed (a few outliers do not dim the rest).
    flow_scale = float(torch.quantile(speeds[:1_000_000], 0.99)) if speeds.numel() else 0.0
    rows = []
    for k, optimal in enumerate(rendering.activations):
        rows.append(
            {
                "motion_significant": motions[k].significant,
                "motion_gain": motions[k].gain,
                "direction_deg": motions[k].direction_deg,
                "speed_px_per_frame": motions[k].speed,
                "direction_selectivity": direction_selectivity(optimal, act["reversed"][k]),
                "motion_dependence": motion_dependence(act["static"][k], optimal),
                "order_dependence": motion_dependence(act["shuffled"][k], optimal),
                "flow_coherence": motions[k].coherence,
                "reconstruction_error": float(errors[k]),
                "reconstruction_activation": act["reconstruction"][k],
                "static_activation": act["static"][k],
                "shuffled_activation": act["shuffled"][k],
                "reversed_activation": act["reversed"][k],
            }
        )
    return _Motion(textures, rows, velocity, flow_scale, seconds, time.perf_counter() - started)


def _figures(
    out_dir: Path,
    channels: list[int],
    videos: torch.Tensor,
    textures: torch.Tensor,
    velocity: torch.Tensor | None,
    flow_scale: float | None,
    rows: list[dict[str, Any]],
    value_range: tuple[float, float],
) -> None:
    tiles = []
    for k, channel in enumerate(channels):
        stem = f"ch{channel:03d}"
        texture = figures.to_rgb(textures[k][:, None], value_range)[0]
        figures.save_png(out_dir / f"{stem}_texture.png", figures.upscale(texture[None])[0])
        panels = [texture]
        label = f"{stem}"
        if velocity is not None and flow_scale is not None:
            frames = figures.to_rgb(videos[k], value_range)
            figures.save_gif(out_dir / f"{stem}_video.gif", list(figures.upscale(frames)))
            figures.flow_gif(out_dir / f"{stem}_flow.gif", velocity[k], flow_scale)
            mean_flow = figures.flow_to_rgb(velocity[k].mean(dim=0, keepdim=True), flow_scale)[0]
            panels = [frames[len(frames) // 2], texture, mean_flow]
            direction, speed = rows[k].get("direction_deg"), rows[k].get("speed_px_per_frame")
            if speed is not None:
                label += f" {speed:.2f}px/f" + (f" {direction:.0f}°" if direction is not None else "")
        if rows[k]["dead"]:
            label += " dead"
        tiles.append((label, panels))
    figures.contact_sheet(out_dir / "contact_sheet.png", tiles)


def _replaced(videos: torch.Tensor, frames: list[int], content: torch.Tensor) -> torch.Tensor:
    """A copy of videos (K, C, T, H, W) whose `frames` hold `content` (K, C, len(frames), H, W)."""
    out = videos.clone()
    out[:, :, frames] = content.to(out)
    return out


def _permuted(videos: torch.Tensor, channels: list[int], seed: int) -> torch.Tensor:
    """Each video's values in a random order (seeded per channel): same norm and histogram, no structure."""
    out = torch.empty_like(videos)
    for k, channel in enumerate(channels):
        generator = channel_generator(seed + 1, channel)
        flat = videos[k].flatten()
        out[k] = flat[torch.randperm(flat.numel(), generator=generator)].view_as(videos[k])
    return out


def _shuffled_order(frames: int, seed: int) -> list[int]:
    """A seeded permutation of the frames that is not the identity (for two frames: the swap)."""
    generator = torch.Generator().manual_seed(int(seed) + 7)
    for _ in range(100):
        order = torch.randperm(frames, generator=generator).tolist()
        if order != list(range(frames)):
            return order
    return list(reversed(range(frames)))


def _canvas(values: list[int], ctx: TaskContext) -> Size3 | None:
    """The canvas override as (T, H, W), checked against the model's input; an image model takes [H, W] or [1, H, W]."""
    if not values:
        return None
    spec = ctx.model.input_spec
    full = input_size(spec)
    if len(values) == 2 and len(spec.spatial) == 2:
        values = [1, *values]
    if len(values) != 3 or any(v < 1 for v in values) or any(v > f for v, f in zip(values, full)):
        raise BadOptions(
            f"canvas must be [T, H, W] with 1 <= each <= the model's input {list(full)}, got {values}",
            reason="BAD_CANVAS",
        )
    return tuple(values)  # type: ignore[return-value]


def _safe(name: str) -> str:
    """A layer name as one path component."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"

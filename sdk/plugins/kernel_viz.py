"""kernel_viz in the SDK: its options' defaults, gate metrics, findings, verdicts and report section.

The analysis (Li & Li 2025, ANALYSES.md) optimises, per channel of a 3D conv layer, the video that drives it
most, and splits that video into a texture and its motion. Summary: {"objective", "steps", "seed", "tv_weight",
"device", "layers": [{"name", "kind", "canvas", "receptive_field", "jitter", "placed_in_full_input",
"flow_scale_px_per_frame", "channels": [{"index", "activation", "random_activation", "ratio", "direction_deg",
"speed_px_per_frame", "direction_selectivity", "motion_dependence", "order_dependence", "flow_coherence",
"reconstruction_error", ..., "dead"}], "timing"}]}. The dead-kernel count is not in the summary: it is counted
here from the per-channel flags.
"""

from __future__ import annotations

import math
import re
from html import escape
from typing import Any, Callable, Iterable

from sdk import metrics
from sdk.report import charts
from sdk.metrics import Extractor, Metric
from sdk.plugins.base import Figures, Plugin, Summary, Verdict
from sdk.plugins.summaries import ARROWS, arrow, compass, layer_agreement, layer_names, mean, median, pick_layers
from sdk.report.assets import Assets
from sdk.report.html import Html, figure, fmt, grid, kv, table
from sdk.result import TaskOutcome

# What an unset option means, as `kernelscope analyze --help` shows it (the proto documents the same; a test holds them equal).
OPTION_DEFAULTS: dict[str, str] = {
    "layers": "every convolution layer", "channels": "all channels", "steps": "256", "seed": "0",
    "objective": "NEURON (or CHANNEL)", "canvas": "receptive field plus jitter margin", "tv_weight": "0.1",
}

# ---------------------------------------------------------------------- gate metrics
_METRICS: list[Metric] = []  # appended to by the metrics.metric decorators below


def _channels(s: Summary, layer: str | None) -> list[dict[str, Any]]:
    return [c for entry in pick_layers(s, layer) for c in entry.get("channels", [])]


def _live(channels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The channels that are not dead: the only ones whose motion and activation mean anything (metrics, findings,
    verdicts and the section all count from these)."""
    return [c for c in channels if not c.get("dead")]


def _over_live(field: str, reduce: Callable[[Iterable[float | None]], float | None]) -> Extractor:
    """`reduce` of one per-channel field over the channels that are not dead."""
    return lambda s, layer: reduce(c.get(field) for c in _live(_channels(s, layer)))


_KV = dict(per_layer=True, layers=layer_names)


@metrics.metric(_METRICS, "kernel_viz.dead_kernels", "Channels the optimisation could not drive above a random input (dead kernels).", "lower", **_KV)
def _dead_kernels(s: Summary, layer: str | None) -> float | None:
    channels = _channels(s, layer)
    return sum(bool(c.get("dead")) for c in channels) if channels else None


@metrics.metric(_METRICS, "kernel_viz.dead_share", "Share of the analysed channels that are dead.", "lower", **_KV)
def _dead_share(s: Summary, layer: str | None) -> float | None:
    channels = _channels(s, layer)
    return sum(bool(c.get("dead")) for c in channels) / len(channels) if channels else None


@metrics.metric(_METRICS, "kernel_viz.channels", "Channels analysed.", None, **_KV)
def _channel_count(s: Summary, layer: str | None) -> float | None:
    return len(_channels(s, layer))


metrics.metric(_METRICS, "kernel_viz.median_activation_ratio", "Median over live channels of activation reached / |activation of a same-norm random input|.", "higher", **_KV)(_over_live("ratio", median))
metrics.metric(_METRICS, "kernel_viz.mean_motion_dependence", "Mean over live channels of 1 - act(static texture) / act(optimal video).", None, **_KV)(_over_live("motion_dependence", mean))
metrics.metric(_METRICS, "kernel_viz.mean_direction_selectivity", "Mean over live channels of the direction-selectivity index (video vs reversed).", None, **_KV)(_over_live("direction_selectivity", mean))
metrics.metric(_METRICS, "kernel_viz.mean_speed_px_per_frame", "Mean over live channels with significant motion of the dominant speed, model-input pixels per frame.", None, **_KV)(_over_live("speed_px_per_frame", mean))
metrics.metric(_METRICS, "kernel_viz.mean_reconstruction_error", "Mean over live channels of the texture-warp reconstruction error (0 = the motion model explains the video).", "lower", **_KV)(_over_live("reconstruction_error", mean))


@metrics.metric(_METRICS, "kernel_viz.moving_share", "Share of live channels whose motion is significant (direction and speed reported; noise and static patterns are not).", None, **_KV)
def _moving_share(s: Summary, layer: str | None) -> float | None:
    live = _live(_channels(s, layer))
    return sum(c.get("direction_deg") is not None for c in live) / len(live) if live else None


@metrics.paired_metric(_METRICS, 
    "kernel_viz.direction_agreement",
    "Agreement of each live channel's motion (speed × direction of its optimal video) with the same channel's in the baseline: "
    "Σ a·b / Σ |a||b| over channels moving in both (1 = same motion, −1 = every channel prefers the opposite direction).",
    "higher",
    layer_names,
)
def _kernel_viz_direction_agreement(s: Summary, base: Summary, layer: str | None) -> float | None:
    def motion(entry: dict[str, Any]) -> dict[int, tuple[float, float]]:
        out = {}
        for c in entry.get("channels", []):
            angle, speed = c.get("direction_deg"), c.get("speed_px_per_frame")
            if c.get("dead") or angle is None or speed is None:
                continue
            out[int(c["index"])] = (speed * math.cos(math.radians(angle)), speed * math.sin(math.radians(angle)))
        return out

    return layer_agreement(s, base, layer, motion, motion)


# ---------------------------------------------------------------------- findings


def _figures(summary: Summary) -> Figures:
    """Per layer: channels, dead, moving, the dominant direction (words) and median speed, for findings.lines and --json."""
    layers = []
    for entry in summary.get("layers") or []:
        channels = entry.get("channels") or []
        live = _live(channels)
        moving = [c for c in live if c.get("direction_deg") is not None and c.get("speed_px_per_frame") is not None]
        sectors: dict[str, int] = {}
        for c in moving:
            sectors[compass(float(c["direction_deg"]))] = sectors.get(compass(float(c["direction_deg"])), 0) + 1
        dominant = max(sectors.items(), key=lambda kv: kv[1]) if sectors else None
        name = entry.get("name") or entry.get("layer")
        layers.append(
            {
                "layer": name,
                "channels": len(channels),
                "dead": len(channels) - len(live),
                "moving": len(moving),
                "dominant_direction": dominant[0] if dominant else None,
                "dominant_direction_channels": dominant[1] if dominant else 0,
                "median_speed_px_per_frame": median([c["speed_px_per_frame"] for c in moving]),
                "mean_motion_dependence": metrics.value("kernel_viz.mean_motion_dependence", summary, name),
                "median_activation_ratio": metrics.value("kernel_viz.median_activation_ratio", summary, name),
            }
        )
    return {"layers": layers}


def _lines(figures: Figures) -> list[str]:
    out = []
    for layer in figures["layers"]:
        text = f"{layer['layer']}: {layer['moving']} of {layer['channels']} channels move"
        if layer["dominant_direction"]:
            text += f", most {layer['dominant_direction']} ({layer['dominant_direction_channels']})"
        if layer["median_speed_px_per_frame"] is not None:
            text += f", median speed {layer['median_speed_px_per_frame']:.2f} px/frame"
        if layer["mean_motion_dependence"] is not None:
            text += f"; motion dependence {layer['mean_motion_dependence']:.2f}"
        text += f"; {layer['dead']} dead"
        out.append(text)
    return out or ["no layer analysed"]


# ---------------------------------------------------------------------- verdicts


def _verdicts(s: Summary) -> list[Verdict]:
    """One verdict per layer: live and dead channels, the preferred motion (ties named, not broken), the mean speed."""
    out = []
    for layer in s.get("layers", []):
        channels = layer.get("channels", [])
        dead = [c for c in channels if c.get("dead")]
        live = _live(channels)
        moving = [c for c in live if c.get("direction_deg") is not None]
        text = f"{layer.get('name')}: {len(live)} of {len(channels)} channels live" + (f", {len(dead)} dead" if dead else "")
        if moving:
            sectors = [arrow(float(c["direction_deg"])) for c in moving]
            most = max(sectors.count(d) for d in ARROWS)
            tied = [d for d in ARROWS if sectors.count(d) == most]
            speed = mean(c.get("speed_px_per_frame") for c in moving)
            if len(tied) == 1:
                text += f"; {len(moving)} prefer motion, most often {tied[0]} ({most} of {len(moving)})"
            elif len(tied) <= 3:
                text += f"; {len(moving)} prefer motion, as often {' as '.join(tied)} ({most} each)"
            else:
                text += f"; {len(moving)} prefer motion, in {len(set(sectors))} different directions"
            text += f", mean speed {fmt(speed, 2)} px/frame" if speed is not None else ""
        elif live:
            text += "; none prefers a significant motion (static or noise-like patterns)"
        out.append(Verdict("kernel_viz", "bad" if dead else "ok", text))
    return out or [Verdict("kernel_viz", "note", "no layer analysed")]


# ---------------------------------------------------------------------- report section


def _section(outcome: "TaskOutcome", assets: Assets) -> str:
    """Per layer: its facts, the contact sheet of optimal videos, the motion and activation charts, the channel table."""
    s = outcome.summary or {}
    out = kv([("objective", s.get("objective")), ("optimisation steps", s.get("steps")), ("seed", s.get("seed")), ("TV weight", s.get("tv_weight")), ("device", s.get("device"))])
    out += '<p class="muted small">Directions: 0° = right, 90° = down (image rows). Speeds in pixels of the model\'s input per frame. Dead: the optimisation could not drive the channel above a random input of the same norm.</p>'
    for layer in s.get("layers", []):
        name = str(layer.get("name"))
        channels = layer.get("channels", [])
        live = _live(channels)
        dead = [int(c.get("index", -1)) for c in channels if c.get("dead")]
        timing = layer.get("timing") or {}
        folder = f"kernel_viz/{_path_component(name)}"
        out += f"<h3>Layer {escape(name)} <span class=\"pill\">{escape(str(layer.get('kind', '')))}</span></h3>"
        out += kv(
            [
                ("channels analysed", len(channels)),
                ("dead kernels", f"{len(dead)}" + (f" (channels {', '.join(map(str, dead))})" if dead else "")),
                ("canvas T×H×W", "×".join(str(v) for v in layer.get("canvas", []))),
                ("receptive field T×H×W", "×".join(str(v) for v in layer.get("receptive_field", []))),
                ("jitter t, y, x", layer.get("jitter")),
                ("placed inside a full-size input", layer.get("placed_in_full_input")),
                ("flow maps: full brightness at (px/frame)", layer.get("flow_scale_px_per_frame")),
                ("time: total s / stage 1 channels per s", f"{fmt(timing.get('total_s'))} / {fmt(timing.get('channels_per_s'))}"),
            ]
        )
        out += _contact_sheet(name, folder, channels, layer.get("canvas") or [], assets)
        if live:
            sectors = [0.0] * 12
            for c in live:
                if c.get("direction_deg") is not None:
                    sectors[int(((float(c["direction_deg"]) + 15.0) % 360.0) // 30.0)] += 1.0
            figures = [
                figure(charts.bars([f"{30 * i}°" for i in range(12)], {"channels": sectors}, title=f"{name}: preferred motion direction (live channels)", ylabel="channels", lo=0.0))
                if any(sectors) else charts.empty(f"{name}: preferred motion direction", "no live channel prefers a significant motion"),
                figure(charts.histogram([c.get("speed_px_per_frame") for c in live], bins=12, title=f"{name}: speed", xlabel="px / frame", ylabel="channels")),
                figure(charts.histogram([c.get("motion_dependence") for c in live], bins=12, title=f"{name}: motion dependence", xlabel="1 − act(static) / act(optimal)", ylabel="channels")),
                figure(charts.histogram([c.get("direction_selectivity") for c in live], bins=12, title=f"{name}: direction selectivity", xlabel="(R − R reversed) / (|R| + |R reversed|)", ylabel="channels")),
                figure(charts.histogram([c.get("ratio") for c in live], bins=12, title=f"{name}: activation vs random input", xlabel="activation / |random activation|", ylabel="channels")),
            ]
            out += grid(figures)
        else:
            out += '<p class="no-plot">Every analysed channel is dead: no motion or activation statistics to plot.</p>'
        rows = [
            (
                c.get("index"),
                Html(f'<a href="#{escape(assets.prefix)}kv-{escape(_path_component(name))}-{int(c.get("index", 0))}">sheet</a>'),
                c.get("direction_deg"),
                Html(escape(arrow(float(c["direction_deg"])))) if c.get("direction_deg") is not None else None,
                c.get("speed_px_per_frame"),
                c.get("direction_selectivity"),
                c.get("motion_dependence"),
                c.get("order_dependence"),
                c.get("flow_coherence"),
                c.get("reconstruction_error"),
                c.get("activation"),
                c.get("random_activation"),
                c.get("ratio"),
                Html('<span class="bad">dead</span>' if c.get("dead") else ""),
            )
            for c in channels
        ]
        out += "<h4>Channels</h4>" + table(
            ("channel", "pictures", "direction °", "direction", "speed px/frame", "direction selectivity", "motion dependence", "order dependence", "flow coherence", "reconstruction error", "activation", "random input", "ratio", "dead"),
            rows,
            cls="compact",
            notes=_CHANNEL_NOTES,
        )
    return out


_CHANNEL_NOTES = {
    "direction °": "Preferred direction of motion of the channel's optimal video: 0 = right, 90 = down (image rows). Empty where the motion is not significant.",
    "speed px/frame": "Speed of that motion, in pixels of the model's input per frame.",
    "direction selectivity": "(R − R reversed) / (|R| + |R reversed|): 1 = responds only to the video played forward, 0 = either way.",
    "motion dependence": "1 − act(static texture) / act(optimal video): how much of the response needs motion.",
    "order dependence": "How much the response drops when the frames are shuffled.",
    "flow coherence": "How uniform the motion is across the canvas (1 = one rigid motion).",
    "reconstruction error": "Error of warping the texture by the measured flow to rebuild the video (0 = the motion model explains it).",
    "ratio": "Activation reached / |activation of a random input of the same norm|; dead channels stay near or below 1.",
}


def _contact_sheet(layer: str, folder: str, channels: list[dict[str, Any]], canvas: list[Any], assets: Assets) -> str:
    """Per channel its optimal video, texture and mean flow side by side, upscaled in the browser with
    nearest neighbour (every model pixel a visible block, whatever the canvas size), its caption on its own
    line under the pictures (captions never collide), and the flow maps' colour legend beside the grid."""
    size = 112
    if len(canvas) >= 3 and max(int(canvas[1]), int(canvas[2])) > 0:
        longest = max(int(canvas[1]), int(canvas[2]))
        size = longest * max(1, -(-112 // longest)) if longest <= 112 else 160  # an integer multiple of the canvas
    cells = []
    for c in channels:
        index = int(c.get("index", 0))
        stem = f"{folder}/ch{index:03d}"
        panels = []
        for kind, ext, what in (("video", "gif", "optimal video"), ("texture", "png", "texture"), ("flow", "gif", "mean flow")):
            artifact = f"{stem}_{kind}.{ext}"
            if artifact in assets.by_name:
                panels.append(f'<span class="panel">{assets.img(artifact, alt=f"{layer} channel {index} {what}", cls="px")}<span class="panel-label">{what}</span></span>')
        if not panels:
            continue
        if c.get("dead"):
            caption = f'channel {index} · <span class="bad">dead</span>'
        elif c.get("direction_deg") is not None:
            caption = f"channel {index} · {escape(arrow(float(c['direction_deg'])))} {fmt(c['direction_deg'], 3)}° · {fmt(c.get('speed_px_per_frame'), 2)} px/frame"
        else:
            caption = f"channel {index} · no significant motion"
        cells.append(f'<figure class="cell" id="{escape(assets.prefix)}kv-{escape(_path_component(layer))}-{index}"><div class="panels">{"".join(panels)}</div><figcaption>{caption}</figcaption></figure>')
    if not cells:
        return '<p class="no-plot">No per-channel pictures were written for this layer.</p>'
    legend = (
        f'<figure class="legend-wheel">{charts.direction_wheel()}<figcaption>Mean flow: hue = direction of motion, '
        "brightness = speed (black = still, full colour = the layer's fastest).</figcaption></figure>"
    )
    sheet = f"{folder}/contact_sheet.png"
    png = ""
    if sheet in assets.by_name:
        png = f'<details class="more"><summary>The same as one PNG (as the worker wrote it)</summary>{assets.img(sheet, alt=f"{layer} contact sheet", cls="sheet")}</details>'
    return f'<h4>Contact sheet</h4><div class="sheet-wrap"><div class="sheet-grid" style="--px:{size}px">{"".join(cells)}</div>{legend}</div>{png}'


def _path_component(name: str) -> str:
    """A layer name as the workers write it into artifact paths (one path component)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


PLUGIN = Plugin("kernel_viz", OPTION_DEFAULTS, tuple(_METRICS), _figures, _lines, _verdicts, _section)

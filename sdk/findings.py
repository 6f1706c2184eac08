"""Headline findings of a job in plain words, a few lines per task: what a person looks for first.

    for line in findings.lines(result): print(line)
    findings.as_dict(result)      # the same, structured, for --json and scripts

kernel_viz: how each layer's kernels move (share moving, dominant direction and speed, dead channels);
tconv_stats: how much of each layer the 3T model explains (share below the residual threshold, best residual);
class_filters: how few filters carry each class and how much accuracy the restricted head keeps.
Everything is read from the task summaries (sdk.metrics for the shared figures); nothing is recomputed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sdk import metrics

if TYPE_CHECKING:
    from sdk.result import Result

# Image convention of kernel_viz: 0° is rightwards, angles grow clockwise on screen (y points down).
_COMPASS = ("right", "right-down", "down", "left-down", "left", "left-up", "up", "right-up")


def compass(angle_deg: float) -> str:
    """'right', 'right-down', ... for an image-plane direction in degrees (0 = right, 90 = down)."""
    return _COMPASS[int(((angle_deg % 360) + 22.5) // 45) % 8]


def as_dict(result: "Result") -> dict[str, Any]:
    """{task: {...figures...}} for every task that succeeded, plus the job's warnings and failures."""
    out: dict[str, Any] = {}
    for task, summary in result.summaries.items():
        reader = _READERS.get(task)
        if reader is not None:
            out[task] = reader(summary)
    return out


def lines(result: "Result") -> list[str]:
    """The findings as short indented lines (no trailing newline), task by task."""
    text: list[str] = []
    for task, figures in as_dict(result).items():
        text.append(f"  {task}:")
        text.extend(f"    {line}" for line in _WRITERS[task](figures))
    return text


# ---------------------------------------------------------------------- kernel_viz


def _kernel_viz(summary: dict[str, Any]) -> dict[str, Any]:
    layers = []
    for entry in summary.get("layers") or []:
        channels = entry.get("channels") or []
        live = [c for c in channels if not c.get("dead")]
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
                "median_speed_px_per_frame": _median([c["speed_px_per_frame"] for c in moving]),
                "mean_motion_dependence": metrics.value("kernel_viz.mean_motion_dependence", summary, name),
                "median_activation_ratio": metrics.value("kernel_viz.median_activation_ratio", summary, name),
            }
        )
    return {"layers": layers}


def _kernel_viz_lines(figures: dict[str, Any]) -> list[str]:
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


# ---------------------------------------------------------------------- tconv_stats


def _tconv_stats(summary: dict[str, Any]) -> dict[str, Any]:
    threshold = (summary.get("options") or {}).get("residual_threshold")
    layers = []
    for entry in summary.get("layers") or []:
        name = entry.get("name") or entry.get("layer")
        figures: dict[str, Any] = {"layer": name, "kind": entry.get("kind"), "filters": entry.get("filters")}
        if entry.get("analysed") is False:
            figures["note"] = entry.get("note") or "not analysed"
        elif entry.get("kind") == "Conv3d-fit":
            residual = ((entry.get("residual") or {}).get("plain") or {})
            share = (entry.get("explainable_share") or {}).get("plain")
            figures.update(
                explainable_share=share,
                explainable_filters=None if share is None or entry.get("filters") is None else round(share * entry["filters"]),
                best_residual=residual.get("min"),
                mean_residual=residual.get("mean"),
            )
        else:
            figures.update(
                filters_included=entry.get("filters_included"),
                dominant_direction_deg=entry.get("dominant_direction_deg"),
                dominant_direction_share=entry.get("dominant_direction_share"),
                near_identity_share=entry.get("near_identity_share"),
            )
        layers.append(figures)
    return {
        "residual_threshold": threshold,
        "explainable_share": metrics.value("tconv_stats.explainable_share", summary),
        "layers": layers,
    }


def _tconv_lines(figures: dict[str, Any]) -> list[str]:
    threshold = figures["residual_threshold"]
    out = []
    for layer in figures["layers"]:
        if "note" in layer:
            out.append(f"{layer['layer']} ({layer['kind']}): not analysed: {layer['note']}")
        elif layer["kind"] == "Conv3d-fit":
            if layer["explainable_share"] is None:
                out.append(f"{layer['layer']}: no filter fitted")
                continue
            text = f"{layer['layer']}: {layer['explainable_filters']} of {layer['filters']} filters 3T-explainable ({_pct(layer['explainable_share'])}"
            text += f", residual < {threshold:g})" if threshold is not None else ")"
            if layer["best_residual"] is not None:
                text += f"; best residual {layer['best_residual']:.2f}, mean {layer['mean_residual']:.2f}"
            out.append(text)
        else:
            text = f"{layer['layer']} ({layer['kind']}): {layer['filters']} filters"
            if layer.get("dominant_direction_deg") is not None and layer.get("dominant_direction_share") is not None:
                angle = float(layer["dominant_direction_deg"])
                text += f", {_pct(layer['dominant_direction_share'])} translate {compass(angle)} ({angle:.0f}°)"
            if layer.get("near_identity_share") is not None:
                text += f"; {_pct(layer['near_identity_share'])} near identity"
            out.append(text)
    return out or ["no layer analysed"]


# ---------------------------------------------------------------------- class_filters


def _class_filters(summary: dict[str, Any]) -> dict[str, Any]:
    overall = summary.get("global") or {}
    names = summary.get("class_names") or []
    classes = []
    for c in summary.get("classes") or []:
        index = c.get("class")
        name = c.get("name") or (names[index] if isinstance(index, int) and index < len(names) else str(index))
        classes.append(
            {
                "class": name,
                "subset_size": len(c.get("subset_k") or []),
                "subset": list(c.get("subset_k") or []),
                "retention_size": c.get("retention_size"),
                "recall_full": c.get("recall_full"),
                "recall_restricted": c.get("recall_restricted"),
            }
        )
    return {
        "layer": summary.get("layer"),
        "num_filters": summary.get("num_filters"),
        "k": summary.get("k"),
        "accuracy_full": overall.get("accuracy_full"),
        "accuracy_restricted": overall.get("accuracy_restricted"),
        "accuracy_retained": metrics.value("class_filters.accuracy_retained", summary),
        "mis_bits": overall.get("mis"),
        "mis_shuffled_bits": overall.get("mis_shuffled"),
        "classes": classes,
    }


def _class_filters_lines(figures: dict[str, Any]) -> list[str]:
    out = []
    full, restricted, kept = figures["accuracy_full"], figures["accuracy_restricted"], figures["accuracy_retained"]
    head = f"layer {figures['layer']} ({figures['num_filters']} filters): each class's own {figures['k']} filters"
    if full is not None and restricted is not None:
        head += f" keep accuracy {full:.3f} -> {restricted:.3f}"
        if kept is not None:
            head += f" ({_pct(kept)} retained)"
    out.append(head)
    if figures["mis_bits"] is not None and figures["mis_shuffled_bits"] is not None:
        out.append(f"MIS {figures['mis_bits']:.3f} bits (shuffled labels {figures['mis_shuffled_bits']:.3f})")
    for c in figures["classes"]:
        text = f"{c['class']}: filters {', '.join(str(i) for i in c['subset']) or '-'}"
        if c["recall_full"] is not None and c["recall_restricted"] is not None:
            text += f"; recall {c['recall_full']:.2f} -> {c['recall_restricted']:.2f}"
        if c["retention_size"] is not None:
            text += f"; {c['retention_size']} filters keep its accuracy"
        out.append(text)
    return out


# ---------------------------------------------------------------------- helpers


def _pct(share: float) -> str:
    return f"{share * 100:.0f}%"


def _median(values: list[Any]) -> float | None:
    data = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not data:
        return None
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2


_READERS = {"kernel_viz": _kernel_viz, "tconv_stats": _tconv_stats, "class_filters": _class_filters}
_WRITERS = {"kernel_viz": _kernel_viz_lines, "tconv_stats": _tconv_lines, "class_filters": _class_filters_lines}

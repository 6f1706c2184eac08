"""Reading worker summaries: the small helpers every plugin uses on the plain dicts the workers return.

Why one module: layer lists, exact decimal arithmetic, means and medians, image-plane directions and the
filter-by-filter motion agreement were each written once per consumer (metrics, findings, the report);
the plugins now share these.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Callable, Iterable

Summary = dict[str, Any]

# Image convention of the analyses: 0° is rightwards, angles grow clockwise on screen (y points down).
# Findings (plain text) name the eight sectors in words, the report adds an arrow.
WORDS = ("right", "right-down", "down", "left-down", "left", "left-up", "up", "right-up")
ARROWS = ("right →", "down-right ↘", "down ↓", "down-left ↙", "left ←", "up-left ↖", "up ↑", "up-right ↗")


def sector(degrees: float) -> int:
    """Which of the eight 45° sectors (0 = right, 2 = down) an image-plane direction falls in."""
    return int(((degrees % 360.0) + 22.5) // 45.0) % 8


def compass(degrees: float) -> str:
    """'right', 'right-down', ... for an image-plane direction in degrees (0 = right, 90 = down)."""
    return WORDS[sector(degrees)]


def arrow(degrees: float) -> str:
    """A direction angle (0 = right, 90 = down, as on screen) as words and an arrow."""
    return ARROWS[sector(degrees)]


def exact(value: float) -> Decimal:
    """The number as written (the shortest decimal that reads back as this float): 0.9 is 0.9, not
    0.90000000000000002220. Policies and summaries are decimal text; comparing or subtracting their binary
    approximations turns an exact 5 % into 5.000000000000002 % (the gate's judge and these helpers use it)."""
    return Decimal(repr(float(value)))


def ratio(a: float, b: float) -> float:
    """a / b on the numbers as written: 0.72 / 0.9 is 0.8, not binary's 0.7999999999999999 (which fails min = 0.8)."""
    return float(exact(a) / exact(b))


def difference(a: float, b: float) -> float:
    """a − b on the numbers as written: 0.9 − 0.85 is 0.05, not 0.050000000000000044."""
    return float(exact(a) - exact(b))


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the finite values; None when there is none (a summary may hold nulls and NaNs)."""
    data = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(data) / len(data) if data else None


def median(values: Iterable[float | None]) -> float | None:
    """The median of the finite values; None when there is none."""
    data = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not data:
        return None
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2


def layer_list(summary: Summary) -> list[dict[str, Any]]:
    """The summary's layers as a list of dicts, whether the worker wrote a list or a name -> block mapping."""
    layers = summary.get("layers")
    if isinstance(layers, dict):
        return [dict(v, name=k) if isinstance(v, dict) else {"name": k} for k, v in layers.items()]
    return list(layers or [])


def layer_names(summary: Summary) -> list[str]:
    return [str(layer.get("name") or layer.get("layer")) for layer in layer_list(summary)]


def pick_layers(summary: Summary, layer: str | None) -> list[dict[str, Any]]:
    """Every layer (layer=None), or the named one; KeyError when the summary lacks it."""
    layers = layer_list(summary)
    if layer is None:
        return layers
    chosen = [entry for entry in layers if (entry.get("name") or entry.get("layer")) == layer]
    if not chosen:
        raise KeyError(layer)
    return chosen


def agreement(pairs: Iterable[tuple[tuple[float, float], tuple[float, float]]]) -> float | None:
    """Σ a·b / Σ |a||b| over paired motion vectors: 1 = all move as in the baseline, −1 = all the opposite way.

    Weighting by both magnitudes lets the filters that move decide; a static filter's direction is noise.
    """
    dot = norms = 0.0
    for (ax, ay), (bx, by) in pairs:
        dot += ax * bx + ay * by
        norms += math.hypot(ax, ay) * math.hypot(bx, by)
    return dot / norms if norms > 0 else None


Motions = Callable[[dict[str, Any]], dict[int, tuple[float, float]]]


def layer_agreement(s: Summary, base: Summary, layer: str | None, mine: Motions, theirs: Motions) -> float | None:
    """agreement over the filters of every chosen layer that the baseline has too (matched by layer name and index)."""
    base_layers = {str(b.get("name")): b for b in layer_list(base)}
    pairs = []
    for entry in pick_layers(s, layer):
        other = base_layers.get(str(entry.get("name")))
        if other is None:
            continue
        a, b = mine(entry), theirs(other)
        pairs += [(a[i], b[i]) for i in a.keys() & b.keys()]
    return agreement(pairs)


def percent(share: float) -> str:
    """A share as a whole percentage ("25%"), as the findings lines write it."""
    return f"{share * 100:.0f}%"

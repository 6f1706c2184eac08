"""Small inline SVG charts for the HTML report: histograms and grouped bars.

Why hand-drawn SVG: the SDK stays thin (no matplotlib, no numpy) and the report must open offline,
so the figures are drawn from the task summaries as markup. Every function takes plain lists and
returns one <svg> string; non-finite values (None, NaN) are skipped, never drawn as zero.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

PALETTE = ("#3b6fb6", "#e0803a", "#3a9e6e", "#c8453c", "#7d5ab5", "#8c6d45", "#d36fb0", "#6f6f6f", "#a8a83a", "#3ab0c0")
_W, _H = 360, 200  # default canvas, CSS pixels
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 46, 12, 36, 36  # room for the title and a legend row above the plot


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.1e}"
    return f"{value:.3g}"


def _frame(title: str, xlabel: str, ylabel: str, width: int, height: int, body: list[str], legend: Sequence[str] = ()) -> str:
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{width / 2}" y="14" text-anchor="middle" class="chart-title">{escape(title)}</text>',
        *body,
        f'<text x="{(width + _PAD_L) / 2}" y="{height - 4}" text-anchor="middle" class="chart-label">{escape(xlabel)}</text>',
        f'<text x="10" y="{height / 2}" text-anchor="middle" class="chart-label" transform="rotate(-90 10 {height / 2})">{escape(ylabel)}</text>',
    ]
    x = _PAD_L
    for i, name in enumerate(legend):
        parts.append(f'<rect x="{x}" y="20" width="9" height="9" fill="{PALETTE[i % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 12}" y="28" class="chart-tick">{escape(name)}</text>')
        x += 24 + 6 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def _axes(lo: float, hi: float, width: int, height: int) -> list[str]:
    """Y axis with three ticks between lo and hi, and the plot's bottom line."""
    out = [f'<line x1="{_PAD_L}" y1="{height - _PAD_B}" x2="{width - _PAD_R}" y2="{height - _PAD_B}" class="axis"/>']
    for k in range(3):
        v = lo + (hi - lo) * k / 2
        y = _y(v, lo, hi, height)
        out.append(f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{width - _PAD_R}" y2="{y:.1f}" class="gridline"/>')
        out.append(f'<text x="{_PAD_L - 4}" y="{y + 3:.1f}" text-anchor="end" class="chart-tick">{_tick(v)}</text>')
    return out


def _y(value: float, lo: float, hi: float, height: int) -> float:
    span = hi - lo or 1.0
    return height - _PAD_B - (value - lo) / span * (height - _PAD_T - _PAD_B)


def histogram(
    values: Sequence[float | None] | None = None,
    *,
    counts: Sequence[float] | None = None,
    edges: Sequence[float] | None = None,
    bins: int = 20,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "filters",
    width: int = _W,
    height: int = _H,
) -> str:
    """A histogram of raw `values`, or of precomputed `counts` over `edges` (len(edges) == len(counts) + 1)."""
    if counts is None:
        data = _finite(values or [])
        if not data:
            return empty(title, "no finite values")
        lo, hi = min(data), max(data)
        if hi == lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = [lo + (hi - lo) * k / bins for k in range(bins + 1)]
        counts = [0.0] * bins
        for v in data:
            counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    if edges is None or len(edges) != len(counts) + 1:
        return empty(title, "histogram edges do not match its counts")
    top = max(counts) or 1.0
    plot_w = width - _PAD_L - _PAD_R
    body = _axes(0.0, top, width, height)
    n = len(counts)
    for i, c in enumerate(counts):
        x = _PAD_L + plot_w * i / n
        y = _y(c, 0.0, top, height)
        body.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(plot_w / n - 1, 0.5):.1f}" height="{height - _PAD_B - y:.1f}" fill="{PALETTE[0]}">'
            f"<title>[{_tick(edges[i])}, {_tick(edges[i + 1])}): {c:g}</title></rect>"
        )
    for i in (0, n // 2, n):
        x = _PAD_L + plot_w * i / n
        body.append(f'<text x="{x:.1f}" y="{height - _PAD_B + 12}" text-anchor="middle" class="chart-tick">{_tick(edges[i])}</text>')
    return _frame(title, xlabel, ylabel, width, height, body)


def bars(
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    lo: float | None = None,
    hi: float | None = None,
    width: int | None = None,
    height: int = _H,
) -> str:
    """Grouped bars: one group per label, one bar per series (missing values leave a gap)."""
    data = _finite([v for vs in series.values() for v in vs])
    if not labels or not data:
        return empty(title, "no values")
    width = width or max(_W, _PAD_L + _PAD_R + len(labels) * (14 * len(series) + 18))
    lo = min(0.0, min(data)) if lo is None else lo
    hi = max(data) if hi is None else hi
    hi = hi if hi > lo else lo + 1.0
    plot_w = width - _PAD_L - _PAD_R
    group = plot_w / len(labels)
    bar = min(group * 0.8 / max(len(series), 1), 28)
    body = _axes(lo, hi, width, height)
    for g, label in enumerate(labels):
        x0 = _PAD_L + g * group + (group - bar * len(series)) / 2
        for s, (name, values) in enumerate(series.items()):
            v = values[g] if g < len(values) else None
            if v is None or not math.isfinite(float(v)):
                continue
            y, base = _y(float(v), lo, hi, height), _y(max(lo, 0.0), lo, hi, height)
            top, h = min(y, base), abs(base - y)
            body.append(
                f'<rect x="{x0 + s * bar:.1f}" y="{top:.1f}" width="{bar - 1:.1f}" height="{max(h, 0.5):.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                f"<title>{escape(label)} · {escape(name)}: {float(v):.4g}</title></rect>"
            )
        body.append(f'<text x="{_PAD_L + (g + 0.5) * group:.1f}" y="{height - _PAD_B + 12}" text-anchor="middle" class="chart-tick">{escape(str(label))[:14]}</text>')
    return _frame(title, xlabel, ylabel, width, height, body, legend=list(series) if len(series) > 1 else ())


def empty(title: str, why: str) -> str:
    """A sentence saying why there is nothing to draw, in place of the figure (never a blank chart)."""
    lead = f"{escape(title)}: " if title else ""
    return f'<p class="no-plot">{lead}nothing to plot ({escape(why)}).</p>'


def direction_wheel(size: int = 132) -> str:
    """The flow maps' colour legend: hue = direction of motion (0° right, 90° down, as on screen), brightness = speed.

    Drawn as 24 wedges whose brightness ramps from the centre (still) to the rim (the layer's fastest), with the
    four directions written outside the wheel, so it stays legible at any size the page is printed at.
    """
    width = size + 96  # room for the labels left and right of the wheel
    cx, cy, r = width / 2, size / 2, size / 2 - 16
    parts = [f'<svg class="chart wheel" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{size}" viewBox="0 0 {width} {size}" role="img" aria-label="direction legend: hue = direction, brightness = speed">']
    parts.append('<defs><radialGradient id="wheel-dark"><stop offset="0" stop-color="#000" stop-opacity="1"/><stop offset="1" stop-color="#000" stop-opacity="0"/></radialGradient></defs>')
    for k in range(24):
        a0, a1 = math.radians(15 * k - 7.5), math.radians(15 * k + 7.5)
        x0, y0, x1, y1 = cx + r * math.cos(a0), cy + r * math.sin(a0), cx + r * math.cos(a1), cy + r * math.sin(a1)
        parts.append(f'<path d="M{cx:.1f},{cy:.1f} L{x0:.1f},{y0:.1f} A{r:.1f},{r:.1f} 0 0 1 {x1:.1f},{y1:.1f} Z" fill="hsl({15 * k},100%,50%)"/>')
    parts.append(f'<circle cx="{cx}" cy="{cy}" r="{r:.1f}" fill="url(#wheel-dark)"/>')
    labels = ((0, "0° right", "start", 6, 4), (90, "90° down", "middle", 0, 13), (180, "left 180°", "end", -6, 4), (270, "270° up", "middle", 0, -5))
    for angle, text, anchor, dx, dy in labels:
        x = cx + r * math.cos(math.radians(angle)) + dx
        y = cy + r * math.sin(math.radians(angle)) + dy
        parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="chart-label">{text}</text>')
    parts.append("</svg>")
    return "".join(parts)

"""PNG figures of tconv_stats: per-step histograms, the joint x/y translation histogram, the composed
trajectories of the most-moving filters, and fitted layers' residual distributions.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot state), so workers stay headless and
thread-safe. Translations are in pixels of the layer input, array frame; plots put "up" at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=80)
    return path


def _hist(ax: Any, values: np.ndarray, label: str, bins: int = 30) -> None:
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size:
        lo, hi = float(v.min()), float(v.max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        ax.hist(v, bins=bins, range=(lo, hi), color="#4477aa", histtype="stepfilled")  # one polygon, not a patch per bar
    ax.set_xlabel(label)
    ax.set_ylabel("steps × filters")


def histograms(arrays: dict[str, np.ndarray], title: str, path: Path) -> Path:
    """1/s, rotation (degrees), x and y translation (layer pixels) per step, one panel each."""
    fig = Figure(figsize=(12, 3))
    axes = fig.subplots(1, 4)
    _hist(axes[0], arrays["inv_scale"], "content scale per step (1/s)")
    _hist(axes[1], arrays["rotation_deg"], "rotation per step (deg, clockwise +)")
    _hist(axes[2], arrays["tx_px_layer"], "x translation per step (px, right +)")
    _hist(axes[3], arrays["ty_px_layer"], "y translation per step (px, down +)")
    fig.suptitle(title)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.2, top=0.85, wspace=0.35)
    return _save(fig, path)


def joint_translation(arrays: dict[str, np.ndarray], title: str, path: Path, bins: int = 25) -> Path:
    """2D histogram of per-step (x, y) content translation; the y axis is flipped so up is up."""
    dx, dy = np.asarray(arrays["tx_px_layer"]).ravel(), np.asarray(arrays["ty_px_layer"]).ravel()
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    if dx.size:
        lim = max(float(np.abs(np.concatenate([dx, dy])).max()), 1e-3) * 1.05
        counts, xe, ye = np.histogram2d(dx, dy, bins=bins, range=[[-lim, lim], [-lim, lim]])
        image = ax.pcolormesh(xe, ye, counts.T, cmap="magma")
        fig.colorbar(image, ax=ax, label="steps × filters")
        ax.set_ylim(lim, -lim)
    ax.axhline(0, color="w", lw=0.5)
    ax.axvline(0, color="w", lw=0.5)
    ax.set_xlabel("x translation per step (px, right +)")
    ax.set_ylabel("y translation per step (px, down +)")
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.17, right=0.95, bottom=0.14, top=0.9)
    return _save(fig, path)


def trajectory_plot(tracks: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """Composed paths (layer pixels) of the listed filters, start marked with a dot, up is up."""
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    extent = 0.5
    for track in tracks:
        pts = np.asarray(track["path_px_layer"], np.float64)
        line = ax.plot(pts[:, 0], pts[:, 1], marker=".", label=f"filter {track['filter']}")[0]
        if len(pts) > 1 and np.abs(pts[-1] - pts[-2]).max() > 1e-9:  # an arrowhead on the last step
            ax.annotate("", xy=tuple(pts[-1]), xytext=tuple(pts[-2]),
                        arrowprops={"arrowstyle": "-|>", "color": line.get_color(), "lw": 1.5})
        extent = max(extent, float(np.abs(pts).max()))
    ax.set_xlim(-extent * 1.1, extent * 1.1)
    ax.set_ylim(extent * 1.1, -extent * 1.1)
    ax.set_aspect("equal")
    ax.set_xlabel("x (px of layer input, right +)")
    ax.set_ylabel("y (px, down +)")
    if tracks:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.17, right=0.95, bottom=0.14, top=0.9)
    return _save(fig, path)


def residual_plot(plain: np.ndarray, gain: np.ndarray | None, threshold: float, title: str, path: Path) -> Path:
    """Distribution of per-filter relative residuals of the 3T fit (and the gain variant), with the threshold."""
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.2, 49)
    for values, label, color in ((plain, "plain 3T", "#4477aa"), (gain, "3T + gain", "#ee6677")):
        if values is None:
            continue
        v = np.asarray(values, np.float64)
        v = v[np.isfinite(v)]
        ax.hist(np.clip(v, 0, 1.2), bins=bins, alpha=0.6, label=label, color=color, histtype="stepfilled")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("relative residual ‖Ŵ−W‖/‖W‖")
    ax.set_ylabel("filters")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.17, right=0.95, bottom=0.14, top=0.9)
    return _save(fig, path)

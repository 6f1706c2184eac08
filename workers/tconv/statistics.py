"""Temporal-transformation statistics of 3T parameters (ANALYSES.md §2), in units a reader can use.

Every figure describes how a kernel's content moves from one time slice to the next (derived from
affine_grid: slice t at p reads slice t−1 at s·R(r)·(p + t)):

- inv_scale = 1/s: the content's size factor per step (> 1 grows);
- rotation_deg = −degrees(r): the content's rotation per step, positive from +x towards +y (clockwise
  on screen, the sense in which direction angles grow);
- translation = −t·(k−1)/2 pixels of the layer's input, in the array frame (x = column, rightwards;
  y = row, downwards); times the layer's cumulative stride for pixels of the model's input;
- direction angles (degrees, [0, 360)) follow workers/samples/motion.py: 0 = right, 90 = down,
  180 = left, 270 = up;
- trajectories compose the steps: T_t = (1/s_t)·R(−r_t)·T_{t−1} − t_t (a point at the kernel's centre in
  slice 0 is at T_t in slice t), with the product of 1/s and the sum of rotations; not a plain sum of t.

The authors' own plots label radians as degrees; here parameters are radians and outputs are degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from workers.tconv.parameters import ThreeTParams

QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
DIRECTION_BINS = 12  # 30° sectors centred on 0°, 30°, …: the dominant direction is the heaviest sector's


def _float(x: Any) -> float | None:
    v = float(x)
    return None if not math.isfinite(v) else round(v, 6)


def summarize(values: np.ndarray | Sequence[float]) -> dict[str, Any]:
    """count, mean, std, min, q05, q25, median, q75, q95, max of the finite values (None when empty)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    keys = ["mean", "std", "min", "q05", "q25", "median", "q75", "q95", "max"]
    if a.size == 0:
        return {"count": 0, **{k: None for k in keys}}
    qs = np.quantile(a, QUANTILES)
    vals = [a.mean(), a.std(), a.min(), *qs, a.max()]
    return {"count": int(a.size), **{k: _float(v) for k, v in zip(keys, vals)}}


def mean_std(values: np.ndarray) -> dict[str, float | None]:
    a = np.asarray(values, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"mean": None, "std": None}
    return {"mean": _float(a.mean()), "std": _float(a.std())}


def pixels_per_unit(kernel_hw: tuple[int, int]) -> tuple[float, float]:
    """(x, y) pixels of the layer input per normalised unit: (k−1)/2 along each axis."""
    k_h, k_w = kernel_hw
    return ((k_w - 1) / 2.0, (k_h - 1) / 2.0)


def direction_deg(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Angle of array-frame vectors (y down): 0 = right, 90 = down, as motion_clips labels directions."""
    return np.degrees(np.arctan2(np.asarray(dy), np.asarray(dx))) % 360.0


def direction_histogram(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Share of total displacement magnitude in each 30° sector (sector i centred on 30·i degrees)."""
    dx, dy = np.asarray(dx, np.float64).ravel(), np.asarray(dy, np.float64).ravel()
    weight = np.hypot(dx, dy)
    total = weight.sum()
    hist = np.zeros(DIRECTION_BINS)
    if total <= 1e-12:
        return hist
    np.add.at(hist, _sector(dx, dy), weight)
    return hist / total


def _sector(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Index of each vector's 30° sector (sector i centred on 30·i degrees)."""
    width = 360.0 / DIRECTION_BINS
    return np.floor(((direction_deg(dx, dy) + width / 2) % 360.0) / width).astype(int)


def dominant_direction(
    dx: np.ndarray, dy: np.ndarray, hist: np.ndarray | None = None
) -> tuple[float | None, float | None]:
    """(angle of the summed displacement in the heaviest 30° sector, that sector's share of all motion);
    a mode, not a mean, so that opposite movers in one layer do not cancel. (None, None) without motion.
    `hist`: direction_histogram(dx, dy) when the caller has it already."""
    dx, dy = np.asarray(dx, np.float64).ravel(), np.asarray(dy, np.float64).ravel()
    hist = direction_histogram(dx, dy) if hist is None else hist
    if hist.sum() == 0:
        return None, None
    best = int(hist.argmax())
    pick = _sector(dx, dy) == best
    angle = float(direction_deg(dx[pick].sum(), dy[pick].sum()))
    return _float(angle), _float(hist[best])


@dataclass
class Motion:
    """Per-step content motion, each (k_t−1, F); translations in pixels of the layer input (array frame)."""

    inv_scale: np.ndarray
    rotation_deg: np.ndarray
    dx_px: np.ndarray
    dy_px: np.ndarray


def step_motion(params: ThreeTParams) -> Motion:
    ux, uy = pixels_per_unit(params.kernel_hw)
    return Motion(
        inv_scale=1.0 / params.scale,
        rotation_deg=-np.degrees(params.rotate),
        dx_px=-params.translate_x * ux,
        dy_px=-params.translate_y * uy,
    )


@dataclass
class Trajectories:
    """Composed per-filter paths: position_px (F, k_t, 2) of slice 0's centre in layer pixels (array frame),
    cumulative_inv_scale (F, k_t), cumulative_rotation_deg (F, k_t); index 0 is slice 0 (identity)."""

    position_px: np.ndarray
    cumulative_inv_scale: np.ndarray
    cumulative_rotation_deg: np.ndarray

    @property
    def path_length_px(self) -> np.ndarray:
        return np.linalg.norm(np.diff(self.position_px, axis=1), axis=2).sum(1)


def trajectories(params: ThreeTParams) -> Trajectories:
    f = params.filters
    pos = np.zeros((f, 2))
    positions = [pos.copy()]
    for t in range(params.steps):
        s, r = params.scale[t], params.rotate[t]
        c, sn = np.cos(r), np.sin(r)
        x, y = pos[:, 0], pos[:, 1]
        # (1/s)·R(−r) in the array frame, then −t.
        pos = np.stack([(c * x + sn * y) / s - params.translate_x[t], (-sn * x + c * y) / s - params.translate_y[t]], axis=1)
        positions.append(pos.copy())
    ux, uy = pixels_per_unit(params.kernel_hw)
    position_px = np.stack(positions, axis=1) * np.array([ux, uy])
    ones = np.ones((f, 1))
    cum_scale = np.concatenate([ones, np.cumprod(1.0 / params.scale.T, axis=1)], axis=1)
    cum_rot = np.concatenate([0 * ones, np.cumsum(-np.degrees(params.rotate.T), axis=1)], axis=1)
    return Trajectories(position_px, cum_scale, cum_rot)


def near_identity(params: ThreeTParams, tolerance: float) -> np.ndarray:
    """(F,) filters whose every step has |1−1/s|, |r| (rad), |tx|, |ty| (normalised units) below tolerance."""
    close = (
        (np.abs(1.0 - 1.0 / params.scale) < tolerance)
        & (np.abs(params.rotate) < tolerance)
        & (np.abs(params.translate_x) < tolerance)
        & (np.abs(params.translate_y) < tolerance)
    )
    return close.all(axis=0)


@dataclass
class LayerStatistics:
    """summary: the layer's JSON block; arrays: the per-filter numbers (saved as NPZ, pooled per model)."""

    summary: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    stride: tuple[float, float] | None = None


def _translation_block(dx: np.ndarray, dy: np.ndarray) -> dict[str, Any]:
    return {"x": summarize(dx), "y": summarize(dy), "magnitude": summarize(np.hypot(dx, dy))}


def layer_statistics(
    params: ThreeTParams,
    *,
    filter_index: np.ndarray | None = None,
    stride: tuple[float, float] | None = None,
    identity_tolerance: float = 0.05,
    top: int = 5,
) -> LayerStatistics:
    """Statistics of one layer's filters. stride = (x, y) model-input pixels per layer-input pixel, or None
    when unknown (weights-only models): then every model-pixel figure is None."""
    index = np.arange(params.filters) if filter_index is None else np.asarray(filter_index)
    motion = step_motion(params)
    paths = trajectories(params)
    identity = near_identity(params, identity_tolerance)
    sx, sy = stride if stride is not None else (math.nan, math.nan)
    displacement = paths.position_px[:, -1] if params.filters else np.zeros((0, 2))
    hist = direction_histogram(displacement[:, 0], displacement[:, 1])
    angle, share = dominant_direction(displacement[:, 0], displacement[:, 1], hist)
    lengths = paths.path_length_px
    order = np.lexsort((index, -lengths))[:top] if params.filters else np.zeros(0, int)
    tops = []
    for i in order:
        path = paths.position_px[i]
        d = path[-1]
        tops.append(
            {
                "filter": int(index[i]),
                "path_px_layer": [[_float(x), _float(y)] for x, y in path],
                "path_px_model": None if stride is None else [[_float(x * sx), _float(y * sy)] for x, y in path],
                "cumulative_inv_scale": [_float(v) for v in paths.cumulative_inv_scale[i]],
                "cumulative_rotation_deg": [_float(v) for v in paths.cumulative_rotation_deg[i]],
                "path_length_px_layer": _float(lengths[i]),
                "displacement_px_layer": [_float(d[0]), _float(d[1])],
                "direction_deg": _float(direction_deg(d[0], d[1])) if np.hypot(*d) > 1e-9 else None,
            }
        )
    summary: dict[str, Any] = {
        "filters_included": int(params.filters),
        "stats": {
            "inv_scale": summarize(motion.inv_scale),
            "rotation_deg": summarize(motion.rotation_deg),
            "translation_px_layer": _translation_block(motion.dx_px, motion.dy_px),
            "translation_px_model": None if stride is None else _translation_block(motion.dx_px * sx, motion.dy_px * sy),
        },
        "departure_from_identity": {
            "abs_one_minus_inv_scale": mean_std(np.abs(1.0 - motion.inv_scale)),
            "abs_rotation_deg": mean_std(np.abs(motion.rotation_deg)),
            "abs_tx_px_layer": mean_std(np.abs(motion.dx_px)),
            "abs_ty_px_layer": mean_std(np.abs(motion.dy_px)),
        },
        "near_identity_share": _float(identity.mean()) if params.filters else None,
        "dominant_direction_deg": angle,
        "dominant_direction_share": share,
        "direction_histogram": [_float(v) for v in hist],
        "displacement_px_layer": summarize(np.hypot(displacement[:, 0], displacement[:, 1])),
        "trajectories": tops,
    }
    arrays = {
        "filter_index": index.astype(np.int64),
        "scale": params.scale,
        "rotate_rad": params.rotate,
        "translate_x": params.translate_x,
        "translate_y": params.translate_y,
        "inv_scale": motion.inv_scale,
        "rotation_deg": motion.rotation_deg,
        "tx_px_layer": motion.dx_px,
        "ty_px_layer": motion.dy_px,
        "trajectory_px_layer": paths.position_px,
        "cumulative_inv_scale": paths.cumulative_inv_scale,
        "cumulative_rotation_deg": paths.cumulative_rotation_deg,
        "near_identity": identity,
    }
    if stride is not None:
        arrays["tx_px_model"] = motion.dx_px * sx
        arrays["ty_px_model"] = motion.dy_px * sy
        arrays["trajectory_px_model"] = paths.position_px * np.array([sx, sy])
    return LayerStatistics(summary=summary, arrays=arrays, stride=stride)


def model_statistics(layers: Sequence[LayerStatistics]) -> dict[str, Any]:
    """Pool every layer's included filters. Translations are in model-input pixels when every layer's
    stride is known, else in layer-input pixels (said in `translation_units`)."""
    if not layers:
        return {"layers": 0, "filters_included": 0}
    in_model = all(layer.stride is not None for layer in layers)
    suffix = "px_model" if in_model else "px_layer"
    cat = lambda key: np.concatenate([layer.arrays[key].ravel() for layer in layers])  # noqa: E731
    dx, dy = cat(f"tx_{suffix}"), cat(f"ty_{suffix}")
    net = np.concatenate([layer.arrays[f"trajectory_{suffix}"][:, -1] for layer in layers])
    hist = direction_histogram(net[:, 0], net[:, 1])
    angle, share = dominant_direction(net[:, 0], net[:, 1], hist)
    identity = cat("near_identity")
    inv_scale, rot = cat("inv_scale"), cat("rotation_deg")
    return {
        "layers": len(layers),
        "filters_included": int(identity.size),
        "translation_units": suffix,
        "stats": {
            "inv_scale": summarize(inv_scale),
            "rotation_deg": summarize(rot),
            "translation_px_layer": _translation_block(cat("tx_px_layer"), cat("ty_px_layer")),
            "translation_px_model": _translation_block(dx, dy) if in_model else None,
        },
        "departure_from_identity": {
            "abs_one_minus_inv_scale": mean_std(np.abs(1.0 - inv_scale)),
            "abs_rotation_deg": mean_std(np.abs(rot)),
            f"abs_tx_{suffix}": mean_std(np.abs(dx)),
            f"abs_ty_{suffix}": mean_std(np.abs(dy)),
        },
        "near_identity_share": _float(identity.mean()) if identity.size else None,
        "dominant_direction_deg": angle,
        "dominant_direction_share": share,
        "direction_histogram": [_float(v) for v in hist],
    }

"""The `tconv_stats` task: temporal-transformation statistics of 3TConv layers, and 3T fits of Conv3d layers.

Options: TConvStatsOptions, read into Options below (each field's default and unit).

Layers are named by their module path, the name describe and kernel_viz use, in every format (a weights-only
upload has no module tree: its layers are named by their state_dict keys, as describe names them).

Kernel shapes (C_out, C_in, k_t, k_h, k_w) decide what can be analysed:
- k_t = 1: purely spatial, no temporal transform: skipped by default (a note names them), refused by name;
- k_h = k_w = 1 ("temporal_only", e.g. the temporal half of R(2+1)D, S3D, Slow/I3D (3,1,1) or X3D's (5,1,1)
  convs): a warp of a single pixel moves nothing, so (s, r, tx, ty) cannot be determined: listed with a
  note, not fitted, not counted in any explainable share or statistic;
- k_h = 1 or k_w = 1 ("spatially_1d"): rotation and the cross-axis translation cannot be told apart:
  listed with a note, not fitted;
- otherwise a TConv3d's own parameters are read ("TConv3d") and a Conv3d is fitted ("Conv3d-fit").

Summary (also written as tconv_stats/tconv_stats.json):

    {
      "layers": [ {                                   # one per selected layer, module order
          "name", "kind": "TConv3d" | "Conv3d-fit" | "temporal_only" | "spatially_1d",
          "layer_kind": "TConv3d" | "Conv3d", "analysed": bool, "filters", "kernel_shape": [C_out, C_in, k_t, k_h, k_w],
          "stride_px_model": [x, y] | null,          # model-input pixels per layer-input pixel
          "artifacts": [paths],
          # not analysed: "note" (why), "filters_included": 0
          # analysed:
          "filters_included",                        # all for TConv3d; plain residual < threshold for fits
          "stats": {"inv_scale", "rotation_deg": SUMMARY,
                    "translation_px_layer", "translation_px_model": {"x", "y", "magnitude": SUMMARY} | null},
          "departure_from_identity": {"abs_one_minus_inv_scale", "abs_rotation_deg",
                                      "abs_tx_px_layer", "abs_ty_px_layer": {"mean", "std"}},
          "near_identity_share", "dominant_direction_deg", "dominant_direction_share",
          "direction_histogram": [12 shares, sector i centred on 30·i degrees],
          "displacement_px_layer": SUMMARY of each filter's composed net displacement,
          "trajectories": [ {"filter", "path_px_layer", "path_px_model", "cumulative_inv_scale",
                             "cumulative_rotation_deg", "path_length_px_layer", "displacement_px_layer",
                             "direction_deg"} ],      # the most-moving filters
          "filter_params": {"count", "listed", VARIANT: PER_FILTER},  # every filter (the first MAX_LISTED)
                                                     # VARIANT: "learned" (TConv3d) or "plain" and "gain" (fits)
          # Conv3d-fit only:
          "residual": {"plain": SUMMARY, "gain": SUMMARY}, "explainable_share": {"plain", "gain"},
          "zero_filters", "gain_variant": {the stats block above for filters the gain variant explains,
                                           plus "gains": per-slice SUMMARY of g_t},
      } ],
      "model": {"layers", "filters_included", "translation_units", "stats", "departure_from_identity",
                "near_identity_share", "dominant_direction_deg", "dominant_direction_share",
                "direction_histogram", "tconv_layers", "fitted_layers", "explainable_share",
                "not_analysed": {"temporal_only": [names], "spatially_1d": [names]}},
      "options": {resolved options}, "conventions": CONVENTIONS, "units": {what each figure means}, "notes": [strings]
    }

PER_FILTER = {"inv_scale", "rotation_deg", "tx_px_layer", "ty_px_layer": [filter][step] (step i maps slice i to
slice i+1), fits also "residual": [filter] (null for an all-zero filter), the gain variant also "gain":
[filter][slice]}; numbers rounded to 6 decimals. SUMMARY = {count, mean, std, min, q05, q25, median, q75, q95,
max}. Signs and units (CONVENTIONS below, and workers/tconv/statistics.py): content motion per step, rotation −r
in degrees (clockwise on screen), pixels in the array frame (x right, y down), direction angles 0 = right,
90 = down.

Artifacts under tconv_stats/: <layer>_histograms.png, <layer>_translation_joint.png,
<layer>_trajectories.png, <layer>_residuals.png (fits), <layer>.npz (per-filter arrays), tconv_stats.json.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.analysis import Analysis, Outcome
from workers.context import TaskContext
from workers.errors import BadOptions, ModelUnusable
from workers.options import TaskOptions, option
from workers.tconv import figures
from workers.tconv.fit import ThreeTFit, fit_3t
from workers.tconv.parameters import Conv3dWeight, TConvGroup, ThreeTParams
from workers.tconv.sources import find_model_layers
from workers.tconv.statistics import LayerStatistics, layer_statistics, model_statistics, step_motion, summarize
from workers.tconv.stride import Stride, measure_strides

TOP_TRAJECTORIES = 5
# Per-filter parameters listed in the JSON summary per layer (all of them are in the layer's NPZ). R3D-18's
# widest layer has 512 filters: its whole summary with every filter's numbers is about 1 MB.
MAX_LISTED = 4096
_DIGITS = 6

UNITS = {
    "inv_scale": "1/s: the kernel content's size factor per time step (>1 grows)",
    "rotation_deg": "content rotation per step in degrees (-r), positive from +x towards +y, i.e. clockwise on screen; parameters are radians",
    "translation_px_layer": "content translation per step in pixels of the layer's input; x right, y down",
    "translation_px_model": "the same times the layer's cumulative stride: pixels of the model's input",
    "direction_deg": "0 = right, 90 = down, 180 = left, 270 = up (as workers/samples/motion.py)",
    "residual": "relative residual ||W_fit - W|| / ||W|| of a 3T fit (0 = fully 3T-explainable)",
}

CONVENTIONS = {
    "axes": (
        "x: kernel column, pointing right; y: kernel row, pointing down (the array frame of the layer's input, as "
        "images are stored and shown); t: kernel time index, slice 0 meets the earliest frame of its window"
    ),
    "angles": {
        "unit": "degrees",
        "origin": "+x (pointing right)",
        "direction": "positive from +x towards +y: clockwise on screen; direction angles in [0, 360): 0 right, 90 down, 180 left, 270 up",
    },
    "motion": (
        "every figure describes how a filter's content moves from slice t to slice t+1: per-filter arrays are "
        "[filter][step], step i maps slice i to slice i+1; trajectories compose the steps"
    ),
    "scale": "inv_scale = 1/s, the content's size factor per step (> 1 grows); s is the 3T scale parameter",
    "rotation": "rotation_deg = -degrees(r): the content's rotation per step; r is the 3T rotation parameter in radians (NPZ: *_rotate_rad)",
    "translation": {
        "px_layer": "pixels of the layer's input: tx_px_layer = -t_x * (k_w - 1) / 2, ty_px_layer = -t_y * (k_h - 1) / 2 for the 3T translations t_x, t_y in normalised units (NPZ: *_translate_x, *_translate_y)",
        "px_model": "pixels of the model's input: px_layer times the layer's stride_px_model (x, y), its cumulative stride",
    },
    "gain": "gain variant only: gain[filter][t] multiplies slice t (largest |g_t| is 1, the first non-zero g_t is positive)",
    "residual": "relative residual ||W_fit - W|| / ||W|| of a filter's 3T fit; null for an all-zero filter",
}

# Why a layer of a given kernel shape is listed but not analysed.
NOT_ANALYSED = {
    "temporal_only": (
        "1x1 spatial kernel: a warp of a single pixel moves nothing, so scale, rotation and translation cannot be "
        "determined; this is a purely temporal filter (e.g. the temporal half of a factorised (2+1)D conv). "
        "Not fitted, and not counted in explainable shares or statistics"
    ),
    "spatially_1d": (
        "kernel one pixel wide or tall: rotation and the translation across it cannot be told apart, so the 3T "
        "parameters are not determined. Not fitted, and not counted in explainable shares or statistics"
    ),
}


@dataclass(frozen=True)
class Options(TaskOptions):
    """TConvStatsOptions."""

    TASK = "tconv_stats"

    layers: tuple[str, ...] = option((), "module paths; empty = every 3T layer and every Conv3d with k_t > 1")
    fit_conv3d: bool = option(True, "fit the 3T parameters of plain Conv3d layers")
    residual_threshold: float = option(0.2, "relative residual ||W_fit - W|| / ||W|| below which a fit explains a filter, > 0")
    restarts: int = option(4, "random restarts per fit, in [0, 64]")
    fit_steps: int = option(200, "optimisation steps per fit, in [1, 10000]")
    seed: int = option(0, "seed of the fits' restarts")
    identity_tolerance: float = option(0.05, "|1 - 1/s|, |r| in rad and |t| in normalised units under which a step is the identity, >= 0")

    def check(self) -> None:
        if not self.residual_threshold > 0:
            raise BadOptions("residual_threshold must be > 0 (a relative residual, e.g. 0.2)", reason="BAD_RESIDUAL_THRESHOLD")
        if self.restarts < 0 or self.restarts > 64:
            raise BadOptions("restarts must be between 0 and 64", reason="BAD_RESTARTS")
        if self.fit_steps < 1 or self.fit_steps > 10_000:
            raise BadOptions("fit_steps must be between 1 and 10000", reason="BAD_FIT_STEPS")
        if not self.identity_tolerance >= 0:
            raise BadOptions("identity_tolerance must be >= 0", reason="BAD_IDENTITY_TOLERANCE")


Layer = TConvGroup | Conv3dWeight


def shape_kind(kernel_shape: tuple[int, ...]) -> str:
    """"spatial_only" (k_t = 1), "temporal_only" (1x1 spatial), "spatially_1d" (one side 1), or "" (analysable)."""
    _c_out, _c_in, k_t, k_h, k_w = kernel_shape
    if k_t <= 1:
        return "spatial_only"
    if k_h == 1 and k_w == 1:
        return "temporal_only"
    if k_h == 1 or k_w == 1:
        return "spatially_1d"
    return ""


def _select(groups: list[TConvGroup], convs: list[Conv3dWeight], opts: Options) -> tuple[list[Layer], list[str]]:
    notes: list[str] = []
    temporal = [c for c in convs if c.weight.shape[2] > 1]
    flat = [c.name for c in convs if c.weight.shape[2] <= 1]
    if not opts.layers:
        chosen: list[Layer] = list(groups) + (temporal if opts.fit_conv3d else [])
        if not groups and not temporal:
            raise ModelUnusable(
                "tconv_stats found no 3TConv layer (first_weight/scale/rotate/translate_x/translate_y) and no "
                "Conv3d weight with a temporal extent k_t > 1 in this model",
                reason="NO_TEMPORAL_LAYERS",
            )
        if not chosen:
            raise ModelUnusable(
                "this model has no 3TConv layer, and fit_conv3d is false so its Conv3d layers are not fitted",
                reason="NO_TEMPORAL_LAYERS",
            )
        if temporal and not opts.fit_conv3d:
            notes.append(f"fit_conv3d is false: Conv3d layers not fitted: {[c.name for c in temporal]}")
        if flat:
            notes.append(f"Conv3d layers with k_t = 1 have no temporal transform and are skipped: {flat}")
        return chosen, notes
    by_name: dict[str, Layer] = {g.name: g for g in groups}
    by_name.update({c.name: c for c in convs if c.name not in by_name})
    chosen = []
    for name in opts.layers:
        layer = by_name.get(name)
        if layer is None:
            valid = [g.name for g in groups] + [c.name for c in temporal]
            raise BadOptions(f"no 3TConv or Conv3d layer named {name!r}; valid: {valid}", reason="UNKNOWN_LAYER")
        if isinstance(layer, Conv3dWeight):
            if layer.weight.shape[2] <= 1:
                raise BadOptions(f"Conv3d layer {name!r} has k_t = 1: no temporal transform to fit", reason="LAYER_NOT_TEMPORAL")
            if not opts.fit_conv3d:
                raise BadOptions(f"layer {name!r} is a plain Conv3d and fit_conv3d is false", reason="CONV3D_FIT_DISABLED")
        chosen.append(layer)
    return chosen, notes


def _stem(name: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "root"
    candidate, i = stem, 1
    while candidate in used:
        i += 1
        candidate = f"{stem}_{i}"
    used.add(candidate)
    return candidate


def _figures(stats: LayerStatistics, title: str, out: Path, stem: str, suffix: str = "") -> list[Path]:
    """Histograms, joint translation and trajectories; none when no filter is included (they would be empty)."""
    if not stats.summary["filters_included"]:
        return []
    return [
        figures.histograms(stats.arrays, title, out / f"{stem}{suffix}_histograms.png"),
        figures.joint_translation(stats.arrays, title, out / f"{stem}{suffix}_translation_joint.png"),
        figures.trajectory_plot(stats.summary["trajectories"], title, out / f"{stem}{suffix}_trajectories.png"),
    ]


def _params(fit: ThreeTFit, kernel_hw: tuple[int, int]) -> ThreeTParams:
    return ThreeTParams(fit.scale, fit.rotate, fit.translate_x, fit.translate_y, kernel_hw)


def _share(residual: np.ndarray, threshold: float) -> float | None:
    finite = residual[np.isfinite(residual)]
    return round(float((finite < threshold).mean()), 6) if finite.size else None


def _listed(values: np.ndarray) -> list[Any]:
    """A (filters, ...) array as nested lists, rounded, non-finite as null."""
    rounded = np.round(np.asarray(values, dtype=np.float64)[:MAX_LISTED], _DIGITS)
    out = rounded.astype(object)
    out[~np.isfinite(rounded)] = None
    return out.tolist()


def _per_filter(params: ThreeTParams, residual: np.ndarray | None = None, gain: np.ndarray | None = None) -> dict[str, Any]:
    """Every filter's content motion per step ([filter][step], CONVENTIONS units), residual and gains."""
    motion = step_motion(params)
    block: dict[str, Any] = {
        "inv_scale": _listed(motion.inv_scale.T),
        "rotation_deg": _listed(motion.rotation_deg.T),
        "tx_px_layer": _listed(motion.dx_px.T),
        "ty_px_layer": _listed(motion.dy_px.T),
    }
    if residual is not None:
        block["residual"] = _listed(residual)
    if gain is not None:
        block["gain"] = _listed(gain.T)
    return block


def _not_analysed(layer: Layer, kind: str, stride: Stride | None) -> dict[str, Any]:
    return {
        "name": layer.name, "kind": kind, "layer_kind": "TConv3d" if isinstance(layer, TConvGroup) else "Conv3d",
        "analysed": False, "filters": int(layer.kernel_shape[0]), "kernel_shape": list(layer.kernel_shape),
        "stride_px_model": None if stride is None else list(stride), "filters_included": 0,
        "note": NOT_ANALYSED[kind], "_paths": [],
    }


def _analyse_group(group: TConvGroup, stride: Stride | None, opts: Options, out: Path, stem: str) -> tuple[dict[str, Any], LayerStatistics]:
    stats = layer_statistics(group.params, stride=stride, identity_tolerance=opts.identity_tolerance, top=TOP_TRAJECTORIES)
    paths = _figures(stats, f"{group.name or '(root)'} (3TConv)", out, stem)
    np.savez_compressed(out / f"{stem}.npz", **stats.arrays)
    paths.append(out / f"{stem}.npz")
    head = {
        "name": group.name, "kind": "TConv3d", "layer_kind": "TConv3d", "analysed": True,
        "filters": group.params.filters, "kernel_shape": list(group.kernel_shape),
    }
    per_filter = {"count": group.params.filters, "listed": min(group.params.filters, MAX_LISTED), "learned": _per_filter(group.params)}
    block = {**head, "stride_px_model": None if stride is None else list(stride), **stats.summary, "filter_params": per_filter, "_paths": paths}
    return block, stats


def _analyse_conv(
    conv: Conv3dWeight, stride: Stride | None, opts: Options, out: Path, stem: str, device: torch.device, progress: Any
) -> tuple[dict[str, Any], LayerStatistics, np.ndarray, np.ndarray]:
    weight = conv.weight
    k_hw = (int(weight.shape[3]), int(weight.shape[4]))
    common = dict(restarts=opts.restarts, steps=opts.fit_steps, seed=opts.seed, device=device)
    plain = fit_3t(weight, gain=False, progress=lambda f: progress(0.5 * f), **common)
    gained = fit_3t(weight, gain=True, progress=lambda f: progress(0.5 + 0.5 * f), warm_start=plain, **common)
    threshold = opts.residual_threshold
    keep = np.isfinite(plain.residual) & (plain.residual < threshold)
    keep_gain = np.isfinite(gained.residual) & (gained.residual < threshold)
    stats = layer_statistics(
        _params(plain, k_hw).select(keep), filter_index=np.flatnonzero(keep), stride=stride,
        identity_tolerance=opts.identity_tolerance, top=TOP_TRAJECTORIES,
    )
    gain_stats = layer_statistics(
        _params(gained, k_hw).select(keep_gain), filter_index=np.flatnonzero(keep_gain), stride=stride,
        identity_tolerance=opts.identity_tolerance, top=TOP_TRAJECTORIES,
    )
    assert gained.gain is not None
    label = conv.name or "(root)"
    paths = _figures(stats, f"{label} (Conv3d, 3T fit, residual < {threshold:g})", out, stem)
    paths.append(figures.residual_plot(plain.residual, gained.residual, threshold, f"{label}: 3T-explainability", out / f"{stem}_residuals.png"))
    arrays = dict(stats.arrays)
    arrays.update(
        residual_plain=plain.residual, residual_gain=gained.residual,
        fit_scale=plain.scale, fit_rotate_rad=plain.rotate, fit_translate_x=plain.translate_x, fit_translate_y=plain.translate_y,
        gain_fit_scale=gained.scale, gain_fit_rotate_rad=gained.rotate, gain_fit_translate_x=gained.translate_x,
        gain_fit_translate_y=gained.translate_y, gain_fit_gain=gained.gain,
    )
    np.savez_compressed(out / f"{stem}.npz", **arrays)
    paths.append(out / f"{stem}.npz")
    gain_block = dict(gain_stats.summary)
    gain_block["gains"] = [summarize(gained.gain[t][keep_gain]) for t in range(gained.gain.shape[0])]
    filters = int(weight.shape[0])
    summary = {
        "name": conv.name, "kind": "Conv3d-fit", "layer_kind": "Conv3d", "analysed": True, "filters": filters,
        "kernel_shape": list(conv.kernel_shape),
        "stride_px_model": None if stride is None else list(stride),
        **stats.summary,
        "residual": {"plain": summarize(plain.residual), "gain": summarize(gained.residual)},
        "explainable_share": {"plain": _share(plain.residual, threshold), "gain": _share(gained.residual, threshold)},
        "zero_filters": int((~np.isfinite(plain.residual)).sum()),
        "gain_variant": gain_block,
        "filter_params": {
            "count": filters, "listed": min(filters, MAX_LISTED),
            "plain": _per_filter(_params(plain, k_hw), residual=plain.residual),
            "gain": _per_filter(_params(gained, k_hw), residual=gained.residual, gain=gained.gain),
        },
        "_paths": paths,
    }
    return summary, stats, plain.residual, gained.residual


class TConvStats(Analysis[Options]):
    options = Options
    summary_json = {"allow_nan": False, "separators": (",", ":")}

    def run(self, ctx: TaskContext, options: Options) -> Outcome:
        """Statistics of every selected 3TConv layer and 3T fits of every selected Conv3d layer."""
        return Outcome(_summary(ctx, options))


ANALYSIS = TConvStats()


def _summary(ctx: TaskContext, opts: Options) -> dict[str, Any]:
    ctx.progress("reading parameters", 0.0)
    groups, convs, notes = find_model_layers(ctx.model)
    layers, select_notes = _select(groups, convs, opts)
    notes.extend(select_notes)
    ctx.progress("measuring strides", 0.02)
    strides, stride_notes = measure_strides(ctx.model, [layer.name for layer in layers], ctx.device)
    notes.extend(stride_notes)
    out = ctx.out_dir
    used: set[str] = set()
    blocks: list[dict[str, Any]] = []
    pooled: list[LayerStatistics] = []
    plain_res: list[np.ndarray] = []
    gain_res: list[np.ndarray] = []
    skipped: dict[str, list[str]] = {kind: [] for kind in NOT_ANALYSED}
    kinds = [shape_kind(layer.kernel_shape) for layer in layers]
    # Fits cost far more than reading parameters, in proportion to their filters: weigh progress by that.
    weights = [0.0 if kind else (1.0 if isinstance(layer, TConvGroup) else 1.0 + 2.0 * layer.kernel_shape[0]) for layer, kind in zip(layers, kinds)]
    total = max(sum(weights), 1e-9)
    done = 0.0
    for layer, kind, weight in zip(layers, kinds, weights):
        start, span = 0.05 + 0.9 * done / total, 0.9 * weight / total
        stage = f"layer {layer.name or '(root)'}"
        ctx.progress(stage, start)
        stride = strides.get(layer.name)
        if kind:
            block = _not_analysed(layer, kind, stride)
            skipped[kind].append(layer.name)
        elif isinstance(layer, TConvGroup):
            block, stats = _analyse_group(layer, stride, opts, out, _stem(layer.name, used))
            pooled.append(stats)
        else:
            report = lambda f, s=stage, a=start, w=span: ctx.progress(s, a + w * min(max(f, 0.0), 1.0))  # noqa: E731
            block, stats, pr, gr = _analyse_conv(layer, stride, opts, out, _stem(layer.name, used), ctx.device, report)
            pooled.append(stats)
            plain_res.append(pr)
            gain_res.append(gr)
        block["artifacts"] = [str(p.relative_to(out.parent)) for p in block.pop("_paths")]  # <task>/<file>
        blocks.append(block)
        done += weight
    for kind, names in skipped.items():
        if names:
            notes.append(f"{kind} layers listed but not analysed ({NOT_ANALYSED[kind].split(':')[0]}): {names}")
    model = model_statistics(pooled)
    model["tconv_layers"] = sum(isinstance(layer, TConvGroup) and not kind for layer, kind in zip(layers, kinds))
    model["fitted_layers"] = len(plain_res)
    model["explainable_share"] = (
        {"plain": _share(np.concatenate(plain_res), opts.residual_threshold), "gain": _share(np.concatenate(gain_res), opts.residual_threshold)}
        if plain_res else None
    )
    model["not_analysed"] = skipped
    summary = {
        "layers": blocks, "model": model, "options": opts.to_dict(), "conventions": CONVENTIONS, "units": UNITS, "notes": notes,
    }
    ctx.progress("done", 1.0)
    return summary

"""The `tconv_stats` task: temporal-transformation statistics of 3TConv layers, and 3T fits of Conv3d layers.

Options (proto TConvStatsOptions, JSON field names): layers (empty = every 3T layer and every Conv3d with
k_t > 1), fit_conv3d (True), residual_threshold (0.2), restarts (4), fit_steps (200), seed (0),
identity_tolerance (0.05; |1−1/s|, |r| in rad and |t| in normalised units).

Summary (also written as tconv_stats/tconv_stats.json):

    {
      "layers": [ {                                   # one per analysed layer, state_dict order
          "name", "kind": "TConv3d" | "Conv3d-fit", "filters", "kernel_shape": [C_out, C_in, k_t, k_h, k_w],
          "stride_px_model": [x, y] | null,          # model-input pixels per layer-input pixel
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
                             "direction_deg"} ]       # the most-moving filters
          # Conv3d-fit only:
          "residual": {"plain": SUMMARY, "gain": SUMMARY}, "explainable_share": {"plain", "gain"},
          "zero_filters", "gain_variant": {the stats block above for filters the gain variant explains,
                                           plus "gains": per-slice SUMMARY of g_t},
          "artifacts": [paths]
      } ],
      "model": {"layers", "filters_included", "translation_units", "stats", "departure_from_identity",
                "near_identity_share", "dominant_direction_deg", "dominant_direction_share",
                "direction_histogram", "tconv_layers", "fitted_layers", "explainable_share"},
      "options": {resolved options}, "units": {what each figure means}, "notes": [strings]
    }

SUMMARY = {count, mean, std, min, q05, q25, median, q75, q95, max}. Signs and units are those of
workers/tconv/statistics.py: content motion per step, rotation −r in degrees (clockwise on screen),
pixels in the array frame (x right, y down), direction angles 0 = right, 90 = down.

Artifacts under tconv_stats/: <layer>_histograms.png, <layer>_translation_joint.png,
<layer>_trajectories.png, <layer>_residuals.png (fits), <layer>.npz (per-filter arrays), tconv_stats.json.
"""

from __future__ import annotations

import json
import re
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.context import TaskContext
from workers.errors import BadOptions, ModelUnusable
from workers.tasks import register
from workers.tconv import figures
from workers.tconv.fit import ThreeTFit, fit_3t
from workers.tconv.parameters import Conv3dWeight, TConvGroup, ThreeTParams, find_layers
from workers.tconv.statistics import LayerStatistics, layer_statistics, model_statistics, summarize
from workers.tconv.stride import Stride, measure_strides

TASK = "tconv_stats"
TOP_TRAJECTORIES = 5

UNITS = {
    "inv_scale": "1/s: the kernel content's size factor per time step (>1 grows)",
    "rotation_deg": "content rotation per step in degrees (-r), positive from +x towards +y, i.e. clockwise on screen; parameters are radians",
    "translation_px_layer": "content translation per step in pixels of the layer's input; x right, y down",
    "translation_px_model": "the same times the layer's cumulative stride: pixels of the model's input",
    "direction_deg": "0 = right, 90 = down, 180 = left, 270 = up (as workers/samples/motion.py)",
    "residual": "relative residual ||W_fit - W|| / ||W|| of a 3T fit (0 = fully 3T-explainable)",
}


@dataclass(frozen=True)
class Options:
    layers: tuple[str, ...]
    fit_conv3d: bool
    residual_threshold: float
    restarts: int
    fit_steps: int
    seed: int
    identity_tolerance: float

    @classmethod
    def read(cls, ctx: TaskContext) -> "Options":
        try:
            opts = cls(
                layers=tuple(str(n) for n in ctx.option("layers", [])),
                fit_conv3d=bool(ctx.option("fit_conv3d", True)),
                residual_threshold=float(ctx.option("residual_threshold", 0.2)),
                restarts=int(ctx.option("restarts", 4)),
                fit_steps=int(ctx.option("fit_steps", 200)),
                seed=int(ctx.option("seed", 0)),  # int64 arrives as a string in proto JSON
                identity_tolerance=float(ctx.option("identity_tolerance", 0.05)),
            )
        except (TypeError, ValueError) as exc:
            raise BadOptions(f"tconv_stats options: {exc}", reason="BAD_TASK_OPTIONS") from exc
        if not opts.residual_threshold > 0:
            raise BadOptions("residual_threshold must be > 0 (a relative residual, e.g. 0.2)", reason="BAD_RESIDUAL_THRESHOLD")
        if opts.restarts < 0 or opts.restarts > 64:
            raise BadOptions("restarts must be between 0 and 64", reason="BAD_RESTARTS")
        if opts.fit_steps < 1 or opts.fit_steps > 10_000:
            raise BadOptions("fit_steps must be between 1 and 10000", reason="BAD_FIT_STEPS")
        if not opts.identity_tolerance >= 0:
            raise BadOptions("identity_tolerance must be >= 0", reason="BAD_IDENTITY_TOLERANCE")
        return opts

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "layers": list(self.layers)}


Layer = TConvGroup | Conv3dWeight


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


def _analyse_group(group: TConvGroup, stride: Stride | None, opts: Options, out: Path, stem: str) -> tuple[dict[str, Any], LayerStatistics]:
    stats = layer_statistics(group.params, stride=stride, identity_tolerance=opts.identity_tolerance, top=TOP_TRAJECTORIES)
    paths = _figures(stats, f"{group.name or '(root)'} (3TConv)", out, stem)
    np.savez_compressed(out / f"{stem}.npz", **stats.arrays)
    paths.append(out / f"{stem}.npz")
    head = {"name": group.name, "kind": "TConv3d", "filters": group.params.filters, "kernel_shape": list(group.kernel_shape)}
    return {**head, "stride_px_model": None if stride is None else list(stride), **stats.summary, "_paths": paths}, stats


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
    summary = {
        "name": conv.name, "kind": "Conv3d-fit", "filters": int(weight.shape[0]), "kernel_shape": list(conv.kernel_shape),
        "stride_px_model": None if stride is None else list(stride),
        **stats.summary,
        "residual": {"plain": summarize(plain.residual), "gain": summarize(gained.residual)},
        "explainable_share": {"plain": _share(plain.residual, threshold), "gain": _share(gained.residual, threshold)},
        "zero_filters": int((~np.isfinite(plain.residual)).sum()),
        "gain_variant": gain_block,
        "_paths": paths,
    }
    return summary, stats, plain.residual, gained.residual


@register(TASK)
def run(ctx: TaskContext) -> dict[str, Any]:
    """Statistics of every selected 3TConv layer and 3T fits of every selected Conv3d layer."""
    opts = Options.read(ctx)
    ctx.progress("reading parameters", 0.0)
    groups, convs = find_layers(ctx.model.state_dict)
    layers, notes = _select(groups, convs, opts)
    ctx.progress("measuring strides", 0.02)
    strides, stride_notes = measure_strides(ctx.model, [layer.name for layer in layers], ctx.device)
    notes.extend(stride_notes)
    out = ctx.out_dir / TASK
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    blocks: list[dict[str, Any]] = []
    pooled: list[LayerStatistics] = []
    plain_res: list[np.ndarray] = []
    gain_res: list[np.ndarray] = []
    # Fits cost far more than reading parameters: weigh progress by that.
    weights = [1.0 if isinstance(layer, TConvGroup) else 20.0 for layer in layers]
    done = 0.0
    for layer, weight in zip(layers, weights):
        start, span = 0.05 + 0.9 * done / sum(weights), 0.9 * weight / sum(weights)
        stage = f"layer {layer.name or '(root)'}"
        ctx.progress(stage, start)
        stem = _stem(layer.name, used)
        stride = strides.get(layer.name)
        if isinstance(layer, TConvGroup):
            block, stats = _analyse_group(layer, stride, opts, out, stem)
        else:
            report = lambda f, s=stage, a=start, w=span: ctx.progress(s, a + w * min(max(f, 0.0), 1.0))  # noqa: E731
            block, stats, pr, gr = _analyse_conv(layer, stride, opts, out, stem, ctx.device, report)
            plain_res.append(pr)
            gain_res.append(gr)
        block["artifacts"] = [str(p.relative_to(ctx.out_dir)) for p in block.pop("_paths")]
        blocks.append(block)
        pooled.append(stats)
        done += weight
    model = model_statistics(pooled)
    model["tconv_layers"] = sum(isinstance(layer, TConvGroup) for layer in layers)
    model["fitted_layers"] = len(plain_res)
    model["explainable_share"] = (
        {"plain": _share(np.concatenate(plain_res), opts.residual_threshold), "gain": _share(np.concatenate(gain_res), opts.residual_threshold)}
        if plain_res else None
    )
    summary = {"layers": blocks, "model": model, "options": opts.to_dict(), "units": UNITS, "notes": notes}
    (out / "tconv_stats.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    ctx.progress("done", 1.0)
    return summary

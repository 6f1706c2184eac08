"""tconv_stats in the SDK: its options' defaults, gate metrics, findings, verdicts and report section.

The analysis (Ras et al. 2020, 3TConv; ANALYSES.md) reads which temporal transformations (scale, rotation,
translation per time step) a 3D kernel encodes: 3TConv layers are read directly, ordinary Conv3d layers are fitted.
Summary: {"layers": [{"name", "kind": "TConv3d" | "Conv3d-fit", "filters", "filters_included", "stats",
"departure_from_identity", "near_identity_share", "dominant_direction_deg", "dominant_direction_share",
"direction_histogram", "trajectories", (fits:) "residual": {"plain", "gain": SUMMARY},
"explainable_share": {"plain", "gain"}, "zero_filters", "gain_variant"}], "model": {...pooled...},
"options", "units", "notes"}; SUMMARY = {count, mean, std, min, q05, ..., max}.
"""

from __future__ import annotations

from html import escape
from pathlib import PurePosixPath
from typing import Any, Callable

from sdk import metrics
from sdk.report import charts
from sdk.metrics import Extractor, Metric
from sdk.plugins.base import Figures, Plugin, Summary, Verdict
from sdk.plugins.summaries import arrow, compass, layer_agreement, layer_names, percent, pick_layers
from sdk.report.assets import Assets
from sdk.report.html import figure, fmt, grid, kv, table
from sdk.result import TaskOutcome

# What an unset option means, as `kernelscope analyze --help` shows it (the proto documents the same; a test holds them equal).
OPTION_DEFAULTS: dict[str, str] = {
    "layers": "every 3D convolution", "fit_conv3d": "true", "residual_threshold": "0.2", "restarts": "4",
    "fit_steps": "200", "seed": "0", "identity_tolerance": "0.05",
}

# ---------------------------------------------------------------------- gate metrics
_METRICS: list[Metric] = []  # appended to by the metrics.metric decorators below


def _fitted(s: Summary, layer: str | None) -> list[dict[str, Any]]:
    return [entry for entry in pick_layers(s, layer) if entry.get("kind") == "Conv3d-fit"]


def _pooled_residual(variant: str) -> Extractor:
    def extract(s: Summary, layer: str | None) -> float | None:
        blocks = [entry["residual"][variant] for entry in _fitted(s, layer)]
        counted = [(b["mean"], b["count"]) for b in blocks if b.get("mean") is not None and b.get("count")]
        total = sum(n for _, n in counted)
        return sum(m * n for m, n in counted) / total if total else None

    return extract


def _pooled_share(variant: str) -> Extractor:
    def extract(s: Summary, layer: str | None) -> float | None:
        if layer is None and s.get("model", {}).get("explainable_share") is not None:
            return s["model"]["explainable_share"][variant]
        fitted = _fitted(s, layer)
        weighted = [(entry["explainable_share"][variant], entry["filters"]) for entry in fitted if entry["explainable_share"][variant] is not None]
        total = sum(n for _, n in weighted)
        return sum(v * n for v, n in weighted) / total if total else None

    return extract


def _tconv_field(read: Callable[[dict[str, Any]], Any]) -> Extractor:
    """`read` applied to the pooled "model" block, or to the named layer's block."""

    def extract(s: Summary, layer: str | None) -> float | None:
        return read(s["model"] if layer is None else pick_layers(s, layer)[0])

    return extract


def _translation_mean(block: dict[str, Any]) -> float | None:
    stats = block["stats"]
    chosen = stats.get("translation_px_model") or stats["translation_px_layer"]
    return chosen["magnitude"]["mean"]


_TCONV = dict(per_layer=True, layers=layer_names)
metrics.metric(_METRICS, "tconv_stats.mean_residual", "Mean relative residual of the plain 3T fit over fitted Conv3d filters (0 = fully 3T-explainable).", "lower", **_TCONV)(_pooled_residual("plain"))
metrics.metric(_METRICS, "tconv_stats.mean_residual_gain", "Mean relative residual of the 3T fit with per-slice gains.", "lower", **_TCONV)(_pooled_residual("gain"))
metrics.metric(_METRICS, "tconv_stats.explainable_share", "Share of fitted filters whose plain 3T residual is below the threshold.", "higher", **_TCONV)(_pooled_share("plain"))
metrics.metric(_METRICS, "tconv_stats.explainable_share_gain", "Share of fitted filters the gain variant explains below the threshold.", "higher", **_TCONV)(_pooled_share("gain"))


@metrics.metric(_METRICS, "tconv_stats.zero_filters", "Fitted Conv3d filters that are all zero (dead: nothing to fit).", "lower", **_TCONV)
def _zero_filters(s: Summary, layer: str | None) -> float | None:
    fitted = _fitted(s, layer)
    return sum(int(entry.get("zero_filters") or 0) for entry in fitted) if fitted else None


metrics.metric(_METRICS, "tconv_stats.filters_included", "Filters the statistics cover (every 3TConv filter; fits below the residual threshold).", None, **_TCONV)(_tconv_field(lambda b: b["filters_included"]))
metrics.metric(_METRICS, "tconv_stats.near_identity_share", "Share of included filters whose transforms stay near identity.", None, **_TCONV)(_tconv_field(lambda b: b["near_identity_share"]))
metrics.metric(_METRICS, "tconv_stats.mean_abs_rotation_deg", "Mean |rotation| per time step, degrees.", None, **_TCONV)(_tconv_field(lambda b: b["departure_from_identity"]["abs_rotation_deg"]["mean"]))
metrics.metric(_METRICS, "tconv_stats.mean_abs_scale_change", "Mean |1 - 1/s| per time step.", None, **_TCONV)(_tconv_field(lambda b: b["departure_from_identity"]["abs_one_minus_inv_scale"]["mean"]))
metrics.metric(_METRICS, "tconv_stats.mean_translation_px", "Mean per-step translation magnitude, in model-input pixels (layer-input pixels where the stride is unknown).", None, **_TCONV)(_tconv_field(_translation_mean))
metrics.metric(_METRICS, "tconv_stats.dominant_direction_share", "Share of filters moving within the dominant direction's sector.", None, **_TCONV)(_tconv_field(lambda b: b["dominant_direction_share"]))

def _tconv_motion(block: dict[str, Any], threshold: float) -> dict[int, tuple[float, float]]:
    """Filter index -> net displacement (Σ tx, Σ ty over steps, layer pixels) of the filters the 3T model explains."""
    params = block.get("filter_params") or {}
    variant = params.get("learned") or params.get("plain")
    if not variant:
        return {}
    residual = variant.get("residual")
    out = {}
    for i, (tx, ty) in enumerate(zip(variant["tx_px_layer"], variant["ty_px_layer"])):
        if residual is not None and (residual[i] is None or not residual[i] < threshold):
            continue
        out[i] = (sum(v for v in tx if v is not None), sum(v for v in ty if v is not None))
    return out


@metrics.paired_metric(_METRICS, 
    "tconv_stats.direction_agreement",
    "Agreement of each filter's net 3T displacement with the same filter's in the baseline: Σ a·b / Σ |a||b| over the filters "
    "3T-explainable in both (1 = same motion, −1 = every filter moves the opposite way, as time-reversed kernels do).",
    "higher",
    layer_names,
)
def _tconv_direction_agreement(s: Summary, base: Summary, layer: str | None) -> float | None:
    threshold = float((s.get("options") or {}).get("residual_threshold", 0.2))
    base_threshold = float((base.get("options") or {}).get("residual_threshold", 0.2))
    return layer_agreement(s, base, layer, lambda e: _tconv_motion(e, threshold), lambda e: _tconv_motion(e, base_threshold))


# ---------------------------------------------------------------------- findings


def _figures(summary: Summary) -> Figures:
    """Per layer: how much of it the 3T model explains (fits) or how its 3TConv filters move, for findings.lines and --json."""
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


def _lines(figures: Figures) -> list[str]:
    threshold = figures["residual_threshold"]
    out = []
    for layer in figures["layers"]:
        if "note" in layer:
            out.append(f"{layer['layer']} ({layer['kind']}): not analysed: {layer['note']}")
        elif layer["kind"] == "Conv3d-fit":
            if layer["explainable_share"] is None:
                out.append(f"{layer['layer']}: no filter fitted")
                continue
            text = f"{layer['layer']}: {layer['explainable_filters']} of {layer['filters']} filters 3T-explainable ({percent(layer['explainable_share'])}"
            text += f", residual < {threshold:g})" if threshold is not None else ")"
            if layer["best_residual"] is not None:
                text += f"; best residual {layer['best_residual']:.2f}, mean {layer['mean_residual']:.2f}"
            out.append(text)
        else:
            text = f"{layer['layer']} ({layer['kind']}): {layer['filters']} filters"
            if layer.get("dominant_direction_deg") is not None and layer.get("dominant_direction_share") is not None:
                angle = float(layer["dominant_direction_deg"])
                text += f", {percent(layer['dominant_direction_share'])} translate {compass(angle)} ({angle:.0f}°)"
            if layer.get("near_identity_share") is not None:
                text += f"; {percent(layer['near_identity_share'])} near identity"
            out.append(text)
    return out or ["no layer analysed"]


# ---------------------------------------------------------------------- verdicts


def _fits(layer: dict[str, Any]) -> int:
    """How many filters of a fitted Conv3d layer were fitted (all-zero filters are not)."""
    return int((((layer.get("residual") or {}).get("plain") or {}).get("count")) or 0)


def _explained(layer: dict[str, Any], variant: str) -> int:
    """How many of those the 3T model explains below the threshold (plain fit, or with per-slice gains): the count
    the layer's verdict in its section and the pooled verdict at the top of the page both state."""
    return round(((layer.get("explainable_share") or {}).get(variant) or 0.0) * _fits(layer))


def _verdicts(s: Summary) -> list[Verdict]:
    """The fitted layers pooled into one verdict, one per 3TConv layer, and one naming the layers not analysed."""
    layers = s.get("layers", [])
    threshold = (s.get("options") or {}).get("residual_threshold")
    out = []
    fitted = [layer for layer in layers if layer.get("kind") == "Conv3d-fit"]
    if fitted:
        total = explained = gained = zero = 0
        best: float | None = None
        for layer in fitted:
            plain = (layer.get("residual") or {}).get("plain") or {}
            count = _fits(layer)
            total += count
            explained += _explained(layer, "plain")
            gained += _explained(layer, "gain")
            zero += int(layer.get("zero_filters") or 0)
            if plain.get("min") is not None:
                best = plain["min"] if best is None else min(best, plain["min"])
        text = f"{explained} of {total} fitted filters 3T-explainable (plain fit); best residual {fmt(best, 2)}, threshold {fmt(threshold)}"
        text += f"; {gained} with per-slice gains" if gained != explained else ""
        text += f"; {zero} all-zero filters not fitted" if zero else ""
        if explained == 0:
            text += ". These kernels are not one 2D pattern scaled, rotated and shifted over time, so there are no motion statistics to show (usual for an ordinary 3D CNN)"
        out.append(Verdict("tconv_stats", "ok" if explained else "note", text))
    for layer in layers:
        if layer.get("kind") == "TConv3d":
            angle = layer.get("dominant_direction_deg")
            text = f"{layer.get('name')}: 3TConv layer, {layer.get('filters')} filters read"
            if angle is not None:
                text += f"; dominant motion {arrow(float(angle))} ({_percent(layer.get('dominant_direction_share'))} of filters)"
            if layer.get("near_identity_share") is not None:
                text += f"; {_percent(layer.get('near_identity_share'))} near identity"
            out.append(Verdict("tconv_stats", "ok", text))
    skipped = [layer for layer in layers if layer.get("analysed") is False]
    if skipped:
        kinds = sorted({str(layer.get("kind")) for layer in skipped})
        out.append(Verdict("tconv_stats", "note", f"{len(skipped)} layer(s) listed but not analysed ({', '.join(kinds)}): {', '.join(str(x.get('name')) for x in skipped)}"))
    return out or [Verdict("tconv_stats", "note", "no layer analysed")]


def _percent(share: Any) -> str:
    """A share as the report writes it (\"12.5 %\")."""
    return "—" if share is None else f"{fmt(100 * float(share), 3)} %"


# ---------------------------------------------------------------------- report section


def _section(outcome: "TaskOutcome", assets: Assets) -> str:
    """The pooled figures, the layer table, then per layer its verdict, figures and most-moving filters."""
    s = outcome.summary or {}
    layers = s.get("layers", [])
    model = s.get("model", {})
    share = model.get("explainable_share") or {}
    out = kv(
        [
            ("layers analysed", model.get("layers")),
            ("3TConv layers / fitted Conv3d layers", f"{model.get('tconv_layers', 0)} / {model.get('fitted_layers', 0)}"),
            ("filters in the statistics", model.get("filters_included")),
            ("near-identity share", model.get("near_identity_share")),
            ("dominant direction (°, 0 = right, 90 = down)", model.get("dominant_direction_deg")),
            ("share in the dominant direction", model.get("dominant_direction_share")),
            ("3T-explainable share: plain / with gains", f"{fmt(share.get('plain'))} / {fmt(share.get('gain'))}" if share else None),
            ("residual threshold", (s.get("options") or {}).get("residual_threshold")),
            ("translation units (pooled)", model.get("translation_units")),
        ]
    )
    for note in s.get("notes") or []:
        out += f'<p class="muted">Note: {escape(str(note))}</p>'
    threshold = (s.get("options") or {}).get("residual_threshold")
    moving = any(layer.get("filters_included") for layer in layers)
    rows = []
    for layer in layers:
        dep = layer.get("departure_from_identity") or {}
        residual = layer.get("residual") or {}
        explained = layer.get("explainable_share") or {}
        row: list[Any] = [
            layer.get("name"),
            layer.get("kind"),
            layer.get("filters"),
            layer.get("filters_included"),
            (residual.get("plain") or {}).get("min"),
            (residual.get("plain") or {}).get("mean"),
            (residual.get("gain") or {}).get("mean"),
            explained.get("plain"),
            explained.get("gain"),
            layer.get("zero_filters"),
        ]
        if moving:
            row += [layer.get("near_identity_share"), (dep.get("abs_one_minus_inv_scale") or {}).get("mean"), (dep.get("abs_rotation_deg") or {}).get("mean"), layer.get("dominant_direction_deg")]
        rows.append(row)
    headers = ["layer", "kind", "filters", "in statistics", "best residual (plain)", "mean residual (plain)", "mean residual (gains)", "explainable (plain)", "explainable (gains)", "zero filters"]
    if moving:
        headers += ["near identity", "mean |1−1/s|", "mean |rotation| °", "dominant direction °"]
    out += "<h3>Layers</h3>" + table(headers, rows, notes=_TCONV_NOTES)
    if not moving:
        out += (
            f'<p class="no-plot">No filter is in the statistics (for fitted Conv3d layers: none has a plain 3T residual below {fmt(threshold)}), '
            "so there is no scale, rotation or translation to plot; the residuals above say how far each layer is from 3T.</p>"
        )
    if model.get("stats") and model.get("filters_included"):
        out += "<h3>All layers pooled</h3>" + _summary_table(model["stats"])
        out += grid([figure(_direction_chart(model.get("direction_histogram"), "Net displacement direction, all layers"))])
    for layer in layers:
        name = str(layer.get("name") or "(root)")
        out += f"<h3>Layer {escape(name)} <span class=\"pill\">{escape(str(layer.get('kind', '')))}</span></h3>"
        out += kv([("kernel", "×".join(str(k) for k in layer.get("kernel_shape", []))), ("stride (model px per layer px)", layer.get("stride_px_model")), ("filters in the statistics", layer.get("filters_included"))])
        for verdict in _tconv_layer_verdict(layer, threshold):
            out += f'<p class="verdict-line">{escape(verdict)}</p>'
        figures = []
        for path in layer.get("artifacts", []):
            if assets.is_image(path):
                kind = PurePosixPath(path).stem.rsplit("_", 1)[-1]
                caption = {"histograms": "Distributions of 1/s, rotation and translation", "joint": "Translation per step (x, y)", "trajectories": "Cumulative trajectories of the most-moving filters", "residuals": "Residual distribution of the 3T fits (plain vs gains)"}.get(kind, kind)
                figures.append(figure(assets.img(path, alt=f"{name} {caption}", cls="wide" if kind == "histograms" else "figure"), caption))
        if layer.get("filters_included"):
            figures.append(figure(_direction_chart(layer.get("direction_histogram"), f"{name}: displacement direction")))
        elif layer.get("analysed") is not False:
            figures.append('<p class="no-plot">No filter of this layer is in the statistics, so no motion figures: only the residuals are shown.</p>')
        out += grid(figures)
        if layer.get("stats") and layer.get("filters_included"):
            out += "<details class=\"more\"><summary>Distributions (table)</summary>" + _summary_table(layer["stats"]) + "</details>"
        trajectories = layer.get("trajectories") or []
        if trajectories:
            rows = [
                (
                    t.get("filter"),
                    t.get("path_length_px_layer"),
                    (t.get("displacement_px_layer") or [None, None])[0],
                    (t.get("displacement_px_layer") or [None, None])[1],
                    t.get("direction_deg"),
                    (t.get("cumulative_inv_scale") or [None])[-1],
                    (t.get("cumulative_rotation_deg") or [None])[-1],
                )
                for t in trajectories
            ]
            out += "<h4>Most-moving filters</h4>" + table(("filter", "path length px", "net dx px", "net dy px", "direction °", "cumulative 1/s", "cumulative rotation °"), rows)
    return out


_TCONV_NOTES = {
    "in statistics": "Filters the motion statistics cover: every filter of a 3TConv layer; for a fitted Conv3d, those whose plain 3T fit has a residual below the threshold.",
    "best residual (plain)": "Smallest relative residual ||W_fit − W|| / ||W|| of the layer's plain 3T fits (0 = exactly one 2D kernel scaled, rotated and shifted over time).",
    "mean residual (plain)": "Mean of those residuals.",
    "mean residual (gains)": "Mean residual when each time slice may also be scaled by its own gain.",
    "explainable (plain)": "Share of the fitted filters whose plain residual is below the threshold.",
    "explainable (gains)": "The same with per-slice gains.",
    "zero filters": "All-zero filters (dead): nothing to fit.",
}


def _tconv_layer_verdict(layer: dict[str, Any], threshold: Any) -> list[str]:
    """The one-line verdict under a layer's heading in the section (the top of the page pools the fitted layers)."""
    if layer.get("analysed") is False:
        return [f"Not analysed: {layer.get('note', layer.get('kind'))}."]
    if layer.get("kind") != "Conv3d-fit":
        return []
    plain = (layer.get("residual") or {}).get("plain") or {}
    return [f"{_explained(layer, 'plain')} of {_fits(layer)} fitted filters 3T-explainable; best residual {fmt(plain.get('min'), 2)}, threshold {fmt(threshold)}."]


def _summary_table(stats: dict[str, Any]) -> str:
    """Rows of SUMMARY blocks ({count, mean, std, min, q05, ..., max}), nested translation blocks flattened."""
    rows = []
    for name, block in stats.items():
        if not isinstance(block, dict):
            continue
        parts = [(name, block)] if "count" in block else [(f"{name}.{axis}", sub) for axis, sub in block.items() if isinstance(sub, dict)]
        for label, b in parts:
            rows.append((label, b.get("count"), b.get("mean"), b.get("std"), b.get("min"), b.get("q05"), b.get("median"), b.get("q95"), b.get("max")))
    return table(("quantity", "count", "mean", "std", "min", "q05", "median", "q95", "max"), rows)


def _direction_chart(histogram: Any, title: str) -> str:
    if not histogram or not any(v for v in histogram if v):
        return charts.empty(title, "no filter in the statistics (none below the residual threshold?)")
    labels = [f"{30 * i}°" for i in range(len(histogram))]
    return charts.bars(labels, {"share": list(histogram)}, title=title, ylabel="share of filters", lo=0.0)


PLUGIN = Plugin("tconv_stats", OPTION_DEFAULTS, tuple(_METRICS), _figures, _lines, _verdicts, _section)

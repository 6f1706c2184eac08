"""The catalogue of named metrics a gate can check, each read (or computed) from one task's summary.

    metrics.names()                                  # "kernel_viz.dead_kernels", ...
    metrics.value("kernel_viz.dead_kernels", summary)       # whole model
    metrics.value("kernel_viz.dead_kernels", summary, "conv1")  # one layer (per_layer metrics)

Names are "<task>.<metric>". `better` says which way is good ("lower", "higher"; None when neither,
so no baseline regression can be judged). A value is a float, or None when the summary does not
hold what the metric needs (the gate reports that as "could not run", never as a pass).
Summaries are plain dicts as the workers document them in their task modules' docstrings.

A paired metric (Metric.paired) compares the model with a baseline filter by filter, so what it
bounds is already relative to the baseline: `metrics.compare(name, summary, baseline_summary)`.
The direction agreements are such metrics: a model whose kernels were time-reversed keeps every
magnitude (and, on static content, its accuracy) but moves the other way, which only a comparison
filter by filter can see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from sdk.result import Result

Summary = dict[str, Any]
Extractor = Callable[[Summary, "str | None"], "float | None"]
Comparer = Callable[[Summary, Summary, "str | None"], "float | None"]


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    better: str | None
    extract: Extractor
    per_layer: bool = False
    layers: Callable[[Summary], list[str]] | None = None
    compare: Comparer | None = None

    @property
    def task(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def paired(self) -> bool:
        """True when the value needs a baseline's summary too (see compare_value)."""
        return self.compare is not None

    def value(self, summary: Summary | None, layer: str | None = None) -> float | None:
        if summary is None or self.compare is not None:
            return None
        return _number(self.extract, summary, layer)

    def compare_value(self, summary: Summary | None, baseline: Summary | None, layer: str | None = None) -> float | None:
        """A paired metric's value for `summary` against `baseline` (None when either lacks what it needs)."""
        if summary is None or baseline is None or self.compare is None:
            return None
        compare = self.compare
        return _number(lambda s, l: compare(s, baseline, l), summary, layer)

    def why_absent(self, layer: str | None = None) -> str:
        where = f" for layer {layer!r}" if layer else ""
        return f"the summary holds no {self.description.rstrip('.').lower()}{where} (was the layer analysed? did the task get the options it needs?)"


def _number(read: Extractor, summary: Summary, layer: str | None) -> float | None:
    try:
        raw = read(summary, layer)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return None
    if raw is None:
        return None
    value = float(raw)
    return value if not math.isnan(value) else None


_CATALOGUE: dict[str, Metric] = {}


def _metric(name: str, description: str, better: str | None, per_layer: bool = False, layers: Callable[[Summary], list[str]] | None = None) -> Callable[[Extractor], Extractor]:
    def register(fn: Extractor) -> Extractor:
        _CATALOGUE[name] = Metric(name, description, better, fn, per_layer, layers)
        return fn

    return register


def _paired_metric(name: str, description: str, better: str | None, layers: Callable[[Summary], list[str]]) -> Callable[[Comparer], Comparer]:
    def register(fn: Comparer) -> Comparer:
        _CATALOGUE[name] = Metric(name, description, better, lambda _s, _l: None, True, layers, fn)
        return fn

    return register


def names(task: str | None = None) -> list[str]:
    return [n for n, m in _CATALOGUE.items() if task is None or m.task == task]


def find(name: str) -> Metric | None:
    return _CATALOGUE.get(name)


def get(name: str) -> Metric:
    metric = _CATALOGUE.get(name)
    if metric is None:
        raise KeyError(f"unknown metric {name!r}. {listing()}")
    return metric


def listing() -> str:
    """The valid names, one line per task, for error messages."""
    tasks: dict[str, list[str]] = {}
    for metric in _CATALOGUE.values():
        tasks.setdefault(metric.task, []).append(metric.name + (" (per layer)" if metric.per_layer else ""))
    return "Valid metrics: " + "; ".join(", ".join(v) for v in tasks.values())


def key(name: str, layer: str | None = None) -> str:
    """How a metric value is named in reports: "task.metric" or "task.metric[layer]"."""
    return f"{name}[{layer}]" if layer else name


def value(name: str, summary: Summary | None, layer: str | None = None) -> float | None:
    return get(name).value(summary, layer)


def compare(name: str, summary: Summary | None, baseline: Summary | None, layer: str | None = None) -> float | None:
    return get(name).compare_value(summary, baseline, layer)


def extract_all(result: "Result | None", per_layer: bool = True, baseline: "Result | None" = None) -> dict[str, dict[str, float | None]]:
    """Every catalogue metric of every task that succeeded: task → key → value (per layer too, unless per_layer=False).

    Paired metrics appear only with a `baseline` (compared with the baseline's summary of the same task).
    """
    out: dict[str, dict[str, float | None]] = {}
    if result is None:
        return out
    base = {t.task: t.summary for t in baseline.tasks if t.summary is not None and not t.error} if baseline is not None else {}
    for outcome in result.tasks:
        if outcome.summary is None or outcome.error:
            continue
        values: dict[str, float | None] = {}
        for metric in _CATALOGUE.values():
            if metric.task != outcome.task or (metric.paired and baseline is None):
                continue

            def read(layer: str | None, metric: Metric = metric) -> float | None:
                if metric.paired:
                    return metric.compare_value(outcome.summary, base.get(outcome.task), layer)
                return metric.value(outcome.summary, layer)

            values[metric.name] = read(None)
            if per_layer and metric.per_layer and metric.layers:
                try:
                    layer_names = metric.layers(outcome.summary)
                except (KeyError, TypeError):
                    layer_names = []
                for layer in layer_names:
                    values[key(metric.name, layer)] = read(layer)
        out[outcome.task] = values
    return out


def catalogue() -> list[Metric]:
    return list(_CATALOGUE.values())


# ---------------------------------------------------------------------- helpers for extractors
def _decimal(value: float) -> Decimal:
    return Decimal(repr(float(value)))


def _ratio(a: float, b: float) -> float:
    """a / b on the numbers as written: 0.72 / 0.9 is 0.8, not binary's 0.7999999999999999 (which fails min = 0.8)."""
    return float(_decimal(a) / _decimal(b))


def _difference(a: float, b: float) -> float:
    """a − b on the numbers as written: 0.9 − 0.85 is 0.05, not 0.050000000000000044."""
    return float(_decimal(a) - _decimal(b))


def _mean(values: Iterable[float | None]) -> float | None:
    data = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(data) / len(data) if data else None


def _layer_list(summary: Summary) -> list[dict[str, Any]]:
    layers = summary.get("layers")
    if isinstance(layers, dict):
        return [dict(v, name=k) if isinstance(v, dict) else {"name": k} for k, v in layers.items()]
    return list(layers or [])


def _layer_names(summary: Summary) -> list[str]:
    return [str(layer.get("name") or layer.get("layer")) for layer in _layer_list(summary)]


def _pick_layers(summary: Summary, layer: str | None) -> list[dict[str, Any]]:
    layers = _layer_list(summary)
    if layer is None:
        return layers
    chosen = [entry for entry in layers if (entry.get("name") or entry.get("layer")) == layer]
    if not chosen:
        raise KeyError(layer)
    return chosen


# ---------------------------------------------------------------------- class_filters
# Summary: {"layer", "num_filters", "num_classes", "class_names", "k", "classes": [{"class", "name",
# "subset_k", "coverage_size", "retention_size", "recall_full", "recall_restricted", "ablation":
# {"subset_drop", "random_drop", "complement_drop"}, "stability_jaccard", "mi_top_k_jaccard"}],
# "global": {"mis_binned_bits", "mis_binned_bits_shuffled", "mis_knn_nats", "mis_knn_nats_shuffled",
# "mis", "mis_shuffled" (the mi_estimator's MIS in bits, kept for gates), "psi_0_5", "density", "mean_overlap",
# "accuracy_full", "accuracy_restricted", "compute_saving", "selectivity": {"mean", "median"}}}.


def _global(field: str) -> Extractor:
    return lambda s, _layer: s["global"][field]


def _classes(s: Summary) -> list[dict[str, Any]]:
    return list(s["classes"])


_metric("class_filters.accuracy_full", "Eval accuracy of the full model.", "higher")(_global("accuracy_full"))
_metric("class_filters.accuracy_restricted", "Eval accuracy when each class logit uses only its fixed-k filter subset.", "higher")(_global("accuracy_restricted"))


@_metric("class_filters.accuracy_retained", "Restricted accuracy as a share of full accuracy.", "higher")
def _accuracy_retained(s: Summary, _layer: str | None) -> float | None:
    full, restricted = s["global"]["accuracy_full"], s["global"]["accuracy_restricted"]
    return None if full in (None, 0) or restricted is None else _ratio(restricted, full)


_metric("class_filters.mis", "Mean information selectivity (bits, the task's mi_estimator: binned by default): mean over filters of the max over classes of MI.", "higher")(_global("mis"))
_metric("class_filters.mis_binned_bits", "MIS with the binned MI estimator, in bits.", "higher")(_global("mis_binned_bits"))
_metric("class_filters.mis_knn_nats", "MIS with Ross's kNN MI estimator in nats, the figure Liang et al. (CSG) report.", "higher")(_global("mis_knn_nats"))
_metric("class_filters.mis_shuffled", "MIS of the same activations with shuffled labels (the chance level).", None)(_global("mis_shuffled"))


@_metric("class_filters.mis_margin", "MIS minus its shuffled-label baseline (bits).", "higher")
def _mis_margin(s: Summary, _layer: str | None) -> float | None:
    mis, base = s["global"]["mis"], s["global"]["mis_shuffled"]
    return None if mis is None or base is None else _difference(mis, base)


_metric("class_filters.psi", "Badola's Psi(0.5): mean share of filters needed for half of a sample's activation L1 norm.", None)(_global("psi_0_5"))
_metric("class_filters.density", "Share of the layer's filters used by the union of the fixed-k subsets.", "lower")(_global("density"))
_metric("class_filters.mean_overlap", "Mean Jaccard overlap between the classes' fixed-k subsets.", "lower")(_global("mean_overlap"))
_metric("class_filters.compute_saving", "Share of the head's multiply-adds saved by the decomposed head.", "higher")(_global("compute_saving"))
_metric("class_filters.selectivity_mean", "Mean class selectivity index over filters.", None)(lambda s, _l: s["global"]["selectivity"]["mean"])


@_metric("class_filters.min_recall_restricted", "Lowest per-class recall of the restricted model.", "higher")
def _min_recall_restricted(s: Summary, _layer: str | None) -> float | None:
    values = [c["recall_restricted"] for c in _classes(s) if c.get("recall_restricted") is not None]
    return min(values) if values else None


@_metric("class_filters.max_recall_loss", "Largest per-class recall lost by restricting to the fixed-k subset.", "lower")
def _max_recall_loss(s: Summary, _layer: str | None) -> float | None:
    losses = [_difference(c["recall_full"], c["recall_restricted"]) for c in _classes(s) if c.get("recall_full") is not None and c.get("recall_restricted") is not None]
    return max(losses) if losses else None


@_metric("class_filters.max_retention_size", "Largest per-class subset that keeps the required share of accuracy.", "lower")
def _max_retention_size(s: Summary, _layer: str | None) -> float | None:
    sizes = [c["retention_size"] for c in _classes(s) if c.get("retention_size") is not None]
    return max(sizes) if sizes else None


@_metric("class_filters.mean_coverage_size", "Mean per-class subset size covering the required contribution mass.", "lower")
def _mean_coverage_size(s: Summary, _layer: str | None) -> float | None:
    return _mean(c.get("coverage_size") for c in _classes(s))


@_metric("class_filters.mean_subset_drop", "Mean class recall lost when the class's own subset is ablated.", None)
def _mean_subset_drop(s: Summary, _layer: str | None) -> float | None:
    return _mean((c.get("ablation") or {}).get("subset_drop") for c in _classes(s))


@_metric("class_filters.mean_stability", "Mean bootstrap Jaccard stability of the fixed-k subsets.", "higher")
def _mean_stability(s: Summary, _layer: str | None) -> float | None:
    return _mean(c.get("stability_jaccard") for c in _classes(s))


# ---------------------------------------------------------------------- tconv_stats
# Summary: {"layers": [{"name", "kind": "TConv3d" | "Conv3d-fit", "filters", "filters_included", "stats",
# "departure_from_identity", "near_identity_share", "dominant_direction_deg", "dominant_direction_share",
# "direction_histogram", "trajectories", (fits:) "residual": {"plain", "gain": SUMMARY},
# "explainable_share": {"plain", "gain"}, "zero_filters", "gain_variant"}], "model": {...pooled...},
# "options", "units", "notes"}; SUMMARY = {count, mean, std, min, q05, ..., max}.


def _fitted(s: Summary, layer: str | None) -> list[dict[str, Any]]:
    return [entry for entry in _pick_layers(s, layer) if entry.get("kind") == "Conv3d-fit"]


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
        return read(s["model"] if layer is None else _pick_layers(s, layer)[0])

    return extract


def _translation_mean(block: dict[str, Any]) -> float | None:
    stats = block["stats"]
    chosen = stats.get("translation_px_model") or stats["translation_px_layer"]
    return chosen["magnitude"]["mean"]


_TCONV = dict(per_layer=True, layers=_layer_names)
_metric("tconv_stats.mean_residual", "Mean relative residual of the plain 3T fit over fitted Conv3d filters (0 = fully 3T-explainable).", "lower", **_TCONV)(_pooled_residual("plain"))
_metric("tconv_stats.mean_residual_gain", "Mean relative residual of the 3T fit with per-slice gains.", "lower", **_TCONV)(_pooled_residual("gain"))
_metric("tconv_stats.explainable_share", "Share of fitted filters whose plain 3T residual is below the threshold.", "higher", **_TCONV)(_pooled_share("plain"))
_metric("tconv_stats.explainable_share_gain", "Share of fitted filters the gain variant explains below the threshold.", "higher", **_TCONV)(_pooled_share("gain"))


@_metric("tconv_stats.zero_filters", "Fitted Conv3d filters that are all zero (dead: nothing to fit).", "lower", **_TCONV)
def _zero_filters(s: Summary, layer: str | None) -> float | None:
    fitted = _fitted(s, layer)
    return sum(int(entry.get("zero_filters") or 0) for entry in fitted) if fitted else None


_metric("tconv_stats.filters_included", "Filters the statistics cover (every 3TConv filter; fits below the residual threshold).", None, **_TCONV)(_tconv_field(lambda b: b["filters_included"]))
_metric("tconv_stats.near_identity_share", "Share of included filters whose transforms stay near identity.", None, **_TCONV)(_tconv_field(lambda b: b["near_identity_share"]))
_metric("tconv_stats.mean_abs_rotation_deg", "Mean |rotation| per time step, degrees.", None, **_TCONV)(_tconv_field(lambda b: b["departure_from_identity"]["abs_rotation_deg"]["mean"]))
_metric("tconv_stats.mean_abs_scale_change", "Mean |1 - 1/s| per time step.", None, **_TCONV)(_tconv_field(lambda b: b["departure_from_identity"]["abs_one_minus_inv_scale"]["mean"]))
_metric("tconv_stats.mean_translation_px", "Mean per-step translation magnitude, in model-input pixels (layer-input pixels where the stride is unknown).", None, **_TCONV)(_tconv_field(_translation_mean))
_metric("tconv_stats.dominant_direction_share", "Share of filters moving within the dominant direction's sector.", None, **_TCONV)(_tconv_field(lambda b: b["dominant_direction_share"]))




def _agreement(pairs: Iterable[tuple[tuple[float, float], tuple[float, float]]]) -> float | None:
    """Σ a·b / Σ |a||b| over paired motion vectors: 1 = all move as in the baseline, −1 = all the opposite way.

    Weighting by both magnitudes lets the filters that move decide; a static filter's direction is noise.
    """
    dot = norms = 0.0
    for (ax, ay), (bx, by) in pairs:
        dot += ax * bx + ay * by
        norms += math.hypot(ax, ay) * math.hypot(bx, by)
    return dot / norms if norms > 0 else None


Motions = Callable[[dict[str, Any]], dict[int, tuple[float, float]]]


def _layer_agreement(s: Summary, base: Summary, layer: str | None, mine: Motions, theirs: Motions) -> float | None:
    """_agreement over the filters of every chosen layer that the baseline has too (matched by layer name and index)."""
    base_layers = {str(b.get("name")): b for b in _layer_list(base)}
    pairs = []
    for entry in _pick_layers(s, layer):
        other = base_layers.get(str(entry.get("name")))
        if other is None:
            continue
        a, b = mine(entry), theirs(other)
        pairs += [(a[i], b[i]) for i in a.keys() & b.keys()]
    return _agreement(pairs)


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


@_paired_metric(
    "tconv_stats.direction_agreement",
    "Agreement of each filter's net 3T displacement with the same filter's in the baseline: Σ a·b / Σ |a||b| over the filters "
    "3T-explainable in both (1 = same motion, −1 = every filter moves the opposite way, as time-reversed kernels do).",
    "higher",
    _layer_names,
)
def _tconv_direction_agreement(s: Summary, base: Summary, layer: str | None) -> float | None:
    threshold = float((s.get("options") or {}).get("residual_threshold", 0.2))
    base_threshold = float((base.get("options") or {}).get("residual_threshold", 0.2))
    return _layer_agreement(s, base, layer, lambda e: _tconv_motion(e, threshold), lambda e: _tconv_motion(e, base_threshold))


# ---------------------------------------------------------------------- kernel_viz
# Summary: {"objective", "steps", "seed", "tv_weight", "device", "layers": [{"name", "kind", "canvas",
# "receptive_field", "jitter", "placed_in_full_input", "flow_scale_px_per_frame", "channels": [{"index",
# "activation", "random_activation", "ratio", "direction_deg", "speed_px_per_frame",
# "direction_selectivity", "motion_dependence", "order_dependence", "flow_coherence",
# "reconstruction_error", ..., "dead"}], "timing"}]}. The dead-kernel count is not in the summary:
# it is counted here from the per-channel flags.


def _channels(s: Summary, layer: str | None) -> list[dict[str, Any]]:
    return [c for entry in _pick_layers(s, layer) for c in entry.get("channels", [])]


def _median(values: Iterable[float | None]) -> float | None:
    data = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not data:
        return None
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2


def _over_live(field: str, reduce: Callable[[Iterable[float | None]], float | None]) -> Extractor:
    """`reduce` of one per-channel field over the channels that are not dead."""
    return lambda s, layer: reduce(c.get(field) for c in _channels(s, layer) if not c.get("dead"))


_KV = dict(per_layer=True, layers=_layer_names)


@_metric("kernel_viz.dead_kernels", "Channels the optimisation could not drive above a random input (dead kernels).", "lower", **_KV)
def _dead_kernels(s: Summary, layer: str | None) -> float | None:
    channels = _channels(s, layer)
    return sum(bool(c.get("dead")) for c in channels) if channels else None


@_metric("kernel_viz.dead_share", "Share of the analysed channels that are dead.", "lower", **_KV)
def _dead_share(s: Summary, layer: str | None) -> float | None:
    channels = _channels(s, layer)
    return sum(bool(c.get("dead")) for c in channels) / len(channels) if channels else None


@_metric("kernel_viz.channels", "Channels analysed.", None, **_KV)
def _channel_count(s: Summary, layer: str | None) -> float | None:
    return len(_channels(s, layer))


_metric("kernel_viz.median_activation_ratio", "Median over live channels of activation reached / |activation of a same-norm random input|.", "higher", **_KV)(_over_live("ratio", _median))
_metric("kernel_viz.mean_motion_dependence", "Mean over live channels of 1 - act(static texture) / act(optimal video).", None, **_KV)(_over_live("motion_dependence", _mean))
_metric("kernel_viz.mean_direction_selectivity", "Mean over live channels of the direction-selectivity index (video vs reversed).", None, **_KV)(_over_live("direction_selectivity", _mean))
_metric("kernel_viz.mean_speed_px_per_frame", "Mean over live channels with significant motion of the dominant speed, model-input pixels per frame.", None, **_KV)(_over_live("speed_px_per_frame", _mean))
_metric("kernel_viz.mean_reconstruction_error", "Mean over live channels of the texture-warp reconstruction error (0 = the motion model explains the video).", "lower", **_KV)(_over_live("reconstruction_error", _mean))


@_metric("kernel_viz.moving_share", "Share of live channels whose motion is significant (direction and speed reported; noise and static patterns are not).", None, **_KV)
def _moving_share(s: Summary, layer: str | None) -> float | None:
    live = [c for c in _channels(s, layer) if not c.get("dead")]
    return sum(c.get("direction_deg") is not None for c in live) / len(live) if live else None


@_paired_metric(
    "kernel_viz.direction_agreement",
    "Agreement of each live channel's motion (speed × direction of its optimal video) with the same channel's in the baseline: "
    "Σ a·b / Σ |a||b| over channels moving in both (1 = same motion, −1 = every channel prefers the opposite direction).",
    "higher",
    _layer_names,
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

    return _layer_agreement(s, base, layer, motion, motion)

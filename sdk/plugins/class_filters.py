"""class_filters in the SDK: its options' defaults, gate metrics, findings, verdicts and report section.

The analysis (Badola et al. 2022; Liang et al. 2020; Zhang et al. 2018; ANALYSES.md) finds, per class, the small
subset of a layer's filters that carries its decision, and how much accuracy a head restricted to those keeps.
Summary: {"layer", "num_filters", "num_classes", "class_names", "k", "classes": [{"class", "name",
"subset_k", "coverage_size", "retention_size", "recall_full", "recall_restricted", "ablation":
{"subset_drop", "random_drop", "complement_drop"}, "stability_jaccard", "mi_top_k_jaccard"}],
"global": {"mis_binned_bits", "mis_binned_bits_shuffled", "mis_knn_nats", "mis_knn_nats_shuffled",
"mis", "mis_shuffled" (the mi_estimator's MIS in bits, kept for gates), "psi_0_5", "density", "mean_overlap",
"accuracy_full", "accuracy_restricted", "compute_saving", "selectivity": {"mean", "median"}}}.
"""

from __future__ import annotations

from typing import Any

from sdk import metrics
from sdk.report import charts
from sdk.metrics import Extractor, Metric
from sdk.plugins.base import Figures, Plugin, Summary, Verdict
from sdk.plugins.summaries import difference, mean, percent, ratio
from sdk.report.assets import Assets
from sdk.report.html import Html, figure, fmt, grid, kv, table
from sdk.result import TaskOutcome

# What an unset option means, as `kernelscope analyze --help` shows it (the proto documents the same; a test holds them equal).
OPTION_DEFAULTS: dict[str, str] = {
    "layer": "the input of the last Linear layer", "k": "5", "mass_coverage": "0.9", "accuracy_retention": "0.99",
    "ranking": "contribution (or frequency)", "mi_estimator": "binned (or knn)", "bootstrap": "20", "seed": "0",
    "fit_fraction": "0.7",
}

# ---------------------------------------------------------------------- gate metrics
_METRICS: list[Metric] = []  # appended to by the metrics.metric decorators below


def _global(field: str) -> Extractor:
    return lambda s, _layer: s["global"][field]


def _classes(s: Summary) -> list[dict[str, Any]]:
    return list(s["classes"])


metrics.metric(_METRICS, "class_filters.accuracy_full", "Eval accuracy of the full model.", "higher")(_global("accuracy_full"))
metrics.metric(_METRICS, "class_filters.accuracy_restricted", "Eval accuracy when each class logit uses only its fixed-k filter subset.", "higher")(_global("accuracy_restricted"))


@metrics.metric(_METRICS, "class_filters.accuracy_retained", "Restricted accuracy as a share of full accuracy.", "higher")
def _accuracy_retained(s: Summary, _layer: str | None) -> float | None:
    full, restricted = s["global"]["accuracy_full"], s["global"]["accuracy_restricted"]
    return None if full in (None, 0) or restricted is None else ratio(restricted, full)


metrics.metric(_METRICS, "class_filters.mis", "Mean information selectivity (bits, the task's mi_estimator: binned by default): mean over filters of the max over classes of MI.", "higher")(_global("mis"))
metrics.metric(_METRICS, "class_filters.mis_binned_bits", "MIS with the binned MI estimator, in bits.", "higher")(_global("mis_binned_bits"))
metrics.metric(_METRICS, "class_filters.mis_knn_nats", "MIS with Ross's kNN MI estimator in nats, the figure Liang et al. (CSG) report.", "higher")(_global("mis_knn_nats"))
metrics.metric(_METRICS, "class_filters.mis_shuffled", "MIS of the same activations with shuffled labels (the chance level).", None)(_global("mis_shuffled"))


@metrics.metric(_METRICS, "class_filters.mis_margin", "MIS minus its shuffled-label baseline (bits).", "higher")
def _mis_margin(s: Summary, _layer: str | None) -> float | None:
    mis, base = s["global"]["mis"], s["global"]["mis_shuffled"]
    return None if mis is None or base is None else difference(mis, base)


metrics.metric(_METRICS, "class_filters.psi", "Badola's Psi(0.5): mean share of filters needed for half of a sample's activation L1 norm.", None)(_global("psi_0_5"))
metrics.metric(_METRICS, "class_filters.density", "Share of the layer's filters used by the union of the fixed-k subsets.", "lower")(_global("density"))
metrics.metric(_METRICS, "class_filters.mean_overlap", "Mean Jaccard overlap between the classes' fixed-k subsets.", "lower")(_global("mean_overlap"))
metrics.metric(_METRICS, "class_filters.compute_saving", "Share of the head's multiply-adds saved by the decomposed head.", "higher")(_global("compute_saving"))
metrics.metric(_METRICS, "class_filters.selectivity_mean", "Mean class selectivity index over filters.", None)(lambda s, _l: s["global"]["selectivity"]["mean"])


@metrics.metric(_METRICS, "class_filters.min_recall_restricted", "Lowest per-class recall of the restricted model.", "higher")
def _min_recall_restricted(s: Summary, _layer: str | None) -> float | None:
    values = [c["recall_restricted"] for c in _classes(s) if c.get("recall_restricted") is not None]
    return min(values) if values else None


@metrics.metric(_METRICS, "class_filters.max_recall_loss", "Largest per-class recall lost by restricting to the fixed-k subset.", "lower")
def _max_recall_loss(s: Summary, _layer: str | None) -> float | None:
    losses = [difference(c["recall_full"], c["recall_restricted"]) for c in _classes(s) if c.get("recall_full") is not None and c.get("recall_restricted") is not None]
    return max(losses) if losses else None


@metrics.metric(_METRICS, "class_filters.max_retention_size", "Largest per-class subset that keeps the required share of accuracy.", "lower")
def _max_retention_size(s: Summary, _layer: str | None) -> float | None:
    sizes = [c["retention_size"] for c in _classes(s) if c.get("retention_size") is not None]
    return max(sizes) if sizes else None


@metrics.metric(_METRICS, "class_filters.mean_coverage_size", "Mean per-class subset size covering the required contribution mass.", "lower")
def _mean_coverage_size(s: Summary, _layer: str | None) -> float | None:
    return mean(c.get("coverage_size") for c in _classes(s))


@metrics.metric(_METRICS, "class_filters.mean_subset_drop", "Mean class recall lost when the class's own subset is ablated.", None)
def _mean_subset_drop(s: Summary, _layer: str | None) -> float | None:
    return mean((c.get("ablation") or {}).get("subset_drop") for c in _classes(s))


@metrics.metric(_METRICS, "class_filters.mean_stability", "Mean bootstrap Jaccard stability of the fixed-k subsets.", "higher")
def _mean_stability(s: Summary, _layer: str | None) -> float | None:
    return mean(c.get("stability_jaccard") for c in _classes(s))


# ---------------------------------------------------------------------- findings


def _figures(summary: Summary) -> Figures:
    """The layer, the accuracy kept by the restricted head, the MIS, and each class's subset, for findings.lines and --json."""
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


def _lines(figures: Figures) -> list[str]:
    out = []
    full, restricted, kept = figures["accuracy_full"], figures["accuracy_restricted"], figures["accuracy_retained"]
    head = f"layer {figures['layer']} ({figures['num_filters']} filters): each class's own {figures['k']} filters"
    if full is not None and restricted is not None:
        head += f" keep accuracy {full:.3f} -> {restricted:.3f}"
        if kept is not None:
            head += f" ({percent(kept)} retained)"
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


# ---------------------------------------------------------------------- verdicts


def _verdicts(s: Summary) -> list[Verdict]:
    """One verdict: accuracy kept by the k-subsets, their density, the MIS; bad when the full model is near chance."""
    g = s.get("global", {})
    full, restricted = g.get("accuracy_full"), g.get("accuracy_restricted")
    classes = s.get("num_classes") or len(s.get("classes", []))
    text = f"restricted to each class's k = {s.get('k')} best filters of {s.get('layer')}, accuracy {fmt(restricted, 3)} vs {fmt(full, 3)} for the full model"
    if full:
        text += f" ({fmt(100 * (restricted or 0.0) / full, 3)} % retained)"
    if g.get("density") is not None:
        text += f"; the subsets use {fmt(100 * g['density'], 2)} % of its {s.get('num_filters')} filters"
    if g.get("mis") is not None:
        text += f"; MIS {fmt(g['mis'], 2)} bits vs {fmt(g.get('mis_shuffled'), 2)} with shuffled labels"
    level = "ok"
    if full is not None and classes and full <= 1.0 / classes + 0.05:
        level = "bad"
        text += f". The full model is near chance ({fmt(1 / classes, 2)}) on this dataset: is the input normalised as in training?"
    return [Verdict("class_filters", level, text)]


# ---------------------------------------------------------------------- report section


def _section(outcome: "TaskOutcome", assets: Assets) -> str:
    """The layer's figures, the contribution heat map and accuracy charts, then the per-class table."""
    s = outcome.summary or {}
    g = s.get("global", {})
    classes = s.get("classes", [])
    names = [str(c.get("name", c.get("class"))) for c in classes]
    out = kv(
        [
            ("layer", s.get("layer")),
            ("filters", s.get("num_filters")),
            ("classes", s.get("num_classes")),
            ("ranking", s.get("ranking")),
            ("attribution", s.get("attribution")),
            ("restricted model", s.get("restriction")),
            ("MI estimator", s.get("mi_estimator")),
            ("fixed k", s.get("k")),
            ("fit / eval samples", f"{s.get('fit_samples')} / {s.get('eval_samples')}"),
            ("accuracy: full", g.get("accuracy_full")),
            ("accuracy: restricted to the k-subsets", g.get("accuracy_restricted")),
            ("MIS, binned estimator (bits)", g.get("mis_binned_bits", g.get("mis"))),
            ("MIS, binned, shuffled labels (bits)", g.get("mis_binned_bits_shuffled", g.get("mis_shuffled"))),
            ("MIS, kNN estimator as in Liang et al. (nats)", g.get("mis_knn_nats") if g.get("mis_knn_nats") is not None else g.get("mis_knn_skipped")),
            ("MIS, kNN, shuffled labels (nats)", g.get("mis_knn_nats_shuffled")),
            ("Ψ(0.5)", g.get("psi_0_5")),
            ("density", g.get("density")),
            ("mean overlap between classes' subsets (Jaccard: 0 = disjoint, 1 = the same filters)", g.get("mean_overlap")),
            ("compute saving of the decomposed head", g.get("compute_saving")),
            ("class selectivity: mean / median", f"{fmt((g.get('selectivity') or {}).get('mean'))} / {fmt((g.get('selectivity') or {}).get('median'))}"),
        ]
    )
    heat = [n for n in assets.names(outcome.task, r".*heat.*") if assets.is_image(n)]
    figures = [figure(assets.img(n, alt=n, cls="wide"), "Class × filter contribution; dots mark each class's fixed-k subset.") for n in heat]
    figures.append(
        figure(
            charts.bars(
                ["accuracy"] + names,
                {"full": [g.get("accuracy_full")] + [c.get("recall_full") for c in classes], "restricted": [g.get("accuracy_restricted")] + [c.get("recall_restricted") for c in classes]},
                title="Restricted vs full: accuracy, then recall per class",
                ylabel="share correct",
                lo=0.0,
                hi=1.0,
            ),
            "Restricted: each class logit uses only its fixed-k subset.",
        )
    )
    figures.append(
        figure(
            charts.bars(["MIS"], {"measured": [g.get("mis")], "shuffled labels": [g.get("mis_shuffled")]}, title="MIS vs its shuffled-label baseline", ylabel="bits", width=260),
            "MI selectivity well above the shuffled baseline means filters carry class information.",
        )
    )
    sizes = [n for n in assets.names(outcome.task, r".*size.*") if assets.is_image(n)]
    if sizes:
        figures += [figure(assets.img(n, alt=n, cls="figure"), "Subset sizes per class") for n in sizes]
    else:
        sizes_by_kind = {"fixed k": [s.get("k")] * len(classes), "mass coverage": [c.get("coverage_size") for c in classes], "accuracy retention": [c.get("retention_size") for c in classes]}
        figures.append(figure(charts.bars(names, sizes_by_kind, title="Subset sizes per class", ylabel="filters")))
    out += grid(figures)
    rows = []
    for c in classes:
        ablation = c.get("ablation") or {}
        rows.append(
            (
                c.get("class"),
                c.get("name"),
                Html(" ".join(f'<span class="pill">{int(i)}</span>' for i in c.get("subset_k", []))),
                c.get("coverage_size"),
                c.get("retention_size"),
                c.get("recall_full"),
                c.get("recall_restricted"),
                ablation.get("subset_drop"),
                ablation.get("random_drop"),
                ablation.get("complement_drop"),
                c.get("stability_jaccard"),
                c.get("mi_top_k_jaccard"),
            )
        )
    out += "<h3>Per class</h3>" + table(
        ("class", "name", "fixed-k subset", "coverage size", "retention size", "recall full", "recall restricted", "drop: subset ablated", "drop: random subset", "drop: complement ablated", "bootstrap Jaccard", "MI top-k Jaccard"),
        rows,
        notes=_CLASS_NOTES,
    )
    return out


_CLASS_NOTES = {
    "fixed-k subset": "The class's k best filters by contribution to its logit (positive contributions only, so possibly fewer), best first.",
    "coverage size": "Fewest top-ranked filters that carry the required share of the class's positive contribution.",
    "retention size": "Fewest top-ranked filters whose restricted logit keeps the required share of the class's F1; — where the full model has no skill on the class.",
    "recall full": "Share of the class's eval clips the full model classifies correctly.",
    "recall restricted": "The same when every class's logit uses only its fixed-k subset.",
    "drop: subset ablated": "Recall of the class lost when its own fixed-k subset is removed from the layer (set to zero). Large: the class depends on those filters; 0: it does not need them (others carry it).",
    "drop: random subset": "Recall lost when as many random other filters are removed (mean of 5 draws): the chance level for the previous column.",
    "drop: complement ablated": "Recall lost when every filter except the subset is removed. Small: the subset alone suffices.",
    "bootstrap Jaccard": "Stability of the subset: mean Jaccard overlap |A ∩ B| / |A ∪ B| between the subset and the subsets found on bootstrap resamples (1 = always the same filters, 0 = never any in common).",
    "MI top-k Jaccard": "Jaccard overlap between the subset and the k filters with the highest mutual information with the class (1 = both rankings pick the same filters).",
}


PLUGIN = Plugin("class_filters", OPTION_DEFAULTS, tuple(_METRICS), _figures, _lines, _verdicts, _section)

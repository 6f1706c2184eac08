"""Everything after the forward pass: rankings, information, selectivity, subsets, restriction, stability.

`analyse` turns the per-sample vectors of one hooked pass (activations.collect) into the task's
summary and its C × D matrices. Rankings, MI and selectivity are fitted on the fit split; accuracy,
recall and ablations are measured on the eval split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from workers.class_filters import information, ranking, selectivity, stability, subsets
from workers.class_filters.activations import LayerActivations
from workers.class_filters.options import Options
from workers.class_filters.restriction import Restriction, ablation_drops, recall
from workers.class_filters.split import Split
from workers.errors import BadOptions
from workers.tasks import plain

StageFn = Callable[[str, float], None]


@dataclass
class ClassFilters:
    """summary: the task's JSON summary (plain Python types). matrices: C × D arrays for the NPZ.
    subsets: (C, k) S_c per class; sizes: {"k", "coverage", "retention"} -> (C,) ints."""

    summary: dict[str, Any]
    matrices: dict[str, np.ndarray]
    subsets: np.ndarray
    sizes: dict[str, np.ndarray]


def analyse(
    acts: LayerActivations,
    y: np.ndarray,
    split: Split,
    options: Options,
    restriction: Restriction,
    class_names: list[str] | None = None,
    on_stage: StageFn | None = None,
) -> ClassFilters:
    """The whole analysis beyond the forward pass (see the module doc). on_stage(stage, fraction in [0, 1])."""
    report = on_stage or (lambda _stage, _fraction: None)
    num_classes, width = acts.num_classes, acts.num_filters
    if options.k > width:
        raise BadOptions(f"k = {options.k} but layer {acts.layer} has only {width} filters", reason="K_EXCEEDS_FILTERS")
    names = class_names if class_names and len(class_names) == num_classes else [str(c) for c in range(num_classes)]
    fit_x, fit_y = acts.features[split.fit], y[split.fit]

    report("ranking", 0.0)
    contribution = ranking.class_means(acts.contributions[split.fit], fit_y, num_classes)
    frequency = ranking.frequency(fit_x, fit_y, num_classes)
    scores = ranking.sample_scores(options.ranking, fit_x, acts.contributions[split.fit], fit_y, num_classes)
    order = ranking.order(ranking.class_means(scores, fit_y, num_classes))
    chosen = order[:, : options.k]

    report("information", 0.1)
    mi = information.mutual_information(fit_x, fit_y, num_classes, options.mi_estimator, options.seed)
    mis_shuffled = information.shuffled_mis(fit_x, fit_y, num_classes, options.mi_estimator, options.seed)
    select = selectivity.class_selectivity(fit_x, fit_y, num_classes)
    csi = selectivity.selectivity_index(select)
    mi_top = ranking.top_k(mi, options.k)

    report("restriction", 0.3)
    eval_y = y[split.eval]
    full_logits = acts.logits[split.eval]
    restricted_logits = restriction.restricted_logits(subsets.keep_masks(chosen, width))
    coverage = subsets.coverage_sizes(contribution, order, options.mass_coverage)
    report("retention", 0.45)
    retention = subsets.retention_sizes(restriction, order, full_logits, eval_y, options.accuracy_retention)
    report("ablation", 0.7)
    drops = ablation_drops(restriction, chosen, full_logits, eval_y, width, seed=options.seed)

    report("stability", 0.85)
    jaccards = stability.bootstrap_jaccard(scores, fit_y, chosen, options.bootstrap, seed=options.seed)

    classes = [
        {
            "class": c,
            "name": names[c],
            "subset_k": [int(i) for i in chosen[c]],
            "coverage_size": int(coverage[c]),
            "retention_size": int(retention[c]),
            "recall_full": recall(full_logits, eval_y, c),
            "recall_restricted": recall(restricted_logits, eval_y, c),
            "ablation": {key: plain(value) for key, value in drops[c].items()},
            "stability_jaccard": plain(jaccards[c]),
            "mi_top_k_jaccard": subsets.jaccard(mi_top[c], chosen[c]),
        }
        for c in range(num_classes)
    ]
    summary: dict[str, Any] = {
        "layer": acts.layer,
        "num_filters": width,
        "num_classes": num_classes,
        "class_names": names,
        "ranking": options.ranking,
        "attribution": acts.attribution,
        "restriction": "decomposed_head" if acts.exact else "mean_ablation",
        "mi_estimator": options.mi_estimator,
        "k": options.k,
        "fit_samples": int(len(split.fit)),
        "eval_samples": int(len(split.eval)),
        "classes": classes,
        "global": {
            "mis": information.mis(mi),
            "mis_shuffled": mis_shuffled,
            "psi_0_5": selectivity.psi(fit_x),
            "density": subsets.density(chosen, width),
            "mean_overlap": subsets.mean_overlap(chosen),
            "accuracy_full": _accuracy(full_logits, eval_y),
            "accuracy_restricted": _accuracy(restricted_logits, eval_y),
            "compute_saving": subsets.compute_saving(chosen, width),
            "selectivity": {"mean": float(np.mean(csi)), "median": float(np.median(csi))},
        },
    }
    report("done", 1.0)
    return ClassFilters(
        summary=plain(summary),
        matrices={"contribution": contribution, "mutual_information": mi, "selectivity": select, "frequency": frequency},
        subsets=chosen,
        sizes={"k": np.full(num_classes, options.k), "coverage": coverage, "retention": retention},
    )


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean()) if len(y) else 0.0

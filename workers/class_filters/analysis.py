"""Everything after the forward pass: rankings, information, selectivity, subsets, restriction, stability.

`analyse` turns the per-sample vectors of one hooked pass (activations.collect) into the task's
summary and its class × filter matrices. Rankings, MI and selectivity are fitted on the fit split;
accuracy, recall and ablations are measured on the eval split.

The classes analysed are the labels the dataset holds (any subset of the head's outputs); the matrices
have one row per such class. The head's other outputs are not analysed but still compete: every
prediction, full or restricted, is the argmax over all of the head's logits, and the restricted model
keeps their full logits (see restriction.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from workers.analysis import plain
from workers.class_filters import information, ranking, selectivity, stability, subsets
from workers.class_filters.activations import LayerActivations
from workers.class_filters.options import Options
from workers.class_filters.restriction import Restriction, ablation_drops, recall
from workers.class_filters.split import Split, present_classes
from workers.errors import BadOptions

StageFn = Callable[[str, float], None]

# The kNN estimator runs by default when fit samples × filters is at most this; beyond it only when the
# mi_estimator option asks for "knn" (it costs about 1 µs per value and class set, twice with the baseline).
KNN_AUTO_VALUES = 2**20


@dataclass
class ClassFilters:
    """summary: the task's JSON summary (plain Python types). matrices: P × D arrays for the NPZ (P = classes
    in the dataset). subsets: (P, k) S_c per class, -1 padded; sizes: {"k", "coverage", "retention"} -> (P,)
    ints (-1: no retention size). classes: (P,) the head outputs they are."""

    summary: dict[str, Any]
    matrices: dict[str, np.ndarray]
    subsets: np.ndarray
    sizes: dict[str, np.ndarray]
    classes: np.ndarray


def analyse(
    acts: LayerActivations,
    y: np.ndarray,
    split: Split,
    options: Options,
    restriction: Restriction,
    class_names: list[str] | None = None,
    on_stage: StageFn | None = None,
) -> ClassFilters:
    """The whole analysis beyond the forward pass (see the module doc). y holds output indices of the head.
    on_stage(stage, fraction in [0, 1])."""
    report = on_stage or (lambda _stage, _fraction: None)
    width, outputs = acts.num_filters, acts.num_classes
    if options.k > width:
        raise BadOptions(f"k = {options.k} but layer {acts.layer} has only {width} filters", reason="K_EXCEEDS_FILTERS")
    classes = present_classes(y)
    count = len(classes)
    compact = np.searchsorted(classes, y)
    names = class_names_for(class_names, classes)
    fit_x, fit_y = acts.features[split.fit], compact[split.fit]
    # Rows by class once, so class means and the bootstrap need no further copies.
    groups = ranking.Groups.of(fit_y, count)
    grouped_contributions = acts.contributions[split.fit[groups.order]]

    report("ranking", 0.0)
    loud = ranking.loud_sets(fit_x)
    contribution = groups.means(grouped_contributions)
    frequency = groups.means(loud[groups.order])
    if options.ranking == ranking.CONTRIBUTION:
        grouped_scores = grouped_contributions
        score_means = contribution
    else:
        grouped_scores = ranking.sample_scores(options.ranking, fit_x, acts.contributions[split.fit], fit_y, count, loud)[groups.order]
        score_means = groups.means(grouped_scores)
    order = ranking.order(score_means)
    chosen = subsets.fixed_k(score_means, order, options.k)

    report("information", 0.1)
    mi = _information(fit_x, fit_y, count, options)
    select = selectivity.class_selectivity(fit_x, fit_y, count, groups.means(fit_x[groups.order]))
    csi = selectivity.selectivity_index(select)
    mi_top = ranking.top_k(mi.matrix, options.k)

    report("restriction", 0.3)
    eval_y = y[split.eval]
    full_logits = acts.logits[split.eval]
    restricted_logits = restriction.restricted_logits(subsets.keep_masks(chosen, width))
    coverage = subsets.coverage_sizes(contribution, order, options.mass_coverage)
    report("retention", 0.45)
    skill = subsets.skill_p_values(full_logits, eval_y, classes)
    retention = subsets.retention_sizes(restriction, order, full_logits, eval_y, options.accuracy_retention, skill < subsets.SKILL_P)
    report("ablation", 0.7)
    drops = ablation_drops(restriction, chosen, full_logits, eval_y, width, seed=options.seed)

    report("stability", 0.85)
    jaccards = stability.bootstrap_jaccard(grouped_scores, None, chosen, options.bootstrap, seed=options.seed, groups=groups)

    per_class = []
    for p, c in enumerate(classes):
        members = subsets.members(chosen[p])
        per_class.append(
            {
                "class": int(c),
                "name": names[p],
                "subset_k": [int(i) for i in members],
                "coverage_size": int(coverage[p]),
                "retention_size": int(retention[p]) if retention[p] >= 0 else None,
                "skill_p": float(skill[p]),
                "recall_full": recall(full_logits, eval_y, int(c)),
                "recall_restricted": recall(restricted_logits, eval_y, int(c)),
                "ablation": {key: plain(value) for key, value in drops[p].items()},
                "stability_jaccard": plain(jaccards[p]),
                "mi_top_k_jaccard": subsets.jaccard(mi_top[p], members) if len(members) else None,
            }
        )
    summary: dict[str, Any] = {
        "layer": acts.layer,
        "num_filters": width,
        "num_classes": count,
        "num_outputs": outputs,
        "class_names": names,
        "ranking": options.ranking,
        "attribution": acts.attribution,
        "restriction": "decomposed_head" if acts.exact else "mean_ablation",
        "logits": acts.logits_source,
        "head": acts.head,
        "mi_estimator": options.mi_estimator,
        "k": options.k,
        "fit_samples": int(len(split.fit)),
        "eval_samples": int(len(split.eval)),
        "classes": per_class,
        "global": {
            "mis_binned_bits": mi.binned_mis,
            "mis_binned_bits_shuffled": mi.binned_shuffled,
            "mis_knn_nats": mi.knn_mis,
            "mis_knn_nats_shuffled": mi.knn_shuffled,
            "mis_knn_skipped": mi.knn_skipped,
            # Kept for gates written against them: the MIS of `mi_estimator`, in bits.
            "mis": mi.legacy_mis,
            "mis_shuffled": mi.legacy_shuffled,
            "psi_0_5": selectivity.psi(fit_x, loud=loud),
            "density": subsets.density(chosen, width),
            "mean_overlap": subsets.mean_overlap(chosen),
            "accuracy_full": _accuracy(full_logits, eval_y),
            "accuracy_restricted": _accuracy(restricted_logits, eval_y),
            "compute_saving": subsets.compute_saving(chosen, width),
            "selectivity": {"mean": float(np.mean(csi)), "median": float(np.median(csi))},
        },
    }
    report("done", 1.0)
    matrices = {"contribution": contribution, "mutual_information": mi.matrix, "selectivity": select, "frequency": frequency, "mi_binned_bits": mi.binned}
    if mi.knn is not None:
        matrices["mi_knn_nats"] = mi.knn
    return ClassFilters(
        summary=plain(summary),
        matrices=matrices,
        subsets=chosen,
        sizes={"k": (chosen >= 0).sum(axis=1), "coverage": coverage, "retention": retention},
        classes=classes,
    )


@dataclass
class _Information:
    """Both estimators' MI matrices and MIS with their shuffled-label baselines (kNN: None when skipped)."""

    matrix: np.ndarray  # (P, D) in bits, of the `mi_estimator` option (the ranking comparison and the NPZ)
    binned: np.ndarray
    binned_mis: float
    binned_shuffled: float
    knn: np.ndarray | None
    knn_mis: float | None
    knn_shuffled: float | None
    knn_skipped: str | None
    legacy_mis: float
    legacy_shuffled: float


def _information(fit_x: np.ndarray, fit_y: np.ndarray, count: int, options: Options) -> _Information:
    prepared = information.prepare(fit_x, seed=options.seed)
    shuffled = information.shuffled_labels(fit_y, options.seed)
    binned = information.binned_mi(prepared, fit_y, count)
    binned_shuffled = information.mis(information.binned_mi(prepared, shuffled, count))
    knn = knn_mis = knn_shuffled = None
    skipped = None
    if options.mi_estimator == information.KNN or fit_x.size <= KNN_AUTO_VALUES:
        knn = information.knn_mi_nats(prepared, fit_y, count, seed=options.seed)
        knn_mis = information.mis(knn)
        knn_shuffled = information.mis(information.knn_mi_nats(prepared, shuffled, count, seed=options.seed))
    else:
        skipped = (
            f"{fit_x.shape[0]} fit samples × {fit_x.shape[1]} filters is more than the {KNN_AUTO_VALUES} values the kNN "
            "estimator runs on by default; set mi_estimator to \"knn\" to compute it"
        )
    if options.mi_estimator == information.KNN:
        assert knn is not None and knn_mis is not None and knn_shuffled is not None
        matrix, legacy, legacy_shuffled = knn / math.log(2.0), knn_mis / math.log(2.0), knn_shuffled / math.log(2.0)
    else:
        matrix, legacy, legacy_shuffled = binned, information.mis(binned), binned_shuffled
    return _Information(matrix, binned, information.mis(binned), binned_shuffled, knn, knn_mis, knn_shuffled, skipped, legacy, legacy_shuffled)


def class_names_for(names: list[str] | None, classes: np.ndarray) -> list[str]:
    """A name per analysed class: names given for every label up to the largest (indexed by output), or one
    per class in the dataset (in label order); otherwise the output index."""
    names = list(names or [])
    if classes.size and len(names) > int(classes.max()):
        return [str(names[int(c)]) for c in classes]
    if len(names) == len(classes):
        return [str(n) for n in names]
    return [str(int(c)) for c in classes]


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean()) if len(y) else 0.0

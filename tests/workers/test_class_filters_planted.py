"""Known answer: pooled features with planted disjoint 5-filter subsets per class plus 6 loud filters
shared by every class. Contribution and MI find the subsets exactly; Badola's frequency ranking
finds none of them (which is why it is not the default); the decomposed head loses no accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from workers.class_filters import information, ranking
from workers.context import TaskContext
from workers.dataset import Dataset
from workers.input_spec import InputSpec
from workers.job import perform
from workers.model import LoadedModel

CLASSES, PER_CLASS, LOUD, QUIET = 4, 5, 6, 9
WIDTH = CLASSES * PER_CLASS + LOUD + QUIET


def planted(n_per_class: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[list[int]], list[int], np.ndarray]:
    """(features (N, D), labels, S_c per class, loud filters, head weight (C, D)); filter indices shuffled."""
    rng = np.random.default_rng(seed)
    slots = rng.permutation(WIDTH)
    subsets = [sorted(int(i) for i in slots[c * PER_CLASS : (c + 1) * PER_CLASS]) for c in range(CLASSES)]
    loud = sorted(int(i) for i in slots[CLASSES * PER_CLASS : CLASSES * PER_CLASS + LOUD])
    y = np.repeat(np.arange(CLASSES), n_per_class)
    x = np.abs(rng.normal(0.0, 0.1, size=(len(y), WIDTH)))  # post-ReLU-like background
    for c, subset in enumerate(subsets):
        rows = y == c
        x[np.ix_(rows, subset)] += rng.uniform(1.5, 2.5, size=(rows.sum(), PER_CLASS))
    x[:, loud] += rng.uniform(8.0, 12.0, size=(len(y), LOUD))  # loud for everyone, says nothing
    weight = rng.normal(0.0, 0.01, size=(CLASSES, WIDTH))
    for c, subset in enumerate(subsets):
        weight[c, subset] = 1.0
    weight[:, loud] = 0.02  # the head barely reads them, and equally for every class
    return x.astype(np.float32), y.astype(np.int64), subsets, loud, weight


def test_contribution_and_mi_recover_the_subsets_frequency_does_not() -> None:
    x, y, subsets, loud, weight = planted()
    x = x.astype(np.float64)
    contribution = ranking.class_means(x * weight[y], y, CLASSES)
    mi = information.binned_mi(x, y, CLASSES)
    knn = information.knn_mi(x, y, CLASSES)
    frequency = ranking.class_means(ranking.frequency_sample_scores(x, y, CLASSES), y, CLASSES)
    for c in range(CLASSES):
        assert sorted(ranking.top_k(contribution, PER_CLASS)[c]) == subsets[c]
        assert sorted(ranking.top_k(mi, PER_CLASS)[c]) == subsets[c]
        assert sorted(ranking.top_k(knn, PER_CLASS)[c]) == subsets[c]
        picked = set(ranking.top_k(frequency, PER_CLASS)[c].tolist())
        assert not picked & set(subsets[c]), "the frequency ranking should find none of the planted filters"
        assert picked <= set(loud), "it picks the loud shared filters instead"
    planted_filters = sum(subsets, [])
    others = np.setdiff1d(np.arange(WIDTH), planted_filters)
    entropy = -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75))  # H(1[y = c]) with 4 balanced classes
    assert knn.max(axis=0)[planted_filters] == pytest.approx(entropy, abs=0.02)
    assert (mi.max(axis=0)[planted_filters] > 0.6).all()  # quantile bins straddle the class edge a little
    assert (mi.max(axis=0)[others] < 0.1).all() and (knn.max(axis=0)[others] < 0.1).all()
    assert information.mis(mi) > 8 * information.shuffled_mis(x, y, CLASSES)


def _identity_head_model(weight: np.ndarray) -> LoadedModel:
    head = nn.Linear(WIDTH, CLASSES)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        head.bias.zero_()
    return LoadedModel.from_module(nn.Sequential(nn.Identity(), head), InputSpec(shape=(WIDTH,)))


def _run(tmp_path: Path, options: dict, n_per_class: int = 60) -> tuple[dict, list[list[int]], list[int]]:
    x, y, subsets, loud, weight = planted(n_per_class)
    ctx = TaskContext(model=_identity_head_model(weight), out_dir=tmp_path, dataset=Dataset(x, y, ["a", "b", "c", "d"]))
    return perform("class_filters", ctx, options), subsets, loud


def test_task_recovers_the_planted_subsets_and_keeps_accuracy(tmp_path: Path) -> None:
    summary, subsets, _ = _run(tmp_path, {"bootstrap": 10, "seed": "3", "mass_coverage": 0.8})
    assert summary["layer"] == "1:input" and summary["attribution"] == "exact_logit_split"
    assert summary["num_filters"] == WIDTH and summary["class_names"] == ["a", "b", "c", "d"]
    for c, entry in enumerate(summary["classes"]):
        assert sorted(entry["subset_k"]) == subsets[c]
        assert entry["coverage_size"] == PER_CLASS  # the planted filters hold ~89 % of the positive mass
        assert entry["recall_restricted"] == entry["recall_full"] == 1.0
        assert entry["stability_jaccard"] == 1.0
        assert entry["mi_top_k_jaccard"] == 1.0
        assert entry["ablation"]["random_drop"] < 0.05 < 0.5 < entry["ablation"]["subset_drop"]
    g = summary["global"]
    assert g["accuracy_restricted"] == g["accuracy_full"] == 1.0
    assert g["mis"] > 8 * g["mis_shuffled"]
    assert g["mean_overlap"] == 0.0
    assert g["density"] == pytest.approx(CLASSES * PER_CLASS / WIDTH)
    assert g["compute_saving"] == pytest.approx(1 - PER_CLASS / WIDTH)

    out = tmp_path / "class_filters"
    assert json.loads((out / "class_filters.json").read_text()) == summary
    with np.load(out / "matrices.npz") as z:
        for name in ("contribution", "mutual_information", "selectivity", "frequency"):
            assert z[name].shape == (CLASSES, WIDTH)
        assert sorted(z["subsets"][1].tolist()) == subsets[1]
    for png in ("heatmap.png", "subset_sizes.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_task_with_frequency_ranking_misses_every_subset(tmp_path: Path) -> None:
    summary, subsets, loud = _run(tmp_path, {"ranking": "frequency", "bootstrap": 0, "k": 5})
    for c, entry in enumerate(summary["classes"]):
        assert not set(entry["subset_k"]) & set(subsets[c])
        assert set(entry["subset_k"]) <= set(loud)
        assert entry["stability_jaccard"] is None
    # The loud filters are nearly unread by the head: restricted to them, the model is much worse.
    assert summary["global"]["accuracy_restricted"] < summary["global"]["accuracy_full"] - 0.3


def test_knn_estimator_through_the_task(tmp_path: Path) -> None:
    summary, _, _ = _run(tmp_path, {"miEstimator": "knn", "bootstrap": 0}, n_per_class=30)
    assert summary["mi_estimator"] == "knn"
    assert all(entry["mi_top_k_jaccard"] == 1.0 for entry in summary["classes"])
    assert summary["global"]["mis"] > 5 * summary["global"]["mis_shuffled"]  # kNN MI of noise is clipped at 0: biased up

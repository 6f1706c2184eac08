"""The pieces of class_filters on cases small enough to know the answer by hand, and the errors a user can cause."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import digamma
from torch import nn

from workers.class_filters import Options, collect, find_head, information, ranking, selectivity, stability, stratified_split, subsets
from workers.class_filters.restriction import HeadRestriction
from workers.context import TaskContext
from workers.dataset import Dataset
from workers.errors import BadOptions, DatasetUnusable, ModelUnusable
from workers.input_spec import InputSpec
from workers.job import perform
from workers.model import LoadedModel
from workers.samples.hand_wired import HandWiredCNN


def _ross_reference(values: np.ndarray, labels: np.ndarray, k: int = 3) -> float:
    """Ross (2014) written the slow, obvious way (all pairwise distances), in bits."""
    n = len(values)
    radius, k_all, counts = np.zeros(n), np.zeros(n), np.zeros(n)
    for label in np.unique(labels):
        rows = labels == label
        v = values[rows]
        distances = np.abs(v[:, None] - v[None, :])
        np.fill_diagonal(distances, np.inf)
        kk = min(k, rows.sum() - 1)
        radius[rows] = np.nextafter(np.sort(distances, axis=1)[:, kk - 1], 0)
        k_all[rows], counts[rows] = kk, rows.sum()
    within = (np.abs(values[:, None] - values[None, :]) <= radius[:, None]).sum(axis=1)
    mi = digamma(n) + digamma(k_all).mean() - digamma(counts).mean() - digamma(within).mean()
    return max(0.0, mi) / math.log(2)


def test_knn_mi_matches_the_reference_estimator() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 3))
    x[:, 0] += 2.0 * (y == 0)
    x[:, 1] += 0.7 * (y == 2)
    ours = information.knn_mi(x, y, 3)
    for c in range(3):
        for i in range(3):
            assert ours[c, i] == pytest.approx(_ross_reference(x[:, i] / x[:, i].std(ddof=1), (y == c).astype(int)), abs=2e-3)


@pytest.mark.parametrize("kind", ["normal", "post_relu", "quantised", "tiny_classes"])
def test_knn_mi_for_all_classes_at_once_is_the_per_class_estimator(kind: str) -> None:
    """The all-classes kNN path (sorted once, rest side from each sample's nearest entries) gives the per-class
    computation's numbers (each class and its rest sorted and counted with binary searches, as scikit-learn's
    estimator is written), on continuous data, exact zeros, tied values and classes of 1 to 3 samples."""
    rng = np.random.default_rng({"normal": 0, "post_relu": 1, "quantised": 2, "tiny_classes": 3}[kind])
    for _ in range(6):
        classes = int(rng.integers(2, 12))
        n = int(rng.integers(classes * 2, 160))
        y = rng.integers(0, classes, n)
        if kind == "tiny_classes":
            y[: classes] = np.arange(classes)
            y[classes:] = rng.integers(0, 2, n - classes)  # classes 2.. hold 1 sample each
        x = rng.normal(size=(n, 7)) + 1.5 * (y[:, None] == np.arange(7) % classes)
        if kind == "post_relu":
            x = np.maximum(x, 0.0)
            x[:, 0] = 0.0  # a dead filter
        if kind == "quantised":
            x = np.round(x * 2.0) / 2.0
        prepared = information.prepare(x, seed=3)
        fast = information.knn_mi_nats(prepared, y, classes, seed=3)
        values = prepared.knn.values
        reference = np.stack([information._knn_class(values, y, c, information.KNN_NEIGHBORS) for c in range(classes)])
        np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-12)


def test_binned_mi_of_a_perfect_indicator_is_the_label_entropy_and_of_noise_near_zero() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 500)
    x = np.stack([y + 0.01 * rng.normal(size=1000), rng.normal(size=1000), np.zeros(1000)], axis=1)
    mi = information.binned_mi(x, y, 2)
    assert mi[:, 0] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert mi[:, 1].max() < 0.02
    assert mi[:, 2].max() == 0.0  # a dead filter carries nothing
    assert information.mis(mi) == pytest.approx(mi.max(axis=0).mean())


def test_selectivity_index_and_psi() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    x = np.zeros((6, 3))
    x[y == 1, 0] = 4.0  # only class 1: CSI 1
    x[:, 1] = 2.0  # every class alike: CSI 0
    x[:, 2] = np.array([1, 1, 3, 3, 1, 1])  # class 1 three times the others: (3-1)/(3+1)
    csi = selectivity.selectivity_index(selectivity.class_selectivity(x, y, 3))
    assert csi == pytest.approx([1.0, 0.0, 0.5])
    one_loud = np.array([[10.0, 0.1, 0.1, 0.1], [0.1, 10.0, 0.1, 0.1]])
    assert selectivity.psi(one_loud) == pytest.approx(0.25)
    assert selectivity.psi(np.ones((3, 4))) == pytest.approx(0.5)


def test_loud_sets_and_frequency_tie_break() -> None:
    x = np.array([[5.0, 4.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert ranking.loud_sets(x).tolist() == [[True, False, False, False], [False, False, False, False]]
    y = np.array([0, 0, 0, 1])
    feats = np.array([[9.0, 1.0, 0.0], [9.0, 2.0, 0.0], [9.0, 3.0, 0.0], [1.0, 1.0, 9.0]])
    scores = ranking.class_means(ranking.frequency_sample_scores(feats, y, 2), y, 2)
    assert ranking.order(scores)[0].tolist() == [0, 1, 2]  # frequency first, then mean |activation|


def test_coverage_sizes_and_overlap_figures() -> None:
    contribution = np.array([[5.0, 3.0, 1.0, 1.0, -4.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    order = ranking.order(contribution)
    assert subsets.coverage_sizes(contribution, order, 0.8).tolist() == [2, 0]
    assert subsets.coverage_sizes(contribution, order, 0.9).tolist() == [3, 0]
    chosen = np.array([[0, 1], [1, 2], [3, 4]])
    assert subsets.mean_overlap(chosen) == pytest.approx((1 / 3 + 0 + 0) / 3)
    assert subsets.density(chosen, 10) == pytest.approx(0.5)
    assert subsets.compute_saving(chosen, 10) == pytest.approx(0.8)


class _Bisected(HeadRestriction):
    exhaustive = False


def test_retention_size_exhaustive_and_bisection_agree() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 30)
    features = np.abs(rng.normal(0.0, 0.3, size=(90, 12)))
    for c in range(3):
        features[y == c, c * 4 : c * 4 + 4] += np.array([2.0, 1.0, 0.5, 0.25])
    weight = np.zeros((3, 12))
    for c in range(3):
        weight[c, c * 4 : c * 4 + 4] = 1.0
    bias = np.zeros(3)
    full = features @ weight.T
    order = ranking.order(ranking.class_means(features * weight[y], y, 3))
    exact = subsets.retention_sizes(HeadRestriction(features, weight, bias), order, full, y, 0.99)
    bisected = subsets.retention_sizes(_Bisected(features, weight, bias), order, full, y, 0.99)
    assert exact.tolist() == bisected.tolist()
    assert (exact >= 1).all() and (exact <= 4).all()
    assert subsets.retention_sizes(HeadRestriction(features, weight, bias), order, full, y, 1e-6).tolist() == [1, 1, 1]


def test_bootstrap_jaccard_is_one_for_a_clear_answer_and_low_for_noise() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 50)
    clear = rng.normal(0.0, 0.1, size=(100, 20))
    clear[:, :3] += 5.0
    noise = rng.normal(0.0, 1.0, size=(100, 20))
    top = np.array([[0, 1, 2], [0, 1, 2]])
    assert stability.bootstrap_jaccard(clear, y, top, 20) == [1.0, 1.0]
    assert max(stability.bootstrap_jaccard(noise, y, ranking.top_k(ranking.class_means(noise, y, 2), 3), 20)) < 0.6
    assert stability.bootstrap_jaccard(noise, y, top, 0) == [None, None]


def test_stratified_split_keeps_every_class_on_both_sides() -> None:
    y = np.array([0] * 10 + [1] * 3 + [2] * 2)
    split = stratified_split(y, 0.7, seed=0)
    assert sorted(np.concatenate([split.fit, split.eval]).tolist()) == list(range(15))
    assert np.bincount(y[split.fit]).tolist() == [7, 2, 1]
    assert np.bincount(y[split.eval]).tolist() == [3, 1, 1]
    with pytest.raises(DatasetUnusable) as err:
        stratified_split(np.array([0, 0, 1]), 0.7, seed=0)
    assert err.value.reason == "CLASS_TOO_SMALL"


def test_grad_x_act_equals_the_exact_split_behind_global_pooling() -> None:
    """Before the ReLU, Σ_positions grad·A of the class logit is w·mean(relu(A)): the exact split one layer up."""
    model = HandWiredCNN(video=False, seed=4)
    x, y = model.images(6, seed=5)
    loaded = LoadedModel.from_module(model, model.input_spec)
    fit = np.arange(len(y))
    inner = collect(loaded, x, y, fit, layer="conv")
    outer = collect(loaded, x, y, fit, layer="relu")
    assert inner.attribution == "gradient_x_activation" and outer.attribution == "exact_logit_split"
    assert np.allclose(inner.contributions, outer.contributions, rtol=1e-4, atol=1e-6)
    assert np.allclose(inner.logits, outer.logits, atol=1e-5)
    assert inner.mean_map is not None and tuple(inner.mean_map.shape) == (inner.num_filters, 24, 24)


class _HeadFirst(nn.Module):
    """Registers its head before the body: only execution order tells which Linear is last."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.body = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def test_find_head_follows_execution_order() -> None:
    name, _ = find_head(_HeadFirst(), torch.zeros(1, 4))
    assert name == "head"


def test_options_parse_json_names_strings_and_reject_nonsense() -> None:
    options = Options.from_dict({"massCoverage": 0.8, "seed": "7", "k": 3, "ranking": ""})
    assert (options.mass_coverage, options.seed, options.k, options.ranking) == (0.8, 7, 3, "contribution")
    for bad in ({"k": 0}, {"ranking": "loudest"}, {"mi_estimator": "ksg"}, {"fit_fraction": 1.0}, {"bootstrap": -1}, {"typo": 1}, {"k": "five"}):
        with pytest.raises(BadOptions):
            Options.from_dict(bad)


def _run(tmp_path: Path, model: nn.Module, spec: InputSpec, dataset: Dataset | None, options: dict | None = None) -> dict:
    return perform("class_filters", TaskContext(model=LoadedModel.from_module(model, spec), out_dir=tmp_path, dataset=dataset), options or {})


def test_user_errors_are_clear(tmp_path: Path) -> None:
    spec = InputSpec(shape=(4,))
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = np.arange(30) % 3
    cases = [
        (None, {}, DatasetUnusable, "DATASET_REQUIRED"),
        (Dataset(x[:, :3], y), {}, DatasetUnusable, "DATASET_SHAPE"),
        (Dataset(x, np.where(y == 2, 1, 2 * (np.arange(30) == 0))), {}, DatasetUnusable, "CLASS_TOO_SMALL"),
        (Dataset(x, np.full(30, 2)), {}, DatasetUnusable, "TOO_FEW_CLASSES"),
        (Dataset(x, y + 1), {}, DatasetUnusable, "LABELS_EXCEED_OUTPUTS"),
        (Dataset(x, np.zeros(30, dtype=np.int64)), {}, DatasetUnusable, "TOO_FEW_CLASSES"),
        (Dataset(x, y), {"k": 9}, BadOptions, "K_EXCEEDS_FILTERS"),
        (Dataset(x, y), {"layer": "nope"}, ModelUnusable, "UNKNOWN_LAYER"),
    ]
    for dataset, options, error, reason in cases:
        with pytest.raises(error) as err:
            _run(tmp_path, model, spec, dataset, options)
        assert err.value.reason == reason, (reason, err.value.message)
    no_linear = nn.Sequential(nn.Conv1d(1, 3, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten())
    with pytest.raises(ModelUnusable) as err:
        _run(tmp_path, no_linear, InputSpec(shape=(1, 8)), Dataset(rng.normal(size=(30, 1, 8)).astype(np.float32), y))
    assert err.value.reason == "NO_LINEAR_HEAD"


def test_summary_is_plain_json(tmp_path: Path) -> None:
    spec = InputSpec(shape=(4,))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(45, 4)).astype(np.float32)
    y = np.arange(45) % 3
    summary = _run(tmp_path, model, spec, Dataset(x, y), {"k": 2, "bootstrap": 3})

    def walk(value: object) -> None:
        assert value is None or type(value) in (dict, list, str, int, float, bool), type(value)
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(summary)
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert set(summary["classes"][0]) >= {"class", "name", "subset_k", "coverage_size", "retention_size", "recall_full", "recall_restricted", "ablation", "stability_jaccard"}
    assert set(summary["global"]) >= {"mis", "mis_shuffled", "psi_0_5", "density", "mean_overlap", "accuracy_full", "accuracy_restricted", "compute_saving", "selectivity"}

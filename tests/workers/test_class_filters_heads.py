"""Known answers on the heads and label sets users have, and on the neighbours of the planted case.

- A 400-way head with a labelled set of 3 of its classes: each class's planted subset S_c comes back exactly,
  the 397 other outputs still compete in every prediction, and the restricted model keeps their full logits.
- The same planted head in the shapes real video models give it: torchvision's Linear on pooled features,
  pytorchvideo's ResNetBasicHead (a Linear on channels-last (N, T, H, W, D) between permutes, its outputs
  averaged by `output_pool`; also without its pool, so the Linear sees 8 positions), S3D's 1 × 1 × 1 Conv3d
  classifier followed by a mean, and X3D's head that ends in a Softmax: every one gives the subsets and the
  per-filter logit contributions of the plain Linear head, with the pre-softmax logits attributed.
- Neighbours: a head that is all bias (no filter adds anything: no subset, nothing stable), and noise
  features (the model has no skill on any class: no class is said to need a few filters).
"""

from __future__ import annotations

import math
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from torch import nn

from sdk import schemas
from workers.class_filters import information
from workers.context import TaskContext
from workers.dataset import Dataset
from workers.input_spec import InputSpec
from workers.job import perform
from workers.model import LoadedModel
from workers.samples.zoo.resnet3d import ResNetBasicHead


WIDTH, PER_CLASS = 24, 4
MAP = (2, 2, 2)  # (T, H, W) of the feature maps the heads pool


def _planted(classes: list[int], outputs: int, n_per_class: int = 24, seed: int = 0, maps: bool = False) -> tuple[np.ndarray, np.ndarray, dict[int, list[int]], np.ndarray]:
    """(x, y, S_c per class, head weight (outputs, WIDTH)). x is (N, WIDTH) features, or (N, WIDTH, *MAP)
    feature maps whose mean over (T, H, W) carries the same planted pattern."""
    rng = np.random.default_rng(seed)
    slots = rng.permutation(WIDTH)
    subsets = {c: sorted(int(i) for i in slots[j * PER_CLASS : (j + 1) * PER_CLASS]) for j, c in enumerate(classes)}
    y = np.repeat(np.asarray(classes), n_per_class)
    shape = (len(y), WIDTH, *MAP) if maps else (len(y), WIDTH)
    x = np.abs(rng.normal(0.0, 0.1, size=shape))
    for c, subset in subsets.items():
        rows = np.flatnonzero(y == c)
        x[np.ix_(rows, subset)] += rng.uniform(1.5, 2.5, size=(len(rows), PER_CLASS) + ((1,) * len(MAP) if maps else ()))
    weight = rng.normal(0.0, 0.01, size=(outputs, WIDTH))
    for c, subset in subsets.items():
        weight[c, subset] = 1.0
    return x.astype(np.float32), y.astype(np.int64), subsets, weight


def _linear(weight: np.ndarray, bias: np.ndarray | None = None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.as_tensor(np.zeros(weight.shape[0]) if bias is None else bias, dtype=torch.float32))
    return layer


def _run(tmp_path: Path, model: nn.Module, shape: tuple[int, ...], x: np.ndarray, y: np.ndarray, options: dict | None = None) -> dict:
    """The task's summary, checked against the schema the SDK ships."""
    loaded = LoadedModel.from_module(model.eval(), InputSpec(shape=shape))
    ctx = TaskContext(model=loaded, out_dir=tmp_path, dataset=Dataset(x, y))
    summary = perform("class_filters", ctx, {"bootstrap": 10, "seed": 0, **(options or {})})
    jsonschema.validate(summary, schemas.load("class_filters"))
    return summary


# ------------------------------------------------------------------ a few classes of a 400-way head


def test_three_classes_of_a_400_way_head_give_their_planted_subsets(tmp_path: Path) -> None:
    classes = [7, 123, 399]
    x, y, subsets, weight = _planted(classes, outputs=400)
    summary = _run(tmp_path, nn.Sequential(nn.Identity(), _linear(weight)), (WIDTH,), x, y, {"k": PER_CLASS})
    assert summary["num_outputs"] == 400 and summary["num_classes"] == 3
    assert [entry["class"] for entry in summary["classes"]] == classes
    for entry in summary["classes"]:
        assert sorted(entry["subset_k"]) == subsets[entry["class"]]
        assert entry["recall_full"] == entry["recall_restricted"] == 1.0
        assert entry["retention_size"] is not None and entry["retention_size"] <= PER_CLASS
        assert entry["stability_jaccard"] == 1.0
    assert summary["global"]["accuracy_full"] == summary["global"]["accuracy_restricted"] == 1.0
    with np.load(tmp_path / "class_filters" / "matrices.npz") as z:
        assert z["contribution"].shape == (3, WIDTH)
        assert z["classes"].tolist() == classes


def test_the_outputs_without_samples_still_compete(tmp_path: Path) -> None:
    """An output no sample has (2) rivals class 0: class 0's full logit beats it, class 0's restricted logit
    (its 4 best filters only) does not. The restricted model keeps output 2's full logit, so it loses exactly
    those samples, as the decomposed head would in deployment."""
    rng = np.random.default_rng(1)
    strong, spread, own_1 = list(range(4)), list(range(4, 16)), list(range(16, 20))
    y = np.repeat([0, 1], 30)
    x = np.abs(rng.normal(0.0, 0.1, size=(len(y), WIDTH)))
    x[np.ix_(y == 0, strong)] += rng.uniform(1.5, 2.5, size=(30, 4))
    x[np.ix_(y == 0, spread)] += rng.uniform(0.3, 0.7, size=(30, 12))  # class 0's logit also spreads over 12 filters
    x[np.ix_(y == 1, own_1)] += rng.uniform(1.5, 2.5, size=(30, 4))
    weight = np.zeros((3, WIDTH))
    weight[0, strong + spread] = 1.0
    weight[1, own_1] = 1.0
    weight[2, strong] = 1.1
    x = x.astype(np.float32)
    summary = _run(tmp_path, nn.Sequential(nn.Identity(), _linear(weight)), (WIDTH,), x, y, {"k": 4})
    by_class = {entry["class"]: entry for entry in summary["classes"]}
    assert summary["num_outputs"] == 3 and summary["num_classes"] == 2
    assert sorted(by_class[0]["subset_k"]) == strong and sorted(by_class[1]["subset_k"]) == own_1
    assert by_class[0]["recall_full"] == by_class[1]["recall_full"] == 1.0
    assert by_class[1]["recall_restricted"] == 1.0
    # On every class-0 sample output 2 (1.1 × the strong filters) beats class 0 restricted to them (1 ×).
    assert by_class[0]["recall_restricted"] == 0.0
    assert summary["global"]["accuracy_restricted"] == pytest.approx(0.5, abs=0.05)


# ------------------------------------------------------------------ the heads real video models have


class _PlainHead(nn.Module):
    """torchvision: global average pool, flatten, Linear."""

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = _linear(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class _S3DHead(nn.Module):
    """torchvision's S3D: avgpool, classifier = (Dropout, 1 × 1 × 1 Conv3d), mean over (T, H, W)."""

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__()
        self.avgpool = nn.AvgPool3d(kernel_size=(1, 2, 2), stride=1)
        conv = nn.Conv3d(weight.shape[1], weight.shape[0], kernel_size=1, stride=1, bias=True)
        with torch.no_grad():
            conv.weight.copy_(torch.as_tensor(weight, dtype=torch.float32)[:, :, None, None, None])
            conv.bias.zero_()
        self.classifier = nn.Sequential(nn.Dropout(p=0.2), conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mean(self.classifier(self.avgpool(x)), dim=(2, 3, 4))


def _heads(weight: np.ndarray) -> dict[str, tuple[nn.Module, str, dict]]:
    """name -> (model, head module path, what the summary must say about the head and its logits)."""
    return {
        "plain_linear": (_PlainHead(weight), "fc", {"kind": "linear", "positions": 1, "logits": "model_output"}),
        "pytorchvideo": (
            ResNetBasicHead(pool=nn.AvgPool3d(MAP, stride=1), dropout=nn.Dropout(0.5), proj=_linear(weight), output_pool=nn.AdaptiveAvgPool3d(1)),
            "proj",
            {"kind": "linear", "layout": "channels_last", "positions": 1, "logits": "model_output"},
        ),
        "pytorchvideo_unpooled": (
            ResNetBasicHead(pool=None, dropout=nn.Dropout(0.5), proj=_linear(weight), output_pool=nn.AdaptiveAvgPool3d(1)),
            "proj",
            {"kind": "linear", "layout": "channels_last", "positions": math.prod(MAP), "logits": "model_output"},
        ),
        "s3d_conv": (_S3DHead(weight), "classifier.1", {"kind": "pointwise_conv", "layout": "channels_first", "positions": MAP[0], "logits": "model_output"}),
        "x3d_softmax": (
            ResNetBasicHead(pool=nn.AvgPool3d(MAP, stride=1), dropout=nn.Dropout(0.5), proj=_linear(weight), activation=nn.Softmax(dim=1), output_pool=nn.AdaptiveAvgPool3d(1)),
            "proj",
            {"kind": "linear", "layout": "channels_last", "positions": 1, "logits": "pre_softmax"},
        ),
    }


@pytest.fixture(scope="module")
def head_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
    classes = [1, 4, 7]
    x, y, subsets, weight = _planted(classes, outputs=10, maps=True)
    out: dict[str, tuple[dict, dict[str, np.ndarray]]] = {"_planted": ({"subsets": subsets}, {})}  # type: ignore[dict-item]
    torch.manual_seed(0)
    for name, (model, _, _) in _heads(weight).items():
        tmp = tmp_path_factory.mktemp(name)
        summary = _run(tmp, model, (WIDTH, *MAP), x, y)
        with np.load(tmp / "class_filters" / "matrices.npz") as z:
            out[name] = (summary, {key: z[key] for key in ("contribution", "mi_binned_bits")})
    return out


@pytest.mark.parametrize("name", ["pytorchvideo", "pytorchvideo_unpooled", "s3d_conv", "x3d_softmax"])
def test_every_head_shape_gives_the_plain_linear_answer(name: str, head_answers: dict) -> None:
    subsets = head_answers["_planted"][0]["subsets"]
    plain, plain_matrices = head_answers["plain_linear"]
    summary, matrices = head_answers[name]
    path, expected = _heads(np.zeros((10, WIDTH)))[name][1:]
    assert summary["layer"] == f"{path}:input" and summary["attribution"] == "exact_logit_split"
    assert summary["logits"] == expected.pop("logits")
    assert {key: summary["head"][key] for key in expected} == expected and summary["head"]["module"] == path
    for entry, reference in zip(summary["classes"], plain["classes"]):
        assert sorted(entry["subset_k"][:PER_CLASS]) == subsets[entry["class"]]
        assert entry["subset_k"] == reference["subset_k"]
        assert entry["recall_full"] == entry["recall_restricted"] == 1.0
    # The logit split is exact in every shape: the same per-filter contributions as the plain head's.
    np.testing.assert_allclose(matrices["contribution"], plain_matrices["contribution"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(matrices["mi_binned_bits"], plain_matrices["mi_binned_bits"])
    assert summary["global"]["accuracy_restricted"] == summary["global"]["accuracy_full"] == 1.0


def test_a_softmax_head_is_attributed_its_logits_not_its_probabilities(head_answers: dict) -> None:
    """Probabilities of a confident model are ~0 and ~1: had they been split, every contribution would be
    bounded by 1. The logits split gives the plain head's contributions (up to 2 on each planted filter)."""
    summary, matrices = head_answers["x3d_softmax"]
    assert summary["logits"] == "pre_softmax"
    assert matrices["contribution"].max() > 1.5


def test_an_inner_layer_of_a_softmax_model_is_attributed_through_the_logits(tmp_path: Path) -> None:
    """gradient × activation before a ReLU behind global pooling is the exact split one layer up, when the
    gradient is the logit's; the gradient of a softmax probability is not."""
    x, y, _, weight = _planted([0, 1, 2], outputs=3, maps=True)
    torch.manual_seed(0)
    conv = nn.Conv3d(WIDTH, WIDTH, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(WIDTH)[:, :, None, None, None] + 0.05 * torch.randn(WIDTH, WIDTH, 1, 1, 1))
        conv.bias.fill_(-0.05)
    head = ResNetBasicHead(pool=nn.AvgPool3d(MAP, stride=1), proj=_linear(weight), activation=nn.Softmax(dim=1), output_pool=nn.AdaptiveAvgPool3d(1))
    model = nn.Sequential(conv, nn.ReLU(), head)
    inner = _run(tmp_path / "inner", model, (WIDTH, *MAP), x, y, {"layer": "0", "bootstrap": 0})
    outer = _run(tmp_path / "outer", model, (WIDTH, *MAP), x, y, {"layer": "1", "bootstrap": 0})
    assert inner["attribution"] == "gradient_x_activation" and outer["attribution"] == "exact_logit_split"
    assert inner["logits"] == outer["logits"] == "pre_softmax"
    with np.load(tmp_path / "inner" / "class_filters" / "matrices.npz") as a, np.load(tmp_path / "outer" / "class_filters" / "matrices.npz") as b:
        np.testing.assert_allclose(a["contribution"], b["contribution"], rtol=1e-4, atol=1e-5)
    assert [e["subset_k"] for e in inner["classes"]] == [e["subset_k"] for e in outer["classes"]]


# ------------------------------------------------------------------ neighbours of the planted case


def test_a_head_that_is_all_bias_gives_no_class_a_subset(tmp_path: Path) -> None:
    x, y, _, weight = _planted([0, 1, 2], outputs=3)
    bias = np.array([0.0, 1.0, 2.0])
    summary = _run(tmp_path, nn.Sequential(nn.Identity(), _linear(np.zeros_like(weight), bias)), (WIDTH,), x, y)
    for entry in summary["classes"]:
        assert entry["subset_k"] == []  # no filter adds anything to any logit
        assert entry["coverage_size"] == 0
        assert entry["retention_size"] is None  # the model says "class 2" to everything: no skill
        assert entry["stability_jaccard"] is None and entry["mi_top_k_jaccard"] is None
        assert entry["ablation"]["subset_drop"] is None
    assert summary["global"]["density"] == 0.0 and summary["global"]["mean_overlap"] == 0.0
    assert summary["global"]["compute_saving"] == 1.0


def test_noise_features_give_no_class_a_small_subset(tmp_path: Path) -> None:
    """Features that say nothing about the labels and a random head: the full model is at chance on every
    class, so no class is said to be carried by a few filters (the old code said 1 filter for each)."""
    rng = np.random.default_rng(0)
    classes = 6
    y = np.repeat(np.arange(classes), 40)
    x = np.abs(rng.normal(size=(len(y), 32))).astype(np.float32)
    torch.manual_seed(0)
    summary = _run(tmp_path, nn.Sequential(nn.Identity(), nn.Linear(32, classes)), (32,), x, y)
    for entry in summary["classes"]:
        assert entry["retention_size"] is None
        assert entry["skill_p"] >= 0.01
    g = summary["global"]
    assert g["mis_binned_bits"] < 2 * g["mis_binned_bits_shuffled"]
    assert g["mis_knn_nats"] < 0.05


def test_the_skill_gate_rarely_calls_chance_skill() -> None:
    """The hypergeometric test behind retention sizes: over many models whose predictions ignore the labels,
    fewer than 1 % of classes are said to have skill at p < 0.01 (it is exact, hence conservative)."""
    from workers.class_filters import subsets

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 12)
    flagged = [(subsets.skill_p_values(rng.normal(size=(len(y), 6)), y, np.arange(6)) < subsets.SKILL_P).mean() for _ in range(400)]
    assert float(np.mean(flagged)) < 0.01
    confident = np.eye(6)[y] * 5.0
    assert (subsets.skill_p_values(confident, y, np.arange(6)) < 1e-6).all()


# ------------------------------------------------------------------ MIS by estimator and unit


def test_both_mis_are_reported_with_estimator_and_unit(tmp_path: Path) -> None:
    x, y, _, weight = _planted([0, 1, 2, 3], outputs=4, n_per_class=40)
    summary = _run(tmp_path, nn.Sequential(nn.Identity(), _linear(weight)), (WIDTH,), x, y, {"bootstrap": 0})
    g = summary["global"]
    # kNN MI (nats) of the planted filters is the label entropy H(1[y = c]) for 4 balanced classes.
    entropy_nats = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    features, labels = x.astype(np.float64), y
    assert g["mis_knn_nats"] > 5 * g["mis_knn_nats_shuffled"]
    assert g["mis_binned_bits"] > 5 * g["mis_binned_bits_shuffled"]
    assert g["mis_knn_skipped"] is None
    assert g["mis"] == g["mis_binned_bits"] and g["mis_shuffled"] == g["mis_binned_bits_shuffled"]  # kept for gates
    # The kNN figure is the fit split's kNN MI matrix in nats, max over classes, mean over filters.
    knn_bits = information.knn_mi(features[_fit_rows(labels)], labels[_fit_rows(labels)], 4)
    assert g["mis_knn_nats"] == pytest.approx(information.mis(knn_bits) * math.log(2.0), rel=1e-9)
    assert knn_bits.max() * math.log(2.0) == pytest.approx(entropy_nats, abs=0.03)
    knn = _run(tmp_path, nn.Sequential(nn.Identity(), _linear(weight)), (WIDTH,), x, y, {"bootstrap": 0, "mi_estimator": "knn"})["global"]
    assert knn["mis_knn_nats"] == pytest.approx(g["mis_knn_nats"], rel=1e-12)
    assert knn["mis"] == pytest.approx(knn["mis_knn_nats"] / math.log(2.0), rel=1e-12)


def _fit_rows(y: np.ndarray) -> np.ndarray:
    from workers.class_filters import stratified_split

    return stratified_split(y, 0.7, 0).fit

"""Known answer: a hand-wired CNN whose class-k images contain the patterns of S_k. The task returns
S_k, and removing S_k drops class-k recall to chance while a random subset of the same size does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workers.context import TaskContext
from workers.dataset import Dataset
from workers.job import perform
from workers.model import LoadedModel
from workers.samples.hand_wired import HandWiredCNN

CLASSES = 4
CHANCE = 1.0 / CLASSES


def _run(tmp_path: Path, video: bool, layer: str = "", n_per_class: int = 32) -> tuple[dict, HandWiredCNN]:
    torch.manual_seed(0)
    model = HandWiredCNN(num_classes=CLASSES, video=video, seed=1)
    x, y = model.images(n_per_class, seed=2)
    progress: list[tuple[str, float]] = []
    ctx = TaskContext(
        model=LoadedModel.from_module(model, model.input_spec),
        out_dir=tmp_path,
        dataset=Dataset(x, y),
        progress=lambda stage, fraction: progress.append((stage, fraction)),
    )
    summary = perform("class_filters", ctx, {"layer": layer, "bootstrap": 10})
    fractions = [f for _, f in progress]
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] == 1.0
    return summary, model


def _assert_planted_answer(summary: dict, model: HandWiredCNN) -> None:
    eval_per_class = summary["eval_samples"] / CLASSES
    for k, entry in enumerate(summary["classes"]):
        assert sorted(entry["subset_k"]) == model.subsets[k]
        assert entry["recall_full"] == 1.0 and entry["recall_restricted"] == 1.0
        drops = entry["ablation"]
        recall_without_subset = entry["recall_full"] - drops["subset_drop"]
        # Chance is 1/4; with ~12 eval samples per class allow two samples of luck above it.
        assert recall_without_subset <= CHANCE + 2.0 / eval_per_class
        assert drops["random_drop"] <= 0.1
        assert drops["complement_drop"] <= 0.1  # S_k alone still decides class k
        assert entry["stability_jaccard"] == 1.0
    assert summary["global"]["accuracy_restricted"] == summary["global"]["accuracy_full"] == 1.0
    assert summary["global"]["mean_overlap"] == 0.0


@pytest.mark.parametrize("video", [True, False], ids=["video_3d", "image_2d"])
def test_pooled_features_give_the_planted_subsets(tmp_path: Path, video: bool) -> None:
    summary, model = _run(tmp_path, video)
    assert summary["attribution"] == "exact_logit_split" and summary["restriction"] == "decomposed_head"
    assert summary["layer"] == "fc:input"
    _assert_planted_answer(summary, model)
    # The loud shared filters own every sample's activation: Ψ(0.5) is tiny, all of it shared filters.
    assert summary["global"]["psi_0_5"] <= len(model.shared) / summary["num_filters"]


def test_inner_layer_uses_grad_x_act_and_mean_ablation(tmp_path: Path) -> None:
    """At the conv output (before ReLU) nothing is linear in the logits: gradient × activation ranks,
    mean ablation removes, and the planted answer still comes out."""
    summary, model = _run(tmp_path, video=True, layer="conv", n_per_class=24)
    assert summary["attribution"] == "gradient_x_activation" and summary["restriction"] == "mean_ablation"
    _assert_planted_answer(summary, model)


def test_a_layer_behind_global_pooling_is_an_exact_split(tmp_path: Path) -> None:
    summary, model = _run(tmp_path, video=True, layer="relu", n_per_class=20)
    assert summary["attribution"] == "exact_logit_split"
    assert [sorted(e["subset_k"]) for e in summary["classes"]] == model.subsets


@pytest.mark.parametrize("fmt", ["TORCH_EXPORT", "ONNX"])
def test_exported_models_give_the_same_answer(tmp_path: Path, fmt: str) -> None:
    """The loaders' modules (torch.export unflattened, the ONNX interpreter) expose the head and the layers."""
    from workers.loader import load_model
    from workers.samples.models import export_onnx, export_pt2

    model = HandWiredCNN(num_classes=CLASSES, video=True, seed=1)
    x, y = model.images(12, seed=2)
    path = tmp_path / ("model.pt2" if fmt == "TORCH_EXPORT" else "model.onnx")
    (export_pt2 if fmt == "TORCH_EXPORT" else export_onnx)(model, path, example=torch.zeros(2, *model.input_spec.shape))
    loaded = load_model(path, fmt, model.input_spec.to_dict())
    ctx = TaskContext(model=loaded, out_dir=tmp_path, dataset=Dataset(x, y))
    summary = perform("class_filters", ctx, {"bootstrap": 0})
    assert summary["layer"] == "fc:input" and summary["attribution"] == "exact_logit_split"
    assert [sorted(e["subset_k"]) for e in summary["classes"]] == model.subsets

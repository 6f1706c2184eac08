"""The planted-wiring answer of class_filters, asked of the service: a hand-wired CNN whose class-k images
hold the patterns of S_k, uploaded as .pt2 with its labelled images as an NPZ dataset."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

import sdk
from workers.samples.hand_wired import HandWiredCNN
from workers.samples.models import export_pt2

CLASSES = 4


def test_the_service_returns_the_planted_subsets_and_ablating_them_drops_recall_to_chance(client: sdk.Client, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HandWiredCNN(num_classes=CLASSES, video=True, seed=1).eval()
    x, y = model.images(32, seed=2)
    path = tmp_path / "hand_wired.pt2"
    export_pt2(model, path, example=torch.zeros(2, *model.input_spec.shape))
    spec = model.input_spec.to_dict()
    buffer = io.BytesIO()
    np.savez(buffer, x=x.astype(np.float32), y=y, class_names=np.asarray([f"c{k}" for k in range(CLASSES)]))
    dataset = client.upload_dataset(buffer.getvalue(), name="hand_wired.npz")
    assert dataset.num_samples == len(y) and dataset.num_classes == CLASSES

    result = client.analyze(path, tasks=[{"class_filters": {"bootstrap": 10, "seed": 0}}], dataset=dataset.id, input_spec=spec, progress=False, timeout=240)
    summary = result["class_filters"]
    eval_per_class = summary["eval_samples"] / CLASSES
    for k, entry in enumerate(summary["classes"]):
        assert sorted(entry["subset_k"]) == model.subsets[k], (k, entry["subset_k"], model.subsets[k])
        recall_without_subset = entry["recall_full"] - entry["ablation"]["subset_drop"]
        assert recall_without_subset <= 1.0 / CLASSES + 2.0 / eval_per_class
        assert entry["ablation"]["random_drop"] <= 0.1
    assert summary["global"]["accuracy_restricted"] == summary["global"]["accuracy_full"] == 1.0
    assert summary["global"]["mis"] > 4 * summary["global"]["mis_shuffled"]
    assert {a.name for a in result.artifacts} >= {"class_filters/heatmap.png", "class_filters/matrices.npz"}


def test_a_dataset_that_does_not_fit_the_model_is_refused_before_the_job(client: sdk.Client, tmp_path: Path) -> None:
    model = HandWiredCNN(num_classes=CLASSES, video=True, seed=1).eval()
    path = tmp_path / "hand_wired.pt2"
    export_pt2(model, path, example=torch.zeros(2, *model.input_spec.shape))
    wrong = np.zeros((8, 3, 2, 4, 4), np.float32)
    dataset = client.upload_dataset(wrong, np.arange(8) % 2)
    import pytest

    with pytest.raises(sdk.FailedPrecondition, match="shape"):
        client.analyze(path, tasks=["class_filters"], dataset=dataset.id, input_spec=model.input_spec.to_dict(), progress=False)

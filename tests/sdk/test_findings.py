"""sdk.findings: the headline figures read off hand-built summaries whose answers are known."""

from __future__ import annotations

import json
from typing import Any

from kernelscope.v1 import jobs_pb2

from sdk import findings
from sdk.result import Result


def _result(summaries: dict[str, dict[str, Any]]) -> Result:
    job = jobs_pb2.Job(id="job_1", state=jobs_pb2.SUCCEEDED)
    for task, summary in summaries.items():
        job.results.add(task=task, summary_json=json.dumps(summary))
    return Result(job, None)  # type: ignore[arg-type]


def test_compass_follows_the_image_convention() -> None:
    assert [findings.compass(a) for a in (0, 56, 90, 180, 225, 270, 359, -90)] == [
        "right", "right-down", "down", "left", "left-up", "up", "right", "up"
    ]


def test_kernel_viz_motion_per_layer() -> None:
    channels = [
        {"index": 0, "direction_deg": 2.0, "speed_px_per_frame": 1.0, "motion_dependence": 0.9},
        {"index": 1, "direction_deg": 355.0, "speed_px_per_frame": 1.2, "motion_dependence": 0.7},
        {"index": 2, "direction_deg": 92.0, "speed_px_per_frame": 3.0, "motion_dependence": 0.8},
        {"index": 3, "direction_deg": None, "speed_px_per_frame": None, "motion_dependence": 0.0},
        {"index": 4, "dead": True},
    ]
    result = _result({"kernel_viz": {"layers": [{"name": "conv1", "channels": channels}]}})
    (layer,) = findings.as_dict(result)["kernel_viz"]["layers"]
    assert (layer["channels"], layer["dead"], layer["moving"]) == (5, 1, 3)
    assert (layer["dominant_direction"], layer["dominant_direction_channels"], layer["median_speed_px_per_frame"]) == ("right", 2, 1.2)
    assert round(layer["mean_motion_dependence"], 9) == 0.6
    assert findings.lines(result)[1] == "    conv1: 3 of 5 channels move, most right (2), median speed 1.20 px/frame; motion dependence 0.60; 1 dead"


def test_tconv_stats_explainable_share_and_unanalysed_layers() -> None:
    residual = {"count": 16, "mean": 0.48, "min": 0.11}
    summary = {
        "options": {"residual_threshold": 0.2},
        "layers": [
            {"name": "conv1", "kind": "Conv3d-fit", "analysed": True, "filters": 16, "residual": {"plain": residual, "gain": residual}, "explainable_share": {"plain": 0.25, "gain": 0.5}},
            {"name": "conv2", "kind": "temporal_only", "analysed": False, "filters": 8, "note": "1x1 spatial kernels: nothing to transform"},
        ],
    }
    text = findings.lines(_result({"tconv_stats": summary}))
    assert text[1] == "    conv1: 4 of 16 filters 3T-explainable (25%, residual < 0.2); best residual 0.11, mean 0.48"
    assert text[2] == "    conv2 (temporal_only): not analysed: 1x1 spatial kernels: nothing to transform"


def test_class_filters_subsets_and_accuracy_retained() -> None:
    summary = {
        "layer": "fc:input", "num_filters": 64, "k": 2, "class_names": ["left", "right"],
        "classes": [
            {"class": 0, "name": "left", "subset_k": [3, 7], "retention_size": 3, "recall_full": 1.0, "recall_restricted": 0.9},
            {"class": 1, "subset_k": [1, 2], "retention_size": None, "recall_full": 0.8, "recall_restricted": 0.8},
        ],
        "global": {"accuracy_full": 0.9, "accuracy_restricted": 0.81, "mis": 0.5, "mis_shuffled": 0.02},
    }
    figures = findings.as_dict(_result({"class_filters": summary}))["class_filters"]
    assert round(figures["accuracy_retained"], 6) == 0.9 and [c["class"] for c in figures["classes"]] == ["left", "right"]
    text = findings.lines(_result({"class_filters": summary}))
    assert text[1] == "    layer fc:input (64 filters): each class's own 2 filters keep accuracy 0.900 -> 0.810 (90% retained)"
    assert text[3] == "    left: filters 3, 7; recall 1.00 -> 0.90; 3 filters keep its accuracy"
    assert text[4] == "    right: filters 1, 2; recall 0.80 -> 0.80"
